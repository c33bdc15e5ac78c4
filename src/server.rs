//! Assembles the server: the database (external or private), the core, the gRPC services,
//! health, reflection, and graceful shutdown.

use std::{future::Future, net::SocketAddr, str::FromStr, time::Duration};

use sqlx::{PgPool, postgres::PgConnectOptions};
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::{StreamExt, wrappers::TcpListenerStream};
use tonic::transport::Server;
use tonic_health::{ServingStatus, server::HealthReporter};
use tracing::{error, info, warn};

use crate::{
    config::DatabaseConfig,
    embedded_pg::EmbeddedPostgres,
    error::{ServerError, ServerResult},
    grpc::{
        admin::AdminService,
        auth::Authenticate,
        event_store::EventStoreService,
        idle::{IdleIo, IdleTracking},
        message_limit::MessageLimit,
        middleware::AroundLayer,
        request_id::RequestId,
        rpc_metrics::{CountCalls, RpcMetrics},
    },
    pb::{
        self, admin_service_server::AdminServiceServer,
        event_store_service_server::EventStoreServiceServer,
    },
    security::Security,
    services::{Core, ReadyCore},
    settings::Settings,
};
use highwater_core::{
    error::{Error, Result},
    projection::{Projections, catalog::InlineSource},
    shutdown::{Tasks, stopped},
    store::{Store, database, upcasting::Upcasting},
    subscribe::{Subscriptions, hub::Hub, registry::Registry},
    upcast::Upcasters,
};
use std::sync::Arc;

/// The fully qualified name health reports for the event store service.
pub const EVENT_STORE_SERVICE: &str = "highwater.v1.EventStoreService";
/// How often the database is checked for health once the server is ready.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one health check may take before the database counts as unreachable.
const HEALTH_CHECK_TIMEOUT: Duration = Duration::from_secs(3);
/// Delays between attempts to reach the database at start.
const CONNECT_RETRY_FIRST: Duration = Duration::from_millis(250);
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(5);

/// Where the server's data lives: an external PostgreSQL, or a private one it runs itself.
pub struct Database {
    pub options: PgConnectOptions,
    pub embedded: Option<EmbeddedPostgres>,
}

impl Database {
    /// Parses the URL, or starts the private PostgreSQL when there is none.
    pub async fn open(config: &DatabaseConfig) -> ServerResult<Self> {
        match &config.database_url {
            Some(url) => {
                let options = PgConnectOptions::from_str(url).map_err(|error| {
                    ServerError::Startup(format!("invalid database URL: {error}"))
                })?;
                Ok(Self {
                    options,
                    embedded: None,
                })
            }
            None => {
                let embedded =
                    EmbeddedPostgres::start(&config.data_dir, config.postgres_bin_dir.as_deref())
                        .await?;
                Ok(Self {
                    options: embedded.connect_options(),
                    embedded: Some(embedded),
                })
            }
        }
    }

    /// Stops the private PostgreSQL, if this server runs one.
    pub async fn close(self) -> ServerResult<()> {
        match self.embedded {
            Some(embedded) => embedded.stop().await,
            None => Ok(()),
        }
    }
}

/// A server bound to its port, ready to run.
pub struct Application {
    listener: TcpListener,
    /// The Prometheus endpoint's listener, if `--metrics-listen` is given.
    metrics_listener: Option<TcpListener>,
    security: Security,
    settings: Settings,
    database: Database,
    subscribers: Arc<Registry>,
}

impl Application {
    /// Binds the listener and opens the database (starting the private one if needed). The
    /// database is connected and migrated by `run_until_stopped`, while health says NOT_SERVING.
    pub async fn build(settings: impl Into<Settings>) -> ServerResult<Self> {
        let settings = settings.into();
        let max_message = settings.max_message_bytes();
        if settings.max_request_bytes_in_flight < max_message {
            return Err(ServerError::Startup(format!(
                "--max-request-bytes-in-flight ({}) must be at least --max-append-bytes plus 1 MiB ({max_message}), \
                 or a maximal append could never be read",
                settings.max_request_bytes_in_flight
            )));
        }
        let security = Security::load(&settings.security, settings.listen)?;
        let listener = TcpListener::bind(settings.listen).await.map_err(|error| {
            ServerError::Startup(format!("cannot listen on {}: {error}", settings.listen))
        })?;
        let metrics_listener = match settings.metrics_listen {
            Some(address) => Some(TcpListener::bind(address).await.map_err(|error| {
                ServerError::Startup(format!("cannot listen for metrics on {address}: {error}"))
            })?),
            None => None,
        };
        let database = Database::open(&settings.database).await?;
        Ok(Self {
            listener,
            metrics_listener,
            security,
            settings,
            database,
            subscribers: Arc::default(),
        })
    }

    /// The subscribers of this server and their progress, for operators and tests.
    pub fn subscribers(&self) -> Arc<Registry> {
        self.subscribers.clone()
    }

    /// The metrics endpoint's address, if it has one.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|listener| listener.local_addr().ok())
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    /// Serves until `shutdown` completes (or the gRPC server fails on its own), then stops
    /// accepting, lets in-flight requests finish (within the grace period), answers every queued
    /// append, waits for every background task and closes the pool (within the grace period
    /// again: the whole shutdown takes at most twice the grace period, whatever the database
    /// does) and stops the private database (docs/ARCHITECTURE.md, "Tasks and shutdown").
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> ServerResult<()> {
        let Self {
            listener,
            metrics_listener,
            security,
            settings,
            database,
            subscribers,
        } = self;
        let grace = settings.shutdown_grace;
        // Flipped to true once, when shutdown begins: by the signal, or by this function when
        // the server fails. Every background task watches it.
        let stop_sender = Arc::new(watch::Sender::new(false));
        let tasks = Tasks::new(stop_sender.subscribe());

        let (health, health_service) = tonic_health::server::health_reporter();
        set_health(&health, ServingStatus::NotServing).await;
        let ready_core = ReadyCore::default();
        // Per-RPC series, shared by the gRPC layer that counts and the metrics endpoint.
        let rpc_metrics = Arc::new(RpcMetrics::new(&[
            pb::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]));
        // First, so that a server that cannot be built (a TLS file that does not parse) leaves
        // no task behind.
        let server = serve_grpc(
            listener,
            security,
            &settings,
            health_service,
            &ready_core,
            &rpc_metrics,
            &tasks,
        );
        let mut server = match server {
            Ok(server) => server,
            Err(error) => {
                database.close().await?;
                return Err(error);
            }
        };
        tasks.spawn(
            "shutdown-signal",
            forward_shutdown(shutdown, stop_sender.clone()),
        );
        if let Some(metrics_listener) = metrics_listener {
            serve_metrics(metrics_listener, &ready_core, &rpc_metrics, &tasks);
        }

        let started = start_serving(
            &database,
            &settings,
            &subscribers,
            &ready_core,
            &health,
            &tasks,
        )
        .await;
        let (running, mut failure) = match started {
            Ok(running) => (running, None),
            Err(error) => (None, Some(error)),
        };
        if failure.is_none() {
            failure = wait_for_stop_or_failure(&mut server, &tasks).await;
        }
        let _ = stop_sender.send(true);

        info!("shutting down: no new connections, finishing in-flight requests");
        set_health(&health, ServingStatus::NotServing).await;
        finish_requests(server, grace).await;
        // One more grace period for the rest, together: a writer or a pool stuck on a database
        // that stopped answering must not hold the process.
        let deadline = tokio::time::Instant::now() + grace;
        if let Some(running) = running
            && tokio::time::timeout_at(deadline, running.stop())
                .await
                .is_err()
        {
            warn!(
                grace_secs = grace.as_secs(),
                "the writer or the hub outlived the grace period"
            );
        }
        if let Err(still_running) = tasks.join_until(deadline).await {
            warn!(
                still_running,
                grace_secs = grace.as_secs(),
                "background tasks outlived the grace period"
            );
        }
        if let Some(pool) = ready_core.get().ok().map(|core| core.store.pool().clone())
            && tokio::time::timeout_at(deadline, pool.close())
                .await
                .is_err()
        {
            warn!("database connections outlived the grace period");
        }
        database.close().await?;
        match failure {
            Some(error) => Err(error.into()),
            None => {
                info!("stopped");
                Ok(())
            }
        }
    }
}

/// Sends the stop once `shutdown` completes, unless the server stopped first.
async fn forward_shutdown(
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: Arc<watch::Sender<bool>>,
) {
    let mut stopping = stop.subscribe();
    tokio::select! {
        () = shutdown => {
            let _ = stop.send(true);
        }
        _ = stopping.wait_for(|stopping| *stopping) => {}
    }
}

/// Serves Prometheus metrics on `listener` until shutdown.
fn serve_metrics(
    listener: TcpListener,
    ready_core: &ReadyCore,
    rpc_metrics: &Arc<RpcMetrics>,
    tasks: &Tasks,
) {
    if let Ok(metrics_address) = listener.local_addr() {
        info!(%metrics_address, "serving metrics at /metrics");
    }
    tasks.spawn(
        "metrics",
        crate::http::metrics::serve(
            listener,
            ready_core.clone(),
            rpc_metrics.clone(),
            tasks.stop(),
        ),
    );
}

/// The gRPC server's task: it ends when shutdown begins and its in-flight requests finish.
type GrpcServer = JoinHandle<Result<(), tonic::transport::Error>>;

/// Starts the gRPC server (health, reflection, the event store and admin services behind the
/// request layers) on `listener`. Requests before the core is ready answer UNAVAILABLE.
fn serve_grpc(
    listener: TcpListener,
    security: Security,
    settings: &Settings,
    health_service: tonic_health::pb::health_server::HealthServer<
        impl tonic_health::pb::health_server::Health,
    >,
    ready_core: &ReadyCore,
    rpc_metrics: &Arc<RpcMetrics>,
    tasks: &Tasks,
) -> ServerResult<GrpcServer> {
    let address = listener
        .local_addr()
        .map_err(|e| ServerError::Startup(e.to_string()))?;
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The google.rpc error details (ErrorInfo, BadRequest) the errors carry, so that generic
        // tools can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|error| ServerError::Startup(format!("reflection: {error}")))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        // The google.rpc error details (ErrorInfo, BadRequest) the errors carry, so that generic
        // tools can decode them.
        .register_encoded_file_descriptor_set(tonic_types::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|error| ServerError::Startup(format!("reflection: {error}")))?;
    // Room for a maximal append plus protobuf framing; larger messages never reach validation
    // (MessageLimit refuses them from their frame header).
    let max_message = settings.max_message_bytes();
    let admin = AdminServiceServer::new(AdminService::new(ready_core.clone()))
        .max_decoding_message_size(max_message);
    let event_store = EventStoreServiceServer::new(EventStoreService::new(ready_core.clone()))
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(
            settings
                .limits
                .max_event_bytes
                .saturating_add(1024 * 1024)
                .max(4 << 20),
        );

    let mut builder = Server::builder()
        .max_concurrent_streams(settings.max_streams_per_connection)
        .http2_keepalive_interval(settings.keepalive)
        .http2_keepalive_timeout(Some(settings.keepalive_timeout));
    let tls = security.tls.is_some();
    if let Some(tls) = security.tls {
        builder = builder
            .tls_config(tls)
            .map_err(|error| ServerError::Startup(format!("TLS: {error}")))?;
    }
    let authenticated = security.tokens.is_some();
    let idle_timeout = settings.idle_timeout;
    let server = builder
        // Outermost first: every call is counted and counts as activity, refused ones too;
        // refusals are logged and answered with the request id.
        .layer(AroundLayer(CountCalls(rpc_metrics.clone())))
        .layer(AroundLayer(IdleTracking))
        .layer(AroundLayer(RequestId))
        .layer(AroundLayer(Authenticate::new(security.tokens)))
        .layer(AroundLayer(MessageLimit::new(
            max_message,
            settings.max_request_bytes_in_flight,
        )))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(event_store)
        .add_service(admin)
        .serve_with_incoming_shutdown(
            TcpListenerStream::new(listener)
                .map(move |accepted| accepted.map(|io| IdleIo::new(io, idle_timeout))),
            stopped(tasks.stop()),
        );
    let server = tasks.spawn("grpc", server);
    info!(%address, tls, authenticated, "listening");
    Ok(server)
}

/// What runs once the database is ready, stopped in this order at shutdown.
struct Running {
    store: Store,
    writer: JoinHandle<()>,
    hub: JoinHandle<()>,
}

impl Running {
    /// Answers every queued append, then waits for the writer and the hub to end.
    async fn stop(self) {
        self.store.stop().await;
        let _ = self.writer.await;
        let _ = self.hub.await;
    }
}

/// Connects and migrates (retrying while the database is unreachable, until shutdown), starts
/// the core, and reports SERVING. `Ok(None)`: shutdown began first.
async fn start_serving(
    database: &Database,
    settings: &Settings,
    subscribers: &Arc<Registry>,
    ready_core: &ReadyCore,
    health: &HealthReporter,
    tasks: &Tasks,
) -> Result<Option<Running>> {
    let prepared = tokio::select! {
        prepared = prepare(&database.options, settings, subscribers, tasks) => prepared,
        () = stopped(tasks.stop()) => return Ok(None),
    };
    let (pool, hub, hub_task) = prepared.inspect_err(|error| {
        error!(%error, "cannot prepare the database");
    })?;
    if let Some(embedded) = &database.embedded {
        embedded.restrict_advisory_locks().await?;
    }
    let started = start_core(&pool, hub, &database.options, settings, tasks).await;
    let (core, writer) = match started {
        Ok(started) => started,
        Err(error) => {
            // The hub ends with the stop that follows, and is joined with every other task.
            error!(%error, "cannot start");
            drop(hub_task);
            return Err(error);
        }
    };
    let running = Running {
        store: core.store.clone(),
        writer,
        hub: hub_task,
    };
    ready_core.set(core);
    set_health(health, ServingStatus::Serving).await;
    tasks.spawn(
        "database-health",
        watch_database(pool, health.clone(), tasks.stop()),
    );
    info!("ready");
    Ok(Some(running))
}

/// Waits for shutdown. `Some` when the gRPC server ended on its own first: a failure.
async fn wait_for_stop_or_failure(server: &mut GrpcServer, tasks: &Tasks) -> Option<Error> {
    tokio::select! {
        () = stopped(tasks.stop()) => None,
        finished = &mut *server => {
            // The server also finishes on its own once shutdown has begun; anything else is a
            // failure.
            if tasks.is_stopping() {
                return None;
            }
            let error = match finished {
                Ok(Ok(())) => Error::Internal("server stopped unexpectedly".into()),
                Ok(Err(error)) => Error::Internal(format!("server failed: {error}")),
                Err(error) => Error::Internal(format!("server task failed: {error}")),
            };
            error!(%error, "gRPC server ended; stopping everything else");
            Some(error)
        }
    }
}

/// Lets in-flight requests finish within `grace`, then cuts them off.
async fn finish_requests(mut server: GrpcServer, grace: Duration) {
    if server.is_finished() {
        return;
    }
    if tokio::time::timeout(grace, &mut server).await.is_err() {
        warn!(
            grace_secs = grace.as_secs(),
            "in-flight requests outlived the grace period; cutting them off"
        );
        server.abort();
    }
}

/// Starts the core services over a ready database: the writer, subscriptions, projections
/// (registering the definitions folder) and their supervisor.
async fn start_core(
    pool: &PgPool,
    hub: Arc<Hub>,
    options: &PgConnectOptions,
    settings: &Settings,
    tasks: &Tasks,
) -> Result<(Core, JoinHandle<()>)> {
    let (store, writer) = Store::start(
        pool.clone(),
        settings.limits,
        InlineSource {
            sql_timeout: settings.projection.sql_timeout,
        },
        hub.upcasting().clone(),
        tasks,
    );
    let upcasters = Upcasters::new(
        pool.clone(),
        settings.projection.sql_timeout,
        hub.upcasting().clone(),
    );
    let subscriptions = Subscriptions::new(
        pool.clone(),
        hub.clone(),
        tasks.clone(),
        settings.max_subscribers,
    );
    let projections = Arc::new(Projections::new(
        pool.clone(),
        options.clone(),
        settings.node.clone(),
        settings.projection.clone(),
        hub,
        tasks.clone(),
    ));
    // Upcasters first: projections registered next are built through them.
    if let Some(dir) = &settings.upcasters_dir
        && let Err(error) = upcasters.register_dir(dir).await
    {
        store.stop().await;
        let _ = writer.await;
        return Err(error);
    }
    if let Err(error) = projections.secure_existing().await {
        store.stop().await;
        let _ = writer.await;
        return Err(error);
    }
    if let Some(dir) = &settings.projections_dir
        && let Err(error) = projections.register_dir(dir).await
    {
        store.stop().await;
        let _ = writer.await;
        return Err(error);
    }
    tasks.spawn("projection-supervisor", projections.clone().supervise());
    tasks.spawn("erase-sweep", store.erases().sweep(pool.clone()));
    Ok((
        Core {
            store,
            subscriptions,
            projections,
            upcasters,
            tasks: tasks.clone(),
        },
        writer,
    ))
}

/// Connects, migrates and starts the subscription hub, retrying while the database is
/// unreachable.
async fn prepare(
    options: &PgConnectOptions,
    settings: &Settings,
    subscribers: &Arc<Registry>,
    tasks: &Tasks,
) -> Result<(PgPool, Arc<Hub>, JoinHandle<()>)> {
    let mut delay = CONNECT_RETRY_FIRST;
    loop {
        let attempt = async {
            let pool = database::connect(options, settings.database.pool_size).await?;
            database::migrate(&pool).await?;
            database::warn_if_superuser(&pool).await?;
            let upcasting = Upcasting::load(pool.clone(), settings.projection.sql_timeout).await?;
            let (hub, hub_task) = Hub::start(
                pool.clone(),
                options,
                subscribers.clone(),
                upcasting,
                settings.live_buffer_batches,
                tasks,
            )
            .await?;
            Ok::<_, Error>((pool, hub, hub_task))
        };
        match attempt.await {
            Ok(prepared) => return Ok(prepared),
            Err(error) if error.is_unavailable() => {
                warn!(%error, retry_in_ms = delay.as_millis() as u64, "database unreachable");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(CONNECT_RETRY_MAX);
            }
            Err(error) => return Err(error),
        }
    }
}

/// Reports NOT_SERVING while the database cannot be reached, SERVING again when it can.
async fn watch_database(pool: PgPool, health: HealthReporter, stop: watch::Receiver<bool>) {
    let mut healthy = true;
    loop {
        tokio::select! {
            () = stopped(stop.clone()) => return,
            _ = tokio::time::sleep(HEALTH_CHECK_INTERVAL) => {}
        }
        let reachable = tokio::time::timeout(HEALTH_CHECK_TIMEOUT, async {
            let mut connection = pool.acquire().await?;
            sqlx::Connection::ping(&mut *connection).await
        })
        .await
        .is_ok_and(|result| result.is_ok());
        if reachable != healthy {
            healthy = reachable;
            if healthy {
                info!("database reachable again");
                set_health(&health, ServingStatus::Serving).await;
            } else {
                warn!("database unreachable");
                set_health(&health, ServingStatus::NotServing).await;
            }
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status(EVENT_STORE_SERVICE, status).await;
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    info!("shutdown signal received");
}

/// `highwater migrate`: applies migrations and exits.
pub async fn migrate(config: &DatabaseConfig) -> ServerResult<()> {
    let database = Database::open(config).await?;
    let result = async {
        let pool = database::connect(&database.options, 1).await?;
        database::migrate(&pool).await?;
        pool.close().await;
        if let Some(embedded) = &database.embedded {
            embedded.restrict_advisory_locks().await?;
        }
        Ok(())
    }
    .await;
    database.close().await?;
    if result.is_ok() {
        info!("migrations applied");
    }
    result
}
