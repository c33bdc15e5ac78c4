//! The test harness: a real server per test, on its own database, against real PostgreSQL.
//!
//! With `DATABASE_URL` set, test databases are created on that server; otherwise one private
//! PostgreSQL (the server's own embedded mode) is started for the whole test binary.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::OnceLock,
    time::{Duration, Instant},
};

use highwater::{
    config::ServeConfig,
    pb::{self, event_store_service_client::EventStoreServiceClient},
    server::Application,
    settings::Settings,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection};
use tokio::{sync::oneshot, task::JoinHandle};
use tonic::transport::Channel;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};
use uuid::Uuid;

/// The URL of the maintenance database of the server the tests use.
pub fn admin_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => url,
        _ => start_private_postgres(),
    })
}

/// `url` (of the server [`admin_url`] names) as a superuser: unchanged with `DATABASE_URL` (CI's
/// is the `postgres` superuser), the private cluster's bootstrap superuser otherwise (the tests'
/// own user there, `highwater`, is none).
pub fn as_superuser(url: &str) -> String {
    match std::env::var("DATABASE_URL") {
        Ok(given) if !given.is_empty() => url.to_string(),
        _ => url_for_user(url, "highwater_admin"),
    }
}

/// The user name of `url`.
pub fn user_of(url: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[authority..];
    match rest.find('@') {
        Some(at) => rest[..at].split(':').next().unwrap_or_default().to_string(),
        None => String::new(),
    }
}

/// `url` with its user name replaced.
pub fn url_for_user(url: &str, user: &str) -> String {
    let authority = url.find("://").map_or(0, |i| i + 3);
    match url[authority..].find('@') {
        Some(at) => format!("{}{user}{}", &url[..authority], &url[authority + at..]),
        None => format!("{}{user}@{}", &url[..authority], &url[authority..]),
    }
}

/// Starts the embedded PostgreSQL once for this test binary, on a thread that lives as long as
/// the process (the cluster is tied to the thread that started it), and stops it at exit.
fn start_private_postgres() -> String {
    static STATE: OnceLock<PathBuf> = OnceLock::new();
    extern "C" fn stop_at_exit() {
        if let Some(dir) = STATE.get() {
            let pid_file = dir.join("postgres/postmaster.pid");
            if let Some(pid) = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|text| text.lines().next()?.trim().parse::<i32>().ok())
            {
                unsafe { libc::kill(pid, libc::SIGINT) };
                let deadline = Instant::now() + Duration::from_secs(20);
                while pid_file.exists() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }

    let dir = tempfile::Builder::new()
        .prefix("hw-test-")
        .tempdir_in("/tmp")
        .expect("temp dir")
        .keep();
    let (sender, receiver) = std::sync::mpsc::channel();
    let thread_dir = dir.clone();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let postgres = highwater::embedded_pg::EmbeddedPostgres::start(&thread_dir, None)
                .await
                .expect("start the private PostgreSQL for tests");
            let url = format!(
                "postgres://highwater@localhost/postgres?host={}&port=5432",
                postgres.socket_dir().display()
            );
            sender.send(url).unwrap();
            std::future::pending::<()>().await;
            drop(postgres);
        });
    });
    let url = receiver.recv().expect("private PostgreSQL started");
    let _ = STATE.set(dir);
    unsafe { libc::atexit(stop_at_exit) };
    url
}

/// `url` with its database name replaced.
pub fn url_for_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map_or(0, |i| i + 3);
    let path_start = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    let mut out = format!("{}/{}", &base[..path_start], database);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database for one test, dropped when the guard is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    /// A fresh name; the server under test creates the database on first connect.
    pub fn new() -> Self {
        let name = format!("hw_test_{}", Uuid::new_v4().simple());
        let url = url_for_database(admin_url(), &name);
        Self { name, url }
    }

    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url)
            .await
            .expect("connect to the test database")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async work on a thread of its own.
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                if let Ok(mut admin) = PgConnection::connect(admin_url()).await {
                    let oid: Option<i64> = sqlx::query_scalar(
                        "SELECT oid::bigint FROM pg_database WHERE datname = $1",
                    )
                    .bind(&name)
                    .fetch_optional(&mut admin)
                    .await
                    .ok()
                    .flatten();
                    let sql = format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)");
                    let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
                    // Projection sandbox roles belong to the cluster: hwp_<database oid>_<name>,
                    // and so does the upcaster role, hwu_<database oid>.
                    if let Some(oid) = oid {
                        let roles: Vec<String> = sqlx::query_scalar(
                            "SELECT rolname::text FROM pg_roles WHERE rolname LIKE $1 OR rolname = $2",
                        )
                        .bind(format!("hwp\\_{oid}\\_%"))
                        .bind(format!("hwu_{oid}"))
                        .fetch_all(&mut admin)
                        .await
                        .unwrap_or_default();
                        for role in roles {
                            let sql = format!("DROP ROLE IF EXISTS \"{role}\"");
                            let _ = sqlx::query(AssertSqlSafe(sql)).execute(&mut admin).await;
                        }
                    }
                }
            });
        })
        .join();
    }
}

/// Server flags for a test: an ephemeral port on loopback and the given database.
pub fn config_for(database_url: &str, extra: &[&str]) -> Settings {
    let mut args = vec![
        "highwater",
        "--listen",
        "127.0.0.1:0",
        "--database-url",
        database_url,
        "--pool-size",
        "8",
    ];
    args.extend_from_slice(extra);
    // Only the flags given here count: HIGHWATER_* variables of the shell running the tests
    // (such as HIGHWATER_AUTH_FILE) must not change the servers under test.
    let command = <ServeFlags as clap::CommandFactory>::command().mut_args(|arg| arg.env(None));
    let matches = command
        .try_get_matches_from(args)
        .expect("valid test flags");
    <ServeFlags as clap::FromArgMatches>::from_arg_matches(&matches)
        .expect("valid test flags")
        .serve
        .into()
}

/// The server's flags, parsed as `highwater serve` parses them.
#[derive(Debug, clap::Parser)]
#[command(name = "highwater")]
pub struct ServeFlags {
    #[command(flatten)]
    pub serve: ServeConfig,
}

/// A server running inside the test process.
pub struct RunningServer {
    pub address: SocketAddr,
    /// The metrics endpoint, with `--metrics-listen`.
    pub metrics: Option<SocketAddr>,
    /// The server's subscribers and their progress.
    pub subscribers: std::sync::Arc<highwater_core::subscribe::registry::Registry>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<highwater::error::ServerResult<()>>>,
}

impl RunningServer {
    /// Builds and runs a server; does not wait for readiness.
    pub async fn start(config: Settings) -> Self {
        let app = Application::build(config).await.expect("build the server");
        let address = app.local_addr();
        let metrics = app.metrics_addr();
        let subscribers = app.subscribers();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run_until_stopped(async move {
            let _ = stopped.await;
        }));
        Self {
            address,
            metrics,
            subscribers,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub async fn client(&self) -> EventStoreServiceClient<Channel> {
        EventStoreServiceClient::connect(self.endpoint())
            .await
            .expect("connect to the server")
    }

    /// Health of the whole server (`""`), or None if the call itself failed.
    pub async fn health(&self) -> Option<ServingStatus> {
        let mut client = HealthClient::new(
            Channel::from_shared(self.endpoint())
                .ok()?
                .connect()
                .await
                .ok()?,
        );
        let response = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .ok()?;
        ServingStatus::try_from(response.into_inner().status).ok()
    }

    /// Waits until health reports `status`.
    pub async fn wait_for_health(&self, status: ServingStatus, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            if self.health().await == Some(status) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "health did not become {status:?} within {within:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Graceful shutdown, as on SIGTERM; returns the server's result.
    pub async fn stop(mut self) -> highwater::error::ServerResult<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task
            .take()
            .expect("running")
            .await
            .expect("server task")
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// A ready server on a database of its own, with a client.
pub struct TestApp {
    pub server: RunningServer,
    pub client: EventStoreServiceClient<Channel>,
    pub database: TestDatabase,
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// With extra server flags.
    pub async fn spawn_with(extra: &[&str]) -> Self {
        Self::spawn_configured(|_| {}, extra).await
    }

    /// With extra server flags and settings changed in the typed configuration.
    pub async fn spawn_configured(change: impl FnOnce(&mut Settings), extra: &[&str]) -> Self {
        let database = TestDatabase::new();
        let mut config = config_for(&database.url, extra);
        change(&mut config);
        let server = RunningServer::start(config).await;
        server
            .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
            .await;
        let client = server.client().await;
        Self {
            server,
            client,
            database,
        }
    }

    /// The server, apart from its client and its database: to stop it and look at what it left.
    pub fn into_server(self) -> (RunningServer, TestDatabase) {
        drop(self.client);
        (self.server, self.database)
    }

    /// Stops the server gracefully and starts a new one on the same database.
    pub async fn restart(self) -> Self {
        let Self {
            server,
            database,
            client,
        } = self;
        drop(client);
        server.stop().await.expect("graceful stop");
        let server = RunningServer::start(config_for(&database.url, &[])).await;
        server
            .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
            .await;
        let client = server.client().await;
        Self {
            server,
            client,
            database,
        }
    }

    pub async fn append(
        &mut self,
        request: pb::AppendRequest,
    ) -> Result<pb::AppendResponse, tonic::Status> {
        self.client.append(request).await.map(|r| r.into_inner())
    }

    /// Every event of the log, forwards.
    pub async fn read_all(&mut self) -> Vec<pb::RecordedEvent> {
        read_all_from(&mut self.client, 0, pb::Direction::Forwards, 0)
            .await
            .expect("read all")
    }

    pub async fn read_stream(
        &mut self,
        stream: &str,
        from_revision: u64,
        direction: pb::Direction,
        max_count: u64,
    ) -> Result<Vec<pb::RecordedEvent>, tonic::Status> {
        let request = pb::ReadStreamRequest {
            original: false,
            stream: stream.into(),
            from_revision,
            direction: direction as i32,
            max_count,
            from_latest_snapshot: false,
        };
        collect(self.client.read_stream(request).await?.into_inner(), |m| {
            m.event
        })
        .await
    }
}

pub async fn read_all_from(
    client: &mut EventStoreServiceClient<Channel>,
    after_position: u64,
    direction: pb::Direction,
    max_count: u64,
) -> Result<Vec<pb::RecordedEvent>, tonic::Status> {
    let request = pb::ReadAllRequest {
        original: false,
        after_position,
        direction: direction as i32,
        max_count,
    };
    collect(client.read_all(request).await?.into_inner(), |m| m.event).await
}

/// The events of a read, whichever read's response type carries them.
pub async fn collect<T>(
    mut stream: tonic::Streaming<T>,
    event_of: fn(T) -> Option<pb::RecordedEvent>,
) -> Result<Vec<pb::RecordedEvent>, tonic::Status> {
    let mut events = Vec::new();
    while let Some(message) = stream.message().await? {
        events.push(event_of(message).expect("a read response carries an event"));
    }
    Ok(events)
}

/// A JSON event with a fresh id.
pub fn json_event(event_type: &str, json: &str) -> pb::ProposedEvent {
    pb::ProposedEvent {
        id: Uuid::now_v7().to_string(),
        r#type: event_type.into(),
        data: json.as_bytes().to_vec().into(),
        content_type: String::new(),
        metadata: Default::default(),
    }
}

pub fn append_request(
    stream: &str,
    expected: Option<pb::append_request::Expected>,
    events: Vec<pb::ProposedEvent>,
) -> pb::AppendRequest {
    pb::AppendRequest {
        stream: stream.into(),
        expected,
        events,
    }
}

pub fn exact(revision: u64) -> Option<pb::append_request::Expected> {
    Some(pb::append_request::Expected::Revision(revision))
}

pub fn state(state: pb::ExpectedState) -> Option<pb::append_request::Expected> {
    Some(pb::append_request::Expected::State(state as i32))
}

/// A loopback port free at the time of the call, for server processes started by tests.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The revisions of events, in the order given.
pub fn revisions(events: &[pb::RecordedEvent]) -> Vec<u64> {
    events.iter().map(|e| e.revision).collect()
}

/// The next message of a subscription; fails the test after 10 s or if the subscription ends.
pub async fn next_message<T>(subscription: &mut tonic::Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), subscription.message())
        .await
        .expect("a message within 10 s")
        .expect("the subscription stays open")
        .expect("the subscription has not ended")
}

/// The next event of a SubscribeAll, past its other messages.
pub async fn next_event(
    subscription: &mut tonic::Streaming<pb::SubscribeAllResponse>,
) -> pb::RecordedEvent {
    loop {
        if let Some(pb::subscribe_all_response::Content::Event(event)) =
            next_message(subscription).await.content
        {
            return event;
        }
    }
}

/// The highwater binary, without the HIGHWATER_* variables of the shell running the tests.
pub fn highwater_blocking() -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_highwater"));
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("HIGHWATER_") {
            command.env_remove(name);
        }
    }
    command
}

/// [`highwater_blocking`] for async tests.
pub fn highwater() -> tokio::process::Command {
    highwater_blocking().into()
}
