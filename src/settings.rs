//! The server's settings as plain data: durations as `Duration`, off as `None`, no parsing left.
//! Made from the command line (`ServeConfig`, every flag with its environment variable) in one
//! place, `From<ServeConfig>`; tests build them from flags and change fields in code.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use highwater_core::{projection, store::validate::Limits};

use crate::config::{DatabaseConfig, LogConfig, SecurityConfig, ServeConfig};

/// Everything `Application::build` needs.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Where gRPC listens.
    pub listen: SocketAddr,
    /// The external PostgreSQL, or where the private one lives.
    pub database: DatabaseConfig,
    /// The largest event, append and number of events per append.
    pub limits: Limits,
    /// Request bytes held at once over every call (at least a maximal append plus 1 MiB).
    pub max_request_bytes_in_flight: usize,
    /// Batches of new events kept for live subscribers.
    pub live_buffer_batches: usize,
    /// Projection definitions registered at start.
    pub projections_dir: Option<PathBuf>,
    /// Upcaster definitions registered at start.
    pub upcasters_dir: Option<PathBuf>,
    /// This server's name in rebuild ownership and errors.
    pub node: String,
    /// Batches, heartbeats and time limits of projections and rebuilds.
    pub projection: projection::Settings,
    /// Tokens and TLS.
    pub security: SecurityConfig,
    /// Open subscriptions served at once.
    pub max_subscribers: usize,
    /// Concurrent calls per client connection.
    pub max_streams_per_connection: u32,
    /// HTTP/2 pings to clients; `None`: off.
    pub keepalive: Option<Duration>,
    /// How long a ping may go unanswered.
    pub keepalive_timeout: Duration,
    /// How long a connection may stay without a call; `None`: forever.
    pub idle_timeout: Option<Duration>,
    /// The Prometheus endpoint, if any.
    pub metrics_listen: Option<SocketAddr>,
    /// How long in-flight requests, then background tasks, may take to finish at shutdown.
    pub shutdown_grace: Duration,
    pub log: LogConfig,
}

impl Settings {
    /// The largest request message accepted: a maximal append plus protobuf framing.
    pub fn max_message_bytes(&self) -> usize {
        self.limits.max_append_bytes.saturating_add(1024 * 1024)
    }
}

/// Seconds where 0 means off.
fn seconds_or_off(seconds: u64) -> Option<Duration> {
    (seconds > 0).then(|| Duration::from_secs(seconds))
}

/// The node name: the flag, or host name and process id.
fn node_name(flag: Option<String>) -> String {
    flag.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        format!("{host}:{}", std::process::id())
    })
}

impl From<ServeConfig> for Settings {
    fn from(config: ServeConfig) -> Self {
        Self {
            listen: config.listen,
            limits: Limits {
                max_event_bytes: config.max_event_bytes,
                max_append_bytes: config.max_append_bytes,
                max_append_events: config.max_append_events as usize,
                snapshots_kept: config.snapshots_kept,
            },
            projection: projection::Settings {
                batch_size: config.projection_batch_size,
                heartbeat_timeout: Duration::from_millis(config.rebuild_heartbeat_timeout_ms),
                supervise_interval: Duration::from_millis(config.projection_supervise_ms),
                batch_pause: (config.rebuild_batch_pause_ms > 0)
                    .then(|| Duration::from_millis(config.rebuild_batch_pause_ms)),
                sql_timeout: Duration::from_millis(config.projection_sql_timeout_ms),
            },
            node: node_name(config.node_name),
            max_request_bytes_in_flight: config.max_request_bytes_in_flight,
            live_buffer_batches: config.live_buffer_batches as usize,
            projections_dir: config.projections,
            upcasters_dir: config.upcasters,
            security: config.security,
            max_subscribers: config.max_subscribers as usize,
            max_streams_per_connection: config.max_streams_per_connection,
            keepalive: seconds_or_off(config.keepalive_secs),
            keepalive_timeout: Duration::from_secs(config.keepalive_timeout_secs),
            idle_timeout: seconds_or_off(config.idle_timeout_secs),
            metrics_listen: config.metrics_listen,
            shutdown_grace: Duration::from_secs(config.shutdown_grace_secs),
            database: config.database,
            log: config.log,
        }
    }
}
