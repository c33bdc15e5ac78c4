//! Command line and environment configuration of the server. Every flag has an environment
//! variable. The binary's top-level command (`src/command.rs`) adds the client and bench commands.

use std::{net::SocketAddr, path::PathBuf};

use clap::{Args, ValueEnum};

use highwater_core::store::validate::Limits;

#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address the gRPC server listens on.
    #[arg(long, env = "HIGHWATER_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseConfig,

    /// Largest event accepted (data, type and metadata), in bytes.
    #[arg(long, env = "HIGHWATER_MAX_EVENT_BYTES", default_value_t = Limits::default().max_event_bytes)]
    pub max_event_bytes: usize,

    /// Largest append request accepted (the sum of its events), in bytes.
    #[arg(long, env = "HIGHWATER_MAX_APPEND_BYTES", default_value_t = Limits::default().max_append_bytes)]
    pub max_append_bytes: usize,

    /// Most bytes of request messages one server holds at once, summed over every call of
    /// every connection: a call whose message does not fit waits up to 5 s for room, then gets
    /// RESOURCE_EXHAUSTED before its message is read. At least --max-append-bytes plus 1 MiB.
    #[arg(long, env = "HIGHWATER_MAX_REQUEST_BYTES_IN_FLIGHT", default_value_t = 256 * 1024 * 1024)]
    pub max_request_bytes_in_flight: usize,

    /// Most events in one append request. A request is written under the log's lock, which
    /// every appender waits for, so this bounds how long one request (or its resend) holds it.
    #[arg(long, env = "HIGHWATER_MAX_APPEND_EVENTS", default_value_t = Limits::default().max_append_events as u32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_append_events: u32,

    /// Snapshots kept per stream (SaveSnapshot), 1 to 100: saving one more deletes the stream's
    /// oldest. A delete of the stream deletes them all while holding the log's lock, so this
    /// bounds that delete's work (at most this many times --max-event-bytes).
    #[arg(long, env = "HIGHWATER_SNAPSHOTS_KEPT", default_value_t = Limits::default().snapshots_kept, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub snapshots_kept: u32,

    /// Batches of new events kept for live subscribers. A subscriber that falls further behind
    /// (a slow client) goes back to reading history from the database, and skips nothing.
    #[arg(long, env = "HIGHWATER_LIVE_BUFFER_BATCHES", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub live_buffer_batches: u32,

    /// Folder of projection definitions (`*.toml`), registered at start.
    #[arg(long, env = "HIGHWATER_PROJECTIONS")]
    pub projections: Option<PathBuf>,

    /// Folder of upcaster definitions (`*.toml`), registered at start (README, Upcasting).
    #[arg(long, env = "HIGHWATER_UPCASTERS")]
    pub upcasters: Option<PathBuf>,

    /// This server's name in rebuild ownership and errors. Default: host name and process id.
    #[arg(long, env = "HIGHWATER_NODE_NAME")]
    pub node_name: Option<String>,

    /// Events per batch (and per transaction) in rebuilds and async projections.
    #[arg(long, env = "HIGHWATER_PROJECTION_BATCH_SIZE", default_value_t = 1000, value_parser = clap::value_parser!(i64).range(1..))]
    pub projection_batch_size: i64,

    /// Milliseconds without a heartbeat after which another server takes a rebuild over.
    #[arg(
        long,
        env = "HIGHWATER_REBUILD_HEARTBEAT_TIMEOUT_MS",
        default_value_t = 30_000
    )]
    pub rebuild_heartbeat_timeout_ms: u64,

    /// Milliseconds between checks of another server's rebuild heartbeat (to take it over when it
    /// stops) and between attempts to lead an async projection. Catalog changes are notified, so an
    /// idle server does not poll.
    #[arg(long, env = "HIGHWATER_PROJECTION_SUPERVISE_MS", default_value_t = 5_000, value_parser = clap::value_parser!(u64).range(10..))]
    pub projection_supervise_ms: u64,

    /// Milliseconds one call of a projection's SQL may run, lock waits included: a setup, the
    /// inline handlers of one append (which hold the log's lock, so this bounds how long a slow
    /// handler can hold up other appends), one batch of a rebuild or an async worker. A call over
    /// it fails its append (or, with on_error = "skip", dead-letters its events) or its batch.
    #[arg(long, env = "HIGHWATER_PROJECTION_SQL_TIMEOUT_MS", default_value_t = highwater_core::projection::DEFAULT_SQL_TIMEOUT.as_millis() as u64, value_parser = clap::value_parser!(u64).range(1..))]
    pub projection_sql_timeout_ms: u64,

    /// Milliseconds to pause between rebuild batches, leaving room for other work (0: none).
    #[arg(long, env = "HIGHWATER_REBUILD_BATCH_PAUSE_MS", default_value_t = 0)]
    pub rebuild_batch_pause_ms: u64,

    #[command(flatten)]
    pub security: SecurityConfig,

    /// Most open subscriptions (SubscribeAll and SubscribeStream) this server serves at once;
    /// one more is refused with RESOURCE_EXHAUSTED.
    #[arg(long, env = "HIGHWATER_MAX_SUBSCRIBERS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_subscribers: u32,

    /// Most concurrent calls (HTTP/2 streams) one client connection may have open.
    #[arg(long, env = "HIGHWATER_MAX_STREAMS_PER_CONNECTION", default_value_t = 1_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_streams_per_connection: u32,

    /// Seconds between HTTP/2 pings to each client; a client that does not answer within
    /// --keepalive-timeout-secs is disconnected (and its subscriptions end). 0 turns pings off.
    #[arg(long, env = "HIGHWATER_KEEPALIVE_SECS", default_value_t = 30)]
    pub keepalive_secs: u64,

    /// Seconds to wait for the answer to a keep-alive ping.
    #[arg(long, env = "HIGHWATER_KEEPALIVE_TIMEOUT_SECS", default_value_t = 20)]
    pub keepalive_timeout_secs: u64,

    /// Seconds a client connection may stay open with no call in progress before the server
    /// closes it (open subscriptions are calls in progress). Clients reconnect on their next
    /// call. 0 never closes idle connections.
    #[arg(long, env = "HIGHWATER_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    pub idle_timeout_secs: u64,

    /// Address of the Prometheus metrics endpoint (HTTP, `GET /metrics`), such as
    /// 127.0.0.1:9090. Off when not given. It has no authentication: keep it on loopback or a
    /// private network.
    #[arg(long, env = "HIGHWATER_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Seconds to let in-flight requests finish after SIGINT/SIGTERM before cutting them off;
    /// background tasks (the writer, rebuilds, workers) then get as long again to stop.
    #[arg(long, env = "HIGHWATER_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,

    #[command(flatten)]
    pub log: LogConfig,
}

/// Who may connect and do what.
#[derive(Debug, Clone, Args)]
pub struct SecurityConfig {
    /// TOML file of accepted bearer tokens, by SHA-256 hash, each with a role (read, write or
    /// admin); `highwater token` makes entries. Without it there is no authentication, and the
    /// server only listens on loopback addresses (see --insecure-no-auth).
    #[arg(long, env = "HIGHWATER_AUTH_FILE")]
    pub auth_file: Option<PathBuf>,

    /// The accepted tokens inline, in the auth file's TOML format: for secrets handed over in
    /// the environment (HIGHWATER_AUTH_TOKENS) rather than as a file. Not with --auth-file.
    #[arg(
        long,
        env = "HIGHWATER_AUTH_TOKENS",
        conflicts_with = "auth_file",
        hide_env_values = true
    )]
    pub auth_tokens: Option<String>,

    /// Listen on a non-loopback address without --auth-file: anyone who reaches the port can
    /// read, write and rebuild. Logged as a warning at start.
    #[arg(long, env = "HIGHWATER_INSECURE_NO_AUTH")]
    pub insecure_no_auth: bool,

    /// Take bearer tokens (--auth-file) without TLS on a non-loopback address, for when TLS
    /// ends in front of the server (a proxy or a service mesh). Without it such a server refuses
    /// to start. Logged as a warning at start.
    #[arg(long, env = "HIGHWATER_INSECURE_PLAINTEXT")]
    pub insecure_plaintext: bool,

    /// PEM certificate chain for TLS (with --tls-key). Without it the server speaks plaintext.
    #[arg(long, env = "HIGHWATER_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key for TLS (with --tls-cert).
    #[arg(long, env = "HIGHWATER_TLS_KEY")]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate of the CA that signs client certificates: clients must then present
    /// one (mutual TLS).
    #[arg(long, env = "HIGHWATER_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
}

#[derive(Debug, Clone, Args)]
pub struct MigrateConfig {
    #[command(flatten)]
    pub database: DatabaseConfig,

    #[command(flatten)]
    pub log: LogConfig,
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseConfig {
    /// PostgreSQL URL, such as postgres://user@host:5432/highwater (the database is created if
    /// missing). Without it, a private PostgreSQL runs from the machine's binaries in --data-dir.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,

    /// Folder of the private PostgreSQL, used when no database URL is given. Kept across restarts.
    #[arg(long, env = "HIGHWATER_DATA_DIR", default_value = "./highwater-data")]
    pub data_dir: PathBuf,

    /// Folder holding the PostgreSQL server binaries (initdb, postgres) for the private
    /// PostgreSQL. Default: found on PATH, through `pg_config --bindir`, or under
    /// /usr/lib/postgresql/*/bin.
    #[arg(long, env = "HIGHWATER_POSTGRES_BIN_DIR")]
    pub postgres_bin_dir: Option<PathBuf>,

    /// Most database connections held by this server.
    #[arg(long, env = "HIGHWATER_POOL_SIZE", default_value_t = 16)]
    pub pool_size: u32,
}

#[derive(Debug, Clone, Args)]
pub struct LogConfig {
    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive such as
    /// `highwater=debug,sqlx=warn`. RUST_LOG, when set, wins.
    #[arg(long, env = "HIGHWATER_LOG_LEVEL", default_value = "info")]
    pub log_level: String,

    /// Log output format.
    #[arg(long, env = "HIGHWATER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}
