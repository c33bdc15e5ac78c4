//! `highwater bench`: a load generator that starts a server process on a fresh database and
//! measures it, and measures raw PostgreSQL on the same machine in the same run, printing
//! Highwater / raw ratios so the comparison holds on a noisy machine. It talks to the server only
//! over the public protocol (`highwater-api`), as any client would.

mod error;
mod raw;
pub mod stats;

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use clap::Args;
use sqlx::{AssertSqlSafe, Connection, PgConnection, postgres::PgConnectOptions};
use tokio::task::JoinSet;
use tonic::transport::Channel;
use uuid::Uuid;

pub use error::{Error, Result};
use highwater_api::pb::{
    self, admin_service_client::AdminServiceClient,
    event_store_service_client::EventStoreServiceClient,
};
use stats::{Samples, header, row};

/// The example projection, rebuilt by W6.
const CART_SUMMARY: &str = include_str!("../../../examples/projections/cart_summary.toml");

#[derive(Debug, Clone, Args)]
pub struct BenchConfig {
    /// PostgreSQL server to measure on. The benchmark creates two databases of its own there
    /// (one for the server, one for the raw baseline) and drops them at the end.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: String,

    /// Seconds each append workload (W1) runs.
    #[arg(long, default_value_t = 20)]
    pub duration_secs: u64,

    /// Concurrent clients of the single-event append workloads.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    pub clients: Vec<usize>,

    /// Events in the log (and rows in the raw table) when W1 is measured a second time, at the
    /// largest client count, to show how appends hold up as the log grows; 0 skips those rows.
    #[arg(long, default_value_t = 1_000_000)]
    pub grown_events: u64,

    /// Events in the one stream read by W2.
    #[arg(long, default_value_t = 10_000)]
    pub stream_events: u64,

    /// Events in the log scanned by W3 (and rebuilt by W6).
    #[arg(long, default_value_t = 1_000_000)]
    pub scan_events: u64,

    /// Live subscribers of W4, and the append rate they follow (events per second).
    #[arg(long, default_value_t = 100)]
    pub live_subscribers: usize,
    #[arg(long, default_value_t = 1000)]
    pub live_rate: u64,

    /// Runs of W4, each printed: the live latency varies from run to run, and its target holds
    /// only if it holds in every run.
    #[arg(long, default_value_t = 5)]
    pub live_runs: u32,

    /// Idle subscribers of W5, and the seconds they are watched idle.
    #[arg(long, default_value_t = 1000)]
    pub idle_subscribers: usize,
    #[arg(long, default_value_t = 10)]
    pub idle_secs: u64,

    /// Workloads to run, of w1..w6.
    #[arg(long, value_delimiter = ',', default_value = "w1,w2,w3,w4,w5,w6")]
    pub workloads: Vec<String>,
}

/// W4's target for the 99th percentile of append-to-receipt latency, in milliseconds.
const LIVE_P99_TARGET_MS: f64 = 10.0;

/// A JSON event of about 200 bytes.
fn payload(i: u64) -> Vec<u8> {
    let mut text = format!(
        "{{\"order\":\"order-{i:012}\",\"customer\":\"customer-{:06}\",\"amount\":{}.{:02},\"note\":\"",
        i % 100_000,
        i % 997,
        i % 100
    );
    while text.len() < 198 {
        text.push('x');
    }
    text.push_str("\"}");
    text.into_bytes()
}

fn event(event_type: &str, data: Vec<u8>) -> pb::ProposedEvent {
    pb::ProposedEvent {
        id: Uuid::now_v7().to_string(),
        r#type: event_type.into(),
        data: data.into(),
        content_type: String::new(),
        metadata: HashMap::new(),
    }
}

/// A cart event of about 200 bytes: the first of a cart is always ProductAdded.
fn cart_event(i: u64) -> pb::ProposedEvent {
    let padding = "x".repeat(150);
    match i % 5 {
        4 => event(
            "CartCheckedOut",
            format!("{{\"note\":\"{padding}\"}}").into_bytes(),
        ),
        2 => event(
            "ProductRemoved",
            format!("{{\"sku\":\"s\",\"quantity\":1,\"note\":\"{padding}\"}}").into_bytes(),
        ),
        _ => event(
            "ProductAdded",
            format!(
                "{{\"sku\":\"s{i}\",\"quantity\":{},\"note\":\"{padding}\"}}",
                1 + i % 4
            )
            .into_bytes(),
        ),
    }
}

/// The server under test: the same binary, as its own process.
struct ServerProcess {
    child: Child,
    endpoint: String,
    /// The server's Prometheus endpoint, read for its group-commit histogram.
    metrics: std::net::SocketAddr,
}

impl ServerProcess {
    async fn start(database_url: &str) -> Result<Self> {
        let free_port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map_err(|e| Error::Startup(e.to_string()))
        };
        let port = free_port()?.port();
        let metrics = free_port()?;
        let exe = std::env::current_exe().map_err(|e| Error::Startup(e.to_string()))?;
        let child = Command::new(exe)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--database-url",
                database_url,
                "--metrics-listen",
                &metrics.to_string(),
            ])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .map_err(|e| Error::Startup(format!("cannot start the server: {e}")))?;
        let endpoint = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut client) = EventStoreServiceClient::connect(endpoint.clone()).await {
                let probe = pb::ReadAllRequest {
                    original: false,
                    after_position: 0,
                    direction: 0,
                    max_count: 1,
                };
                if client.read_all(probe).await.is_ok() {
                    return Ok(Self {
                        child,
                        endpoint,
                        metrics,
                    });
                }
            }
            if Instant::now() > deadline {
                return Err(Error::Startup("the server did not become ready".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn client(&self) -> Result<EventStoreServiceClient<Channel>> {
        Ok(EventStoreServiceClient::connect(self.endpoint.clone())
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?
            .max_decoding_message_size(64 << 20))
    }

    /// Group commits so far and the requests they wrote, from the server's metrics.
    async fn groups(&self) -> Result<Groups> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut socket = tokio::net::TcpStream::connect(self.metrics)
            .await
            .map_err(|e| Error::Unavailable(format!("metrics endpoint: {e}")))?;
        let mut text = String::new();
        socket
            .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .await
            .and(socket.read_to_string(&mut text).await.map(|_| ()))
            .map_err(|e| Error::Unavailable(format!("metrics endpoint: {e}")))?;
        let value = |name: &str| {
            text.lines()
                .find_map(|line| {
                    line.strip_prefix(name)?
                        .strip_prefix(' ')?
                        .parse::<f64>()
                        .ok()
                })
                .unwrap_or(0.0)
        };
        Ok(Groups {
            commits: value("highwater_append_group_requests_count"),
            requests: value("highwater_append_group_requests_sum"),
            appends: value("highwater_append_duration_seconds_count"),
            append_seconds: value("highwater_append_duration_seconds_sum"),
        })
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    /// Stops the server and starts it again on the same database.
    async fn restart(&mut self, database_url: &str) -> Result<()> {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        *self = Self::start(database_url).await?;
        Ok(())
    }

    fn stop(mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The writer's group commits and the server's own time per append (from its arrival in the
/// store to its answer: the writer's queue and the database), read before and after a run.
#[derive(Clone, Copy)]
struct Groups {
    commits: f64,
    requests: f64,
    appends: f64,
    append_seconds: f64,
}

impl Groups {
    /// "N groups, mean M requests, store X ms" over the run between `self` and `after`.
    fn note_until(self, after: Groups) -> String {
        let commits = after.commits - self.commits;
        let requests = after.requests - self.requests;
        let appends = after.appends - self.appends;
        if commits <= 0.0 || appends <= 0.0 {
            return String::new();
        }
        format!(
            "{commits:.0} groups, mean {:.1} requests, store {:.2} ms",
            requests / commits,
            (after.append_seconds - self.append_seconds) / appends * 1000.0
        )
    }
}

fn status(error: tonic::Status) -> Error {
    Error::Internal(format!("{}: {}", error.code(), error.message()))
}

fn join_error(error: tokio::task::JoinError) -> Error {
    Error::Internal(error.to_string())
}

/// Runs the benchmark and prints the report on standard output (progress on standard error).
pub async fn run(config: BenchConfig) -> Result<()> {
    let admin_options: PgConnectOptions = config
        .database_url
        .parse()
        .map_err(|e| Error::Startup(format!("invalid database URL: {e}")))?;
    let suffix = Uuid::new_v4().simple().to_string()[..8].to_string();
    let server_db = format!("highwater_bench_{suffix}");
    let raw_db = format!("highwater_bench_raw_{suffix}");
    let mut admin = PgConnection::connect_with(&admin_options).await?;
    for db in [&server_db, &raw_db] {
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {db}")))
            .execute(&mut admin)
            .await?;
    }
    let url_for = |db: &str| {
        let (base, query) = config
            .database_url
            .split_once('?')
            .map_or((config.database_url.as_str(), None), |(b, q)| (b, Some(q)));
        let authority = base.find("://").map_or(0, |i| i + 3);
        let path = base[authority..]
            .find('/')
            .map_or(base.len(), |i| authority + i);
        format!(
            "{}/{db}{}",
            &base[..path],
            query.map(|q| format!("?{q}")).unwrap_or_default()
        )
    };
    let (server_url, raw_url) = (url_for(&server_db), url_for(&raw_db));

    let result = async {
        let mut server = ServerProcess::start(&server_url).await?;
        let raw = raw::prepare(&raw_url).await?;
        let version: String = sqlx::query_scalar("SHOW server_version")
            .fetch_one(&raw)
            .await?;
        println!(
            "Highwater benchmark: PostgreSQL {version}, {} cores, {}",
            num_cpus(),
            std::env::consts::ARCH
        );
        let outcome = workloads(&config, &mut server, &raw, &raw_url, &server_url).await;
        raw.close().await;
        server.stop();
        outcome
    }
    .await;

    for db in [&server_db, &raw_db] {
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {db} WITH (FORCE)"
        )))
        .execute(&mut admin)
        .await;
    }
    result
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn progress(message: &str) {
    eprintln!("[bench] {message}");
}

async fn workloads(
    config: &BenchConfig,
    server: &mut ServerProcess,
    raw: &sqlx::PgPool,
    raw_url: &str,
    server_url: &str,
) -> Result<()> {
    let wants = |name: &str| {
        config
            .workloads
            .iter()
            .any(|w| w.eq_ignore_ascii_case(name))
    };
    let duration = Duration::from_secs(config.duration_secs);
    let data = payload(0);

    if wants("w1") {
        header("W1 append: single-event appends with an expected revision, one stream per client");
        for &clients in &config.clients {
            progress(&format!(
                "W1 highwater, {clients} clients, {}s",
                duration.as_secs()
            ));
            let before = server.groups().await?;
            let (events, mut samples) = append_load(server, clients, 1, duration).await?;
            let groups = before.note_until(server.groups().await?);
            let ours = row(
                &format!("highwater  C={clients:<3} batch=1"),
                events,
                duration,
                Some(&mut samples),
                &groups,
            );
            progress(&format!(
                "W1 raw PostgreSQL, {clients} connections, {}s",
                duration.as_secs()
            ));
            let (events, mut samples) = raw::append(raw_url, clients, 1, duration, &data).await?;
            let theirs = row(
                &format!("raw insert C={clients:<3} 1 row/txn"),
                events,
                duration,
                Some(&mut samples),
                "",
            );
            println!("{:<44} ratio highwater/raw = {:.2}", "", ours / theirs);
        }
        progress(&format!(
            "W1 batches of 10, 8 clients, {}s each",
            duration.as_secs()
        ));
        let before = server.groups().await?;
        let (events, mut samples) = append_load(server, 8, 10, duration).await?;
        let groups = before.note_until(server.groups().await?);
        let ours = row(
            "highwater  C=8   batch=10",
            events,
            duration,
            Some(&mut samples),
            &groups,
        );
        let (events, mut samples) = raw::append(raw_url, 8, 10, duration, &data).await?;
        let theirs = row(
            "raw insert C=8   10 rows/txn",
            events,
            duration,
            Some(&mut samples),
            "",
        );
        println!("{:<44} ratio highwater/raw = {:.2}", "", ours / theirs);
        if config.grown_events > 0 {
            grown_appends(config, server, server_url, raw, raw_url, &data).await?;
        }
    }

    if wants("w2") {
        header("W2 read one stream");
        progress(&format!(
            "W2 writing a stream of {} events",
            config.stream_events
        ));
        let mut client = server.client().await?;
        let stream = format!("w2-{}", Uuid::new_v4().simple());
        let mut written = 0;
        while written < config.stream_events {
            let n = (config.stream_events - written).min(500);
            let events = (0..n)
                .map(|i| event("OrderPlaced", payload(written + i)))
                .collect();
            client
                .append(pb::AppendRequest {
                    stream: stream.clone(),
                    expected: None,
                    events,
                })
                .await
                .map_err(status)?;
            written += n;
        }
        let mut samples = Samples::default();
        let mut total = Duration::ZERO;
        for _ in 0..5 {
            let started = Instant::now();
            let request = pb::ReadStreamRequest {
                original: false,
                stream: stream.clone(),
                from_revision: 0,
                direction: 0,
                max_count: 0,
                from_latest_snapshot: false,
            };
            let count = drain_read(
                client
                    .read_stream(request)
                    .await
                    .map_err(status)?
                    .into_inner(),
            )
            .await?;
            assert_eq!(count, config.stream_events, "read the whole stream");
            samples.push(started.elapsed());
            total += started.elapsed();
        }
        row(
            &format!("ReadStream of {} events (x5)", config.stream_events),
            config.stream_events * 5,
            total,
            Some(&mut samples),
            "latency = whole read",
        );
    }

    if wants("w3") || wants("w6") {
        progress(&format!(
            "W3 filling the log to {} cart events, and the raw table",
            config.scan_events
        ));
        fill_log(server, config.scan_events).await?;
        let mut client = server.client().await?;
        raw::fill(raw, read_all_last(&mut client).await?, &data).await?;
    }

    if wants("w3") {
        header("W3 read the whole log");
        let mut client = server.client().await?;
        progress("W3 ReadAll");
        let started = Instant::now();
        let request = pb::ReadAllRequest {
            original: false,
            after_position: 0,
            direction: 0,
            max_count: 0,
        };
        let read = drain_read(client.read_all(request).await.map_err(status)?.into_inner()).await?;
        let read_all = row(
            "highwater ReadAll from 0",
            read,
            started.elapsed(),
            None,
            "",
        );
        progress("W3 catch-up SubscribeAll");
        let started = Instant::now();
        let caught = catch_up(&mut client).await?;
        let subscribe = row(
            "highwater SubscribeAll catch-up from 0",
            caught,
            started.elapsed(),
            None,
            "until caught_up",
        );
        progress("W3 raw scan");
        let started = Instant::now();
        let scanned = raw::scan(raw).await?;
        let theirs = row(
            "raw SELECT of the same rows, in order",
            scanned,
            started.elapsed(),
            None,
            "",
        );
        println!(
            "{:<44} ratio ReadAll/raw = {:.2}, SubscribeAll/raw = {:.2}",
            "",
            read_all / theirs,
            subscribe / theirs
        );

        // The same read through an upcaster of one event type in five (ProductRemoved), then
        // with `original` (the upcaster still registered).
        progress("W3 ReadAll through an upcaster");
        let mut admin = AdminServiceClient::connect(server.endpoint.clone())
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let upcaster = pb::RegisterUpcasterRequest {
            source: Some(pb::register_upcaster_request::Source::Definition(
                pb::UpcasterDefinition {
                    name: "bench_removed".into(),
                    event_type: "ProductRemoved".into(),
                    from_version: None,
                    to_type: Some("ProductRemovedV2".into()),
                    to_version: None,
                    data: "$data || jsonb_build_object('reason', 'unknown')".into(),
                    metadata: None,
                },
            )),
        };
        admin.register_upcaster(upcaster).await.map_err(status)?;
        // The server reloads its upcast types on the catalog notification.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut shaped = Vec::new();
        for (original, name) in [
            (false, "highwater ReadAll, 1 type in 5 upcast"),
            (true, "highwater ReadAll, same, original = true"),
        ] {
            let started = Instant::now();
            let request = pb::ReadAllRequest {
                original,
                after_position: 0,
                direction: 0,
                max_count: 0,
            };
            let read =
                drain_read(client.read_all(request).await.map_err(status)?.into_inner()).await?;
            shaped.push(row(name, read, started.elapsed(), None, ""));
        }
        admin
            .delete_upcaster(pb::DeleteUpcasterRequest {
                name: "bench_removed".into(),
            })
            .await
            .map_err(status)?;
        println!(
            "{:<44} ratio upcast/plain ReadAll = {:.2}, original/plain = {:.2}, upcast/raw = {:.2}",
            "",
            shaped[0] / read_all,
            shaped[1] / read_all,
            shaped[0] / theirs
        );
    }

    if wants("w4") {
        header("W4 live latency: Append reply to each subscriber's receipt");
        progress(&format!(
            "W4 {} subscribers, {} events/s for {}s",
            config.live_subscribers,
            config.live_rate,
            duration.as_secs()
        ));
        let runs = config.live_runs.max(1);
        let subscribers = config.live_subscribers.max(1);
        // Subscribers sharing one HTTP/2 connection, then each on its own.
        let mut layouts = vec![subscribers.div_ceil(100)];
        if subscribers > layouts[0] {
            layouts.push(subscribers);
        }
        for channels in layouts {
            let mut under_target = 0;
            for run in 1..=runs {
                let (events, mut samples) =
                    live_latency(server, subscribers, channels, config.live_rate, duration).await?;
                let appended = events / subscribers as u64;
                let note = format!(
                    "events = deliveries; {appended} appended ({:.0}/s)",
                    appended as f64 / duration.as_secs_f64()
                );
                if !samples.is_empty() && samples.percentiles().1 < LIVE_P99_TARGET_MS {
                    under_target += 1;
                }
                let name = format!(
                    "{subscribers} subs at {}/s, {channels} conn, run {run}",
                    config.live_rate
                );
                row(&name, events, duration, Some(&mut samples), &note);
            }
            println!(
                "{:<44} p99 under {LIVE_P99_TARGET_MS} ms in {under_target} of {runs} runs",
                ""
            );
        }
    }

    if wants("w5") {
        header("W5 idle subscribers");
        progress(&format!("W5 {} idle subscribers", config.idle_subscribers));
        idle_subscribers(
            server,
            config.idle_subscribers,
            Duration::from_secs(config.idle_secs),
            server_url,
            raw_url,
        )
        .await?;
    }

    if wants("w6") {
        header("W6 blue/green rebuild of the example projection (cart_summary)");
        progress("W6 registering cart_summary and waiting for its first build");
        let mut admin = AdminServiceClient::connect(server.endpoint.clone())
            .await
            .map_err(|e| Error::Unavailable(e.to_string()))?;
        let register = pb::RegisterProjectionRequest {
            source: Some(pb::register_projection_request::Source::Toml(
                CART_SUMMARY.into(),
            )),
        };
        admin.register_projection(register).await.map_err(status)?;
        wait_built(&mut admin).await?;
        progress("W6 AdminRebuild (blue/green)");
        let started = Instant::now();
        let request = pb::AdminRebuildRequest {
            projection: "cart_summary".into(),
            strategy: 0,
        };
        let mut stream = admin
            .admin_rebuild(request)
            .await
            .map_err(status)?
            .into_inner();
        let mut last = None;
        while let Some(progress) = stream.message().await.map_err(status)? {
            last = Some(progress);
        }
        let last = last.ok_or_else(|| Error::Internal("no rebuild progress".into()))?;
        let last = last.progress.unwrap_or_default();
        if last.phase() != pb::rebuild_progress::Phase::Done {
            return Err(Error::Internal(format!(
                "rebuild ended in {:?}: {}",
                last.phase(),
                last.error
            )));
        }
        let mut client = server.client().await?;
        let head = read_all_last(&mut client).await?;
        row(
            "AdminRebuild blue/green, whole log",
            head,
            started.elapsed(),
            None,
            "events = log scanned",
        );
    }
    Ok(())
}

/// W1 at the largest client count again, once the log and the raw table hold
/// `--grown-events` rows: the same rows as on the empty log, to read side by side.
async fn grown_appends(
    config: &BenchConfig,
    server: &mut ServerProcess,
    server_url: &str,
    raw: &sqlx::PgPool,
    raw_url: &str,
    data: &[u8],
) -> Result<()> {
    let grown = config.grown_events;
    let clients = config.clients.iter().copied().max().unwrap_or(32);
    let duration = Duration::from_secs(config.duration_secs);
    header(&format!(
        "W1 again once the log holds {grown} events (the raw table as many rows)"
    ));
    progress(&format!("filling the log to {grown} events"));
    fill_log(server, grown).await?;
    progress(&format!("filling the raw table to {grown} rows"));
    raw::grow(raw, grown, data).await?;
    // As a server restarted on a grown log: its connections plan against full tables.
    progress("restarting the server");
    server.restart(server_url).await?;
    progress(&format!(
        "W1 highwater on the grown log, {clients} clients, {}s",
        duration.as_secs()
    ));
    let before = server.groups().await?;
    let (events, mut samples) = append_load(server, clients, 1, duration).await?;
    let groups = before.note_until(server.groups().await?);
    let ours = row(
        &format!("highwater  C={clients:<3} batch=1 grown"),
        events,
        duration,
        Some(&mut samples),
        &groups,
    );
    progress(&format!(
        "W1 raw PostgreSQL on the grown table, {clients} connections, {}s",
        duration.as_secs()
    ));
    let (events, mut samples) = raw::append(raw_url, clients, 1, duration, data).await?;
    let theirs = row(
        &format!("raw insert C={clients:<3} 1 row/txn grown"),
        events,
        duration,
        Some(&mut samples),
        "",
    );
    println!("{:<44} ratio highwater/raw = {:.2}", "", ours / theirs);
    Ok(())
}

async fn append_load(
    server: &ServerProcess,
    clients: usize,
    batch: usize,
    duration: Duration,
) -> Result<(u64, Samples)> {
    let deadline = Instant::now() + duration;
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let mut client = server.client().await?;
        tasks.spawn(async move {
            let stream = format!("w1-{}", Uuid::new_v4().simple());
            let mut samples = Samples::default();
            let mut revision: Option<u64> = None;
            let mut i = 0;
            while Instant::now() < deadline {
                let events = (0..batch).map(|_| {
                    i += 1;
                    event("OrderPlaced", payload(i))
                });
                let expected = Some(match revision {
                    None => pb::append_request::Expected::State(pb::ExpectedState::NoStream as i32),
                    Some(r) => pb::append_request::Expected::Revision(r),
                });
                let started = Instant::now();
                let response = client
                    .append(pb::AppendRequest {
                        stream: stream.clone(),
                        expected,
                        events: events.collect(),
                    })
                    .await
                    .map_err(status)?
                    .into_inner();
                samples.push(started.elapsed());
                revision = Some(response.last_revision);
            }
            Ok::<_, Error>((revision.map_or(0, |r| r + 1), samples))
        });
    }
    let mut events = 0;
    let mut samples = Samples::default();
    while let Some(done) = tasks.join_next().await {
        let (written, latencies) = done.map_err(join_error)??;
        events += written;
        samples.extend(latencies);
    }
    Ok((events, samples))
}

async fn drain_read<T>(mut stream: tonic::Streaming<T>) -> Result<u64> {
    let mut count = 0;
    while stream.message().await.map_err(status)?.is_some() {
        count += 1;
    }
    Ok(count)
}

async fn read_all_last(client: &mut EventStoreServiceClient<Channel>) -> Result<u64> {
    let request = pb::ReadAllRequest {
        original: false,
        after_position: u64::MAX,
        direction: pb::Direction::Backwards as i32,
        max_count: 1,
    };
    let mut stream = client.read_all(request).await.map_err(status)?.into_inner();
    Ok(stream
        .message()
        .await
        .map_err(status)?
        .and_then(|m| m.event)
        .map_or(0, |e| e.position))
}

/// Appends cart events until the log holds `events`: requests of 100 events (one cart each, its
/// first event a ProductAdded) from 4 clients.
async fn fill_log(server: &ServerProcess, events: u64) -> Result<()> {
    let mut client = server.client().await?;
    let start = read_all_last(&mut client).await?;
    let missing = events.saturating_sub(start);
    let mut tasks = JoinSet::new();
    for writer in 0..4u64 {
        let mut client = server.client().await?;
        let share = missing / 4 + u64::from(writer < missing % 4);
        tasks.spawn(async move {
            let mut written = 0;
            let mut cart = 0u64;
            while written < share {
                let n = (share - written).min(100);
                let events = (0..n).map(cart_event).collect();
                let stream = format!("cart-{writer}-{cart}");
                client
                    .append(pb::AppendRequest {
                        stream,
                        expected: None,
                        events,
                    })
                    .await
                    .map_err(status)?;
                written += n;
                cart += 1;
            }
            Ok::<_, Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(join_error)??;
    }
    Ok(())
}

async fn catch_up(client: &mut EventStoreServiceClient<Channel>) -> Result<u64> {
    let request = pb::SubscribeAllRequest {
        original: false,
        start: Some(pb::subscribe_all_request::Start::AfterPosition(0)),
        filter: None,
        checkpoint_interval: 0,
    };
    let mut stream = client
        .subscribe_all(request)
        .await
        .map_err(status)?
        .into_inner();
    let mut count = 0;
    while let Some(message) = stream.message().await.map_err(status)? {
        match message.content {
            Some(pb::subscribe_all_response::Content::Event(_)) => count += 1,
            Some(pb::subscribe_all_response::Content::CaughtUp(_)) => return Ok(count),
            _ => {}
        }
    }
    Err(Error::Internal(
        "subscription ended before catching up".into(),
    ))
}

/// A subscription from the end, returned once it is live (after `caught_up`).
async fn subscribe_live(
    client: &mut EventStoreServiceClient<Channel>,
) -> Result<tonic::Streaming<pb::SubscribeAllResponse>> {
    let request = pb::SubscribeAllRequest {
        original: false,
        start: Some(pb::subscribe_all_request::Start::End(())),
        filter: None,
        checkpoint_interval: 0,
    };
    let mut stream = client
        .subscribe_all(request)
        .await
        .map_err(status)?
        .into_inner();
    while let Some(message) = stream.message().await.map_err(status)? {
        if matches!(
            message.content,
            Some(pb::subscribe_all_response::Content::CaughtUp(_))
        ) {
            return Ok(stream);
        }
    }
    Err(Error::Internal(
        "subscription ended before going live".into(),
    ))
}

async fn live_latency(
    server: &ServerProcess,
    subscribers: usize,
    channels: usize,
    rate: u64,
    duration: Duration,
) -> Result<(u64, Samples)> {
    // When each Append was answered, by event id.
    let replied: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let mut receivers = JoinSet::new();
    let channels = channels.clamp(1, subscribers.max(1));
    let mut clients = Vec::new();
    for _ in 0..channels {
        clients.push(server.client().await?);
    }
    for index in 0..subscribers {
        let mut client = clients[index % channels].clone();
        // Live before the appends start.
        let mut stream = subscribe_live(&mut client).await?;
        receivers.spawn(async move {
            let mut received = Vec::new();
            while let Ok(Some(message)) = stream.message().await {
                if let Some(pb::subscribe_all_response::Content::Event(event)) = message.content {
                    if event.r#type == "Stop" {
                        break;
                    }
                    received.push((event.id, Instant::now()));
                }
            }
            received
        });
    }
    // Four appenders share the rate, so that it holds even when one append takes longer than
    // the interval between two.
    const APPENDERS: u64 = 4;
    let deadline = Instant::now() + duration;
    let mut appenders = JoinSet::new();
    for appender in 0..APPENDERS {
        let mut client = server.client().await?;
        let replied = replied.clone();
        let interval = Duration::from_secs_f64(APPENDERS as f64 / rate.max(1) as f64);
        appenders.spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = 0u64;
            while Instant::now() < deadline {
                ticker.tick().await;
                let proposed = event("Ping", payload(sent));
                let id = proposed.id.clone();
                let stream = format!("w4-{appender}");
                client
                    .append(pb::AppendRequest {
                        stream,
                        expected: None,
                        events: vec![proposed],
                    })
                    .await
                    .map_err(status)?;
                replied
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Instant::now());
                sent += 1;
            }
            Ok::<_, Error>(sent)
        });
    }
    let mut sent = 0u64;
    while let Some(done) = appenders.join_next().await {
        sent += done.map_err(join_error)??;
    }
    let mut client = server.client().await?;
    client
        .append(pb::AppendRequest {
            stream: "w4".into(),
            expected: None,
            events: vec![event("Stop", b"{}".to_vec())],
        })
        .await
        .map_err(status)?;
    let replied = replied.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut samples = Samples::default();
    let mut deliveries = 0;
    while let Some(done) = receivers.join_next().await {
        for (id, at) in done.map_err(join_error)? {
            if let Some(reply) = replied.get(&id) {
                // A subscriber may see the event before the appender sees its reply: count 0.
                samples.push(at.saturating_duration_since(*reply));
                deliveries += 1;
            }
        }
    }
    if deliveries != sent * subscribers as u64 {
        return Err(Error::Internal(format!(
            "W4: {deliveries} deliveries of {sent} events to {subscribers} subscribers"
        )));
    }
    Ok((deliveries, samples))
}

async fn idle_subscribers(
    server: &ServerProcess,
    count: usize,
    idle: Duration,
    server_url: &str,
    observer_url: &str,
) -> Result<()> {
    let before = server.rss_kib();
    let channels = count.div_ceil(100).max(1);
    let mut clients = Vec::new();
    for _ in 0..channels {
        clients.push(server.client().await?);
    }
    let mut streams = Vec::with_capacity(count);
    for index in 0..count {
        streams.push(subscribe_live(&mut clients[index % channels]).await?);
    }
    let with_subscribers = server.rss_kib();
    // Statements run by the server's sessions while everyone is idle, from pg_stat_database.
    // Statistics reach pg_stat_database with a delay (up to 10 s, PGSTAT_IDLE_INTERVAL): let the
    // subscriptions' own start-up statements land before the first reading.
    tokio::time::sleep(Duration::from_secs(11).min(idle + Duration::from_secs(1))).await;
    // Read from another database, so that these readings are not counted themselves.
    let server_db = server_url
        .parse::<PgConnectOptions>()
        .map_err(|e| Error::Startup(format!("invalid database URL: {e}")))?
        .get_database()
        .unwrap_or_default()
        .to_string();
    let mut connection = PgConnection::connect(observer_url).await?;
    let transactions =
        "SELECT (xact_commit + xact_rollback)::bigint FROM pg_stat_database WHERE datname = $1";
    let mut reading = async || -> Result<i64> {
        sqlx::query("SELECT pg_stat_clear_snapshot()")
            .execute(&mut connection)
            .await?;
        Ok(sqlx::query_scalar(transactions)
            .bind(&server_db)
            .fetch_one(&mut connection)
            .await?)
    };
    let first = reading().await?;
    tokio::time::sleep(idle).await;
    let second = reading().await?;
    drop(streams);
    drop(clients);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = server.rss_kib();
    println!("{count} idle subscribers");
    println!(
        "  server resident memory: {:.1} MB before, {:.1} MB with them, {:.1} MB after they left",
        before as f64 / 1024.0,
        with_subscribers as f64 / 1024.0,
        after as f64 / 1024.0
    );
    println!(
        "  database transactions in {}s idle: {}",
        idle.as_secs(),
        second - first
    );
    Ok(())
}

async fn wait_built(admin: &mut AdminServiceClient<Channel>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(3600);
    loop {
        let info = admin
            .get_projection(pb::GetProjectionRequest {
                name: "cart_summary".into(),
            })
            .await
            .map_err(status)?
            .into_inner()
            .projection
            .unwrap_or_default();
        if info.active_version >= 1 && info.building_version == 0 {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Internal("the projection was not built".into()));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
