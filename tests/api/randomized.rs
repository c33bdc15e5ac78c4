//! A seeded, randomized run of two server processes on one database, looking for the next bug
//! that no hand-written scenario thought of.
//!
//! Four clients append (through either server, resending what got no answer), four live
//! subscribers follow `$all` (reconnecting wherever a server is up), and a driver picks, from the
//! seed, one disturbance after another: SIGKILL or SIGTERM of a server and its restart, new
//! versions of an inline and an async projection, handler updates, blue/green and in-place
//! rebuilds, soft and hard deletes. At the end, with both servers up and the projections settled:
//! - every acknowledged append is stored at the positions it was given, with its ids and data
//!   (unless its stream was hard-deleted), and ids are unique in the log;
//! - each projection's rows equal the fold of the log (sum, count, sum of positions, last
//!   position, per stream), computed with the weight of one registered version, and the active
//!   version is at least the newest one registered;
//! - every subscriber got strictly increasing positions, every event of the final log up to the
//!   head, and nothing that is not in the log (or of a hard-deleted stream);
//! - no call answered `INTERNAL`, and no code a client could not act on.
//!
//! `HIGHWATER_CHAOS_SEED` replays a seed: the schedule of operations (which server, which
//! stream, which disturbance, in which order) is drawn from it; thread timing is not, so a failing
//! seed replays the same schedule, not the same interleaving. `HIGHWATER_CHAOS_SECONDS` sets how
//! long the disturbances go on (default 20 s; the ignored test `a_long_randomized_run...` runs
//! 600 s by default: `cargo test --test api -- --ignored long_randomized`).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::{Child, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use highwater::pb::{
    self, AdminRebuildRequest, GetProjectionRequest, RebuildStrategy,
    admin_service_client::AdminServiceClient, event_store_service_client::EventStoreServiceClient,
    subscribe_all_request::Start, subscribe_all_response::Content,
};
use tonic::{
    Code,
    transport::{Channel, Endpoint},
};
use uuid::Uuid;

use crate::{helpers::*, projection::register_toml};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_randomized_run_of_two_servers_under_kills_rebuilds_and_deletes_keeps_every_promise() {
    run(Duration::from_secs(20)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long: run with --ignored, HIGHWATER_CHAOS_SECONDS sets the length"]
async fn a_long_randomized_run_of_two_servers_keeps_every_promise() {
    run(Duration::from_secs(600)).await;
}

/// A small deterministic generator (SplitMix64): the whole schedule comes from the seed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn fork(&mut self) -> Rng {
        Rng(self.next())
    }

    fn uuid(&mut self) -> Uuid {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        uuid::Builder::from_random_bytes(bytes).into_uuid()
    }
}

const PROJECTIONS: [(&str, &str); 2] = [("chaos_inline", "inline"), ("chaos_async", "async")];
const STREAM_SLOTS: usize = 10;
const APPENDERS: u64 = 4;
const SUBSCRIBERS: usize = 4;

/// A projection definition whose rows say which weight built them.
fn definition(name: &str, mode: &str, version: u32, weight: u64, variant: u64) -> String {
    format!(
        r#"
name = "{name}"
version = {version}
mode = "{mode}"
setup = "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY, w bigint NOT NULL, total bigint NOT NULL, events bigint NOT NULL, psum bigint NOT NULL, last bigint NOT NULL)"
[handlers]
Tick = "INSERT INTO {{{{table}}}} AS t (k, w, total, events, psum, last) VALUES ($stream, {weight}, {weight} * ($data->>'x')::bigint, 1, $position, $position) ON CONFLICT (k) DO UPDATE SET total = t.total + EXCLUDED.total, events = t.events + 1, psum = t.psum + EXCLUDED.psum, last = EXCLUDED.last /* variant {variant} */"
"#
    )
}

/// One acknowledged append.
struct Acked {
    stream: String,
    events: Vec<pb::ProposedEvent>,
    first_position: u64,
    last_position: u64,
}

/// What the run saw, shared by its tasks (a std mutex: never held across an await).
#[derive(Default)]
struct World {
    acked: Vec<Acked>,
    /// Streams a hard delete was sent for: their events may be gone, whatever the answer was.
    hard_deleted: BTreeSet<String>,
    /// The streams appenders write to; a hard-deleted one is replaced by a new name.
    streams: Vec<String>,
    next_stream: usize,
    /// Per projection: the weight of every version the run registered.
    weights: BTreeMap<String, BTreeMap<u32, u64>>,
    /// Per projection: the newest version whose registration was acknowledged.
    newest_registered: BTreeMap<String, u32>,
    /// Per projection: the next version number the run will register.
    next_version: BTreeMap<String, u32>,
    actions: BTreeMap<&'static str, u64>,
    findings: Vec<String>,
}

impl World {
    fn finding(&mut self, what: String) {
        eprintln!("chaos finding: {what}");
        self.findings.push(what);
    }
}

type Shared = Arc<Mutex<World>>;

/// The two server processes and how to reach them.
struct Cluster {
    database_url: String,
    ports: [u16; 2],
    children: Mutex<[Option<Child>; 2]>,
    starts: AtomicU64,
    logs: PathBuf,
    channels: [Channel; 2],
}

impl Cluster {
    fn new(database_url: &str, logs: PathBuf) -> Self {
        let ports = [free_port(), free_port()];
        let channels = ports.map(|port| {
            Endpoint::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(30))
                .connect_lazy()
        });
        Self {
            database_url: database_url.to_string(),
            ports,
            children: Mutex::new([None, None]),
            starts: AtomicU64::new(0),
            logs,
            channels,
        }
    }

    fn start(&self, node: usize) {
        let start = self.starts.fetch_add(1, Ordering::Relaxed);
        let log = std::fs::File::create(self.logs.join(format!("server-{node}-{start}.log")))
            .expect("server log file");
        let child = highwater_blocking()
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{}", self.ports[node]),
            ])
            .args(["--database-url", &self.database_url])
            .args([
                "--node-name",
                &format!("chaos-{node}"),
                "--log-level",
                "warn",
            ])
            .args(["--projection-batch-size", "50"])
            .args(["--projection-supervise-ms", "200"])
            .args(["--rebuild-heartbeat-timeout-ms", "1500"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start a server");
        self.children.lock().unwrap()[node] = Some(child);
    }

    fn is_up(&self, node: usize) -> bool {
        self.children.lock().unwrap()[node].is_some()
    }

    /// Stops a server: SIGKILL (no cleanup at all) or SIGTERM (graceful).
    fn stop(&self, node: usize, kill: bool) {
        let child = self.children.lock().unwrap()[node].take();
        if let Some(mut child) = child {
            if kill {
                let _ = child.kill();
            } else {
                unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            }
            let _ = child.wait();
        }
    }

    fn client(&self, node: usize) -> EventStoreServiceClient<Channel> {
        EventStoreServiceClient::new(self.channels[node].clone())
    }

    fn admin(&self, node: usize) -> AdminServiceClient<Channel> {
        AdminServiceClient::new(self.channels[node].clone())
    }

    /// A server that is up, preferring `preferred`.
    fn up_node(&self, preferred: usize) -> usize {
        if self.is_up(preferred) {
            preferred
        } else {
            1 - preferred
        }
    }

    async fn wait_ready(&self, node: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let probe = pb::ListProjectionsRequest {};
            if self.admin(node).list_projections(probe).await.is_ok() {
                return;
            }
            assert!(Instant::now() < deadline, "server {node} did not come up");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in 0..2 {
            self.stop(node, true);
        }
    }
}

/// Answers a call may meet while servers are killed and rebuilds race: the client retries or
/// gives up knowingly. Anything else (an INTERNAL from a server above all) is a finding. The
/// client's own transport failing is not the server's answer: a server going away sends GOAWAY,
/// and a call that raced it fails in the client's HTTP/2 layer (tonic calls that INTERNAL,
/// with the transport error as its source) without having reached the server.
fn transient(status: &tonic::Status) -> bool {
    let client_transport = status.code() == Code::Internal
        && std::error::Error::source(status)
            .is_some_and(|source| source.is::<tonic::transport::Error>());
    client_transport
        || matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Cancelled | Code::DeadlineExceeded
        )
}

fn seed() -> u64 {
    match std::env::var("HIGHWATER_CHAOS_SEED") {
        Ok(text) => text.parse().expect("HIGHWATER_CHAOS_SEED is a number"),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64;
            nanos ^ u64::from(std::process::id())
        }
    }
}

fn budget(default: Duration) -> Duration {
    std::env::var("HIGHWATER_CHAOS_SECONDS")
        .ok()
        .map(|text| Duration::from_secs(text.parse().expect("HIGHWATER_CHAOS_SECONDS is a number")))
        .unwrap_or(default)
}

async fn run(default_budget: Duration) {
    let seed = seed();
    let budget = budget(default_budget);
    let started = Instant::now();
    eprintln!(
        "chaos seed {seed}, {budget:?} of disturbances (replay: HIGHWATER_CHAOS_SEED={seed})"
    );
    let mut rng = Rng(seed);
    let database = TestDatabase::new();
    let logs = tempfile::Builder::new()
        .prefix("hw-chaos-")
        .tempdir_in("/tmp")
        .unwrap()
        .keep();
    let cluster = Arc::new(Cluster::new(&database.url, logs.clone()));
    cluster.start(0);
    cluster.wait_ready(0).await;
    cluster.start(1);
    cluster.wait_ready(1).await;

    let world: Shared = Arc::new(Mutex::new(World::default()));
    {
        let mut w = world.lock().unwrap();
        for _ in 0..STREAM_SLOTS {
            let name = format!("chaos-{}", w.next_stream);
            w.next_stream += 1;
            w.streams.push(name);
        }
    }
    for (name, mode) in PROJECTIONS {
        let weight = 1 + rng.below(5);
        let request = register_toml(&definition(name, mode, 1, weight, 0));
        cluster.admin(0).register_projection(request).await.unwrap();
        let mut w = world.lock().unwrap();
        w.weights.entry(name.into()).or_default().insert(1, weight);
        w.newest_registered.insert(name.into(), 1);
        w.next_version.insert(name.into(), 2);
    }

    let stop = Arc::new(AtomicBool::new(false));
    let mut appenders = Vec::new();
    for i in 0..APPENDERS {
        appenders.push(tokio::spawn(append_loop(
            cluster.clone(),
            world.clone(),
            rng.fork(),
            stop.clone(),
            i,
        )));
    }
    let target = Arc::new(AtomicU64::new(u64::MAX));
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        subscribers.push(tokio::spawn(subscribe_loop(
            cluster.clone(),
            world.clone(),
            i % 2,
            target.clone(),
        )));
    }

    let mut admin_tasks = Vec::new();
    let deadline = Instant::now() + budget;
    let mut dead_for = [0u32; 2];
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100 + rng.below(400))).await;
        for (node, steps) in dead_for.iter_mut().enumerate() {
            if !cluster.is_up(node) {
                *steps += 1;
            }
        }
        let roll = rng.below(100);
        let action = disturb(
            &cluster,
            &world,
            &mut rng,
            roll,
            &mut dead_for,
            &mut admin_tasks,
        );
        *world.lock().unwrap().actions.entry(action).or_default() += 1;
    }

    // Wind down: writers stop, both servers come up, what was started finishes.
    stop.store(true, Ordering::Relaxed);
    for task in appenders {
        task.await.unwrap();
    }
    for node in 0..2 {
        if !cluster.is_up(node) {
            cluster.start(node);
        }
    }
    for node in 0..2 {
        cluster.wait_ready(node).await;
    }
    for task in admin_tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), task).await;
    }

    settle(&cluster, &world).await;
    let log = read_all_from(&mut cluster.client(0), 0, pb::Direction::Forwards, 0)
        .await
        .expect("read the log");
    check_log(&world, &log);
    check_projections(&database, &world, &log).await;
    let head = log.last().map_or(0, |e| e.position);
    target.store(head, Ordering::Relaxed);
    let mut received = Vec::new();
    for task in subscribers {
        match tokio::time::timeout(Duration::from_secs(60), task).await {
            Ok(positions) => received.push(positions.unwrap()),
            Err(_) => world.lock().unwrap().finding(format!(
                "a subscriber did not reach the head {head} within 60 s"
            )),
        }
    }
    check_subscribers(&world, &log, &received);

    let w = world.lock().unwrap();
    eprintln!(
        "chaos seed {seed}: {:?} in all, {} appends acknowledged, {} events in the log, \
         {} hard-deleted streams, actions {:?}, {} findings (server logs in {})",
        started.elapsed(),
        w.acked.len(),
        log.len(),
        w.hard_deleted.len(),
        w.actions,
        w.findings.len(),
        logs.display()
    );
    assert!(
        w.findings.is_empty(),
        "seed {seed} (replay with HIGHWATER_CHAOS_SEED={seed}) found:\n{}",
        w.findings.join("\n")
    );
    let _ = std::fs::remove_dir_all(&logs);
}

/// One disturbance, drawn from `roll`; returns its name for the report.
fn disturb(
    cluster: &Arc<Cluster>,
    world: &Shared,
    rng: &mut Rng,
    roll: u64,
    dead_for: &mut [u32; 2],
    admin_tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> &'static str {
    // A server down for a few steps comes back whatever the roll.
    for (node, steps) in dead_for.iter_mut().enumerate() {
        if !cluster.is_up(node) && (*steps >= 4 || roll < 20) {
            cluster.start(node);
            *steps = 0;
            return "restart";
        }
    }
    let node = rng.below(2) as usize;
    let (name, mode) = PROJECTIONS[rng.below(2) as usize];
    match roll {
        20..=27 if cluster.is_up(0) && cluster.is_up(1) => {
            cluster.stop(node, true);
            "sigkill"
        }
        28..=31 if cluster.is_up(0) && cluster.is_up(1) => {
            cluster.stop(node, false);
            "sigterm"
        }
        32..=43 => {
            let weight = 1 + rng.below(5);
            let version = {
                let mut w = world.lock().unwrap();
                let next = w.next_version.get_mut(name).unwrap();
                let version = *next;
                *next += 1;
                w.weights
                    .entry(name.into())
                    .or_default()
                    .insert(version, weight);
                version
            };
            let request = register_toml(&definition(name, mode, version, weight, 0));
            let mut admin = cluster.admin(cluster.up_node(node));
            let world = world.clone();
            admin_tasks.push(tokio::spawn(async move {
                let result = admin.register_projection(request).await;
                let mut w = world.lock().unwrap();
                match result {
                    Ok(_) => {
                        let newest = w.newest_registered.entry(name.into()).or_default();
                        *newest = (*newest).max(version);
                    }
                    // A rebuild took the number first: it names the next free one.
                    Err(status) if status.code() == Code::FailedPrecondition => {
                        if let Some(free) = status
                            .message()
                            .rsplit_once("register version ")
                            .and_then(|(_, n)| n.parse::<u32>().ok())
                        {
                            let next = w.next_version.get_mut(name).unwrap();
                            *next = (*next).max(free);
                        }
                    }
                    Err(status) if transient(&status) => {}
                    Err(status) => {
                        w.finding(format!("register {name} v{version}: {status:?}"));
                    }
                }
            }));
            "register a new version"
        }
        44..=51 => {
            // The same version's handlers again, written differently: the update path, with
            // the same result per event.
            let target = {
                let w = world.lock().unwrap();
                w.newest_registered
                    .get(name)
                    .and_then(|&v| Some((v, *w.weights.get(name)?.get(&v)?)))
            };
            let Some((version, weight)) = target else {
                return "nothing";
            };
            let request = register_toml(&definition(
                name,
                mode,
                version,
                weight,
                1 + rng.below(1000),
            ));
            let mut admin = cluster.admin(cluster.up_node(node));
            let world = world.clone();
            admin_tasks.push(tokio::spawn(async move {
                match admin.register_projection(request).await {
                    Ok(_) => {}
                    Err(status)
                        if transient(&status) || status.code() == Code::FailedPrecondition => {}
                    Err(status) => world
                        .lock()
                        .unwrap()
                        .finding(format!("update {name} v{version}: {status:?}")),
                }
            }));
            "update handlers"
        }
        52..=67 => {
            let strategy = if rng.below(2) == 0 {
                RebuildStrategy::BlueGreen
            } else {
                RebuildStrategy::InPlace
            };
            let mut admin = cluster.admin(cluster.up_node(node));
            let world = world.clone();
            admin_tasks.push(tokio::spawn(async move {
                let request = AdminRebuildRequest {
                    projection: name.into(),
                    strategy: strategy as i32,
                };
                let outcome = async {
                    let mut stream = admin.admin_rebuild(request).await?.into_inner();
                    while let Some(message) = stream.message().await? {
                        let progress = message.progress.unwrap_or_default();
                        // A rebuild stops when a newer version is registered meanwhile, and
                        // when its server stops (SIGTERM), to be resumed by a running one.
                        if progress.phase() == pb::rebuild_progress::Phase::Failed
                            && !progress.error.contains("superseded by a newer version")
                            && !progress.error.contains("the server is stopping")
                        {
                            return Err(tonic::Status::internal(format!(
                                "rebuild failed: {progress:?}"
                            )));
                        }
                    }
                    Ok::<_, tonic::Status>(())
                };
                match tokio::time::timeout(Duration::from_secs(120), outcome).await {
                    Ok(Ok(())) => {}
                    Ok(Err(status))
                        if transient(&status) || status.code() == Code::FailedPrecondition => {}
                    Ok(Err(status)) => world
                        .lock()
                        .unwrap()
                        .finding(format!("rebuild {name} {strategy:?}: {status:?}")),
                    Err(_) => world
                        .lock()
                        .unwrap()
                        .finding(format!("rebuild {name} {strategy:?} ran over 120 s")),
                }
            }));
            if strategy == RebuildStrategy::BlueGreen {
                "rebuild blue/green"
            } else {
                "rebuild in place"
            }
        }
        68..=75 => {
            let stream = {
                let w = world.lock().unwrap();
                w.streams[rng.below(STREAM_SLOTS as u64) as usize].clone()
            };
            let mut client = cluster.client(cluster.up_node(node));
            let world = world.clone();
            admin_tasks.push(tokio::spawn(async move {
                let request = pb::DeleteStreamRequest {
                    stream: stream.clone(),
                    expected: None,
                };
                match client.delete_stream(request).await {
                    Ok(_) => {}
                    Err(status)
                        if transient(&status)
                            || matches!(
                                status.code(),
                                Code::NotFound | Code::FailedPrecondition
                            ) => {}
                    Err(status) => world
                        .lock()
                        .unwrap()
                        .finding(format!("soft delete {stream}: {status:?}")),
                }
            }));
            "soft delete"
        }
        76..=80 => {
            let stream = {
                let mut w = world.lock().unwrap();
                let slot = rng.below(STREAM_SLOTS as u64) as usize;
                let replacement = format!("chaos-{}", w.next_stream);
                w.next_stream += 1;
                let stream = std::mem::replace(&mut w.streams[slot], replacement);
                w.hard_deleted.insert(stream.clone());
                stream
            };
            let mut admin = cluster.admin(cluster.up_node(node));
            let world = world.clone();
            admin_tasks.push(tokio::spawn(async move {
                let request = pb::HardDeleteStreamRequest {
                    stream: stream.clone(),
                    expected: None,
                };
                match admin.hard_delete_stream(request).await {
                    Ok(_) => {}
                    Err(status)
                        if transient(&status)
                            || matches!(
                                status.code(),
                                Code::NotFound | Code::FailedPrecondition
                            ) => {}
                    Err(status) => world
                        .lock()
                        .unwrap()
                        .finding(format!("hard delete {stream}: {status:?}")),
                }
            }));
            "hard delete"
        }
        _ => "nothing",
    }
}

/// One client appending until `stop`: an append with no answer is resent (same ids) until it
/// gets one, so every append ends acknowledged or knowingly refused.
async fn append_loop(
    cluster: Arc<Cluster>,
    world: Shared,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
    appender: u64,
) {
    while !stop.load(Ordering::Relaxed) {
        let stream = {
            let w = world.lock().unwrap();
            w.streams[rng.below(STREAM_SLOTS as u64) as usize].clone()
        };
        let events: Vec<pb::ProposedEvent> = (0..1 + rng.below(4))
            .map(|_| {
                let event_type = if rng.below(10) == 0 { "Other" } else { "Tick" };
                pb::ProposedEvent {
                    id: rng.uuid().to_string(),
                    r#type: event_type.into(),
                    data: format!("{{\"x\":{},\"by\":{appender}}}", 1 + rng.below(100))
                        .into_bytes()
                        .into(),
                    content_type: String::new(),
                    metadata: Default::default(),
                }
            })
            .collect();
        let request = append_request(&stream, None, events.clone());
        let mut node = rng.below(2) as usize;
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut client = cluster.client(node);
            let result = client.append(request.clone()).await;
            match result {
                Ok(response) => {
                    let response = response.into_inner();
                    let acked = Acked {
                        stream: stream.clone(),
                        events,
                        first_position: response.first_position,
                        last_position: response.last_position,
                    };
                    world.lock().unwrap().acked.push(acked);
                    break;
                }
                Err(status)
                    if status.code() == Code::FailedPrecondition
                        && world.lock().unwrap().hard_deleted.contains(&stream) =>
                {
                    break;
                }
                Err(status) if transient(&status) && attempts < 200 => {
                    // No answer: the append may or may not be stored. Resend it, same ids,
                    // through whichever server is up; the server makes it a replay.
                    node = 1 - node;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(status) => {
                    world.lock().unwrap().finding(format!(
                        "append to {stream} (attempt {attempts}): {status:?}"
                    ));
                    break;
                }
            }
        }
    }
}

/// A live subscriber of `$all`, reconnecting after its last position wherever a server is up,
/// until it has reached `target`. Returns every position it received, in order.
async fn subscribe_loop(
    cluster: Arc<Cluster>,
    world: Shared,
    preferred: usize,
    target: Arc<AtomicU64>,
) -> Vec<(u64, String, String)> {
    let mut received: Vec<(u64, String, String)> = Vec::new();
    let mut through = 0u64;
    let mut node = preferred;
    loop {
        if through >= target.load(Ordering::Relaxed) {
            return received;
        }
        let request = pb::SubscribeAllRequest {
            original: false,
            start: Some(Start::AfterPosition(received.last().map_or(0, |e| e.0))),
            filter: None,
            checkpoint_interval: 0,
        };
        let mut client = cluster.client(node);
        let mut stream = match client.subscribe_all(request).await {
            Ok(response) => response.into_inner(),
            Err(_) => {
                node = 1 - node;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        loop {
            let message = tokio::time::timeout(Duration::from_secs(1), stream.message()).await;
            let content = match message {
                Ok(Ok(Some(message))) => message.content,
                Ok(Ok(None)) | Ok(Err(_)) => break,
                Err(_) => {
                    if through >= target.load(Ordering::Relaxed) {
                        return received;
                    }
                    continue;
                }
            };
            match content {
                Some(Content::Event(event)) => {
                    if let Some(&(last, _, _)) = received.last()
                        && event.position <= last
                    {
                        world.lock().unwrap().finding(format!(
                            "a subscriber got position {} after {last}",
                            event.position
                        ));
                    }
                    through = through.max(event.position);
                    received.push((event.position, event.id, event.stream));
                }
                Some(Content::Checkpoint(pb::Checkpoint { position }))
                | Some(Content::CaughtUp(pb::CaughtUp { position })) => {
                    through = through.max(position);
                }
                _ => {}
            }
            if through >= target.load(Ordering::Relaxed) {
                return received;
            }
        }
        node = 1 - node;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until both projections are active with nothing being built, caught up with the log,
/// with no pending skip, and until hard deletes have erased their events.
async fn settle(cluster: &Cluster, world: &Shared) {
    let deadline = Instant::now() + Duration::from_secs(120);
    for (name, _) in PROJECTIONS {
        loop {
            let info = cluster
                .admin(0)
                .get_projection(GetProjectionRequest { name: name.into() })
                .await
                .ok()
                .and_then(|r| r.into_inner().projection);
            // Caught up: no event it handles is left unapplied. Not `applied_position >= head`:
            // an inline version moves its position with the events it handles only, so it stays
            // below the head when the log ends with an event of another type ("Other").
            if let Some(info) = &info
                && info.status == "active"
                && info.building_version == 0
                && info.lag_events == 0
                && info.pending_skips == 0
            {
                let mut w = world.lock().unwrap();
                let newest = w.newest_registered[name];
                if info.active_version < newest {
                    w.finding(format!(
                        "{name}: v{} active although v{newest} was registered: {info:?}",
                        info.active_version
                    ));
                }
                if info.dead_letters > 0 {
                    w.finding(format!("{name}: dead letters: {info:?}"));
                }
                break;
            }
            if Instant::now() > deadline {
                world
                    .lock()
                    .unwrap()
                    .finding(format!("{name} did not settle within 120 s: {info:?}"));
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

fn check_log(world: &Shared, log: &[pb::RecordedEvent]) {
    let mut w = world.lock().unwrap();
    let mut findings = Vec::new();
    for pair in log.windows(2) {
        if pair[1].position <= pair[0].position {
            findings.push(format!(
                "ReadAll: position {} after {}",
                pair[1].position, pair[0].position
            ));
        }
    }
    let mut ids = BTreeSet::new();
    for event in log {
        if !ids.insert(event.id.clone()) {
            findings.push(format!("id {} stored twice", event.id));
        }
        if w.hard_deleted.contains(&event.stream) {
            findings.push(format!(
                "position {} of hard-deleted {} is still in the log",
                event.position, event.stream
            ));
        }
    }
    let by_position: BTreeMap<u64, &pb::RecordedEvent> =
        log.iter().map(|e| (e.position, e)).collect();
    for acked in &w.acked {
        if w.hard_deleted.contains(&acked.stream) {
            continue;
        }
        let count = acked.last_position + 1 - acked.first_position;
        if count != acked.events.len() as u64 {
            findings.push(format!(
                "an append of {} events to {} was given positions {}..={}",
                acked.events.len(),
                acked.stream,
                acked.first_position,
                acked.last_position
            ));
            continue;
        }
        for (offset, proposed) in acked.events.iter().enumerate() {
            let position = acked.first_position + offset as u64;
            match by_position.get(&position) {
                Some(stored)
                    if stored.id == proposed.id
                        && stored.stream == acked.stream
                        && stored.r#type == proposed.r#type
                        && stored.data == proposed.data => {}
                Some(stored) => findings.push(format!(
                    "acknowledged {} at {position} of {} reads as {} of {}",
                    proposed.id, acked.stream, stored.id, stored.stream
                )),
                None => findings.push(format!(
                    "acknowledged {} at {position} of {} is not in the log",
                    proposed.id, acked.stream
                )),
            }
        }
    }
    for finding in findings {
        w.finding(finding);
    }
}

/// A projection row: weight, total, events, sum of positions, last position.
type Row = (i64, i64, i64, i64, i64);

async fn check_projections(database: &TestDatabase, world: &Shared, log: &[pb::RecordedEvent]) {
    let hard_deleted = world.lock().unwrap().hard_deleted.clone();
    // The fold of the log, without a weight: (sum of x, events, sum of positions, last).
    let mut fold: BTreeMap<String, (i64, i64, i64, i64)> = BTreeMap::new();
    for event in log.iter().filter(|e| e.r#type == "Tick") {
        let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
        let entry = fold.entry(event.stream.clone()).or_default();
        entry.0 += data["x"].as_i64().unwrap();
        entry.1 += 1;
        entry.2 += event.position as i64;
        entry.3 = event.position as i64;
    }
    let mut connection = database.connect().await;
    for (name, _) in PROJECTIONS {
        let sql = format!("SELECT k, w, total, events, psum, last FROM projections.{name}");
        let rows: Vec<(String, i64, i64, i64, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .fetch_all(&mut connection)
            .await
            .unwrap();
        let rows: BTreeMap<String, Row> = rows
            .into_iter()
            .filter(|row| !hard_deleted.contains(&row.0))
            .map(|(k, w, total, events, psum, last)| (k, (w, total, events, psum, last)))
            .collect();
        let weights: BTreeSet<i64> = rows.values().map(|row| row.0).collect();
        let mut w = world.lock().unwrap();
        let registered: BTreeSet<i64> = w.weights[name].values().map(|&w| w as i64).collect();
        if weights.len() > 1 || !weights.is_subset(&registered) {
            w.finding(format!(
                "{name}: rows built with weights {weights:?} (registered {registered:?})"
            ));
            continue;
        }
        let weight = weights.first().copied().unwrap_or(1);
        let expected: BTreeMap<String, Row> = fold
            .iter()
            .filter(|(stream, _)| !hard_deleted.contains(*stream))
            .map(|(stream, &(x, events, psum, last))| {
                (stream.clone(), (weight, weight * x, events, psum, last))
            })
            .collect();
        if rows != expected {
            let differing: Vec<String> = expected
                .keys()
                .chain(rows.keys())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .filter(|k| rows.get(*k) != expected.get(*k))
                .map(|k| {
                    format!(
                        "{k}: read model {:?}, fold {:?}",
                        rows.get(k),
                        expected.get(k)
                    )
                })
                .collect();
            w.finding(format!(
                "{name} differs from the fold of the log:\n  {}",
                differing.join("\n  ")
            ));
        }
    }
}

fn check_subscribers(
    world: &Shared,
    log: &[pb::RecordedEvent],
    received: &[Vec<(u64, String, String)>],
) {
    let mut w = world.lock().unwrap();
    let in_log: BTreeMap<u64, &str> = log.iter().map(|e| (e.position, e.id.as_str())).collect();
    let mut findings = Vec::new();
    for (i, positions) in received.iter().enumerate() {
        let got: BTreeMap<u64, (&str, &str)> = positions
            .iter()
            .map(|(p, id, stream)| (*p, (id.as_str(), stream.as_str())))
            .collect();
        let missing: Vec<u64> = in_log
            .keys()
            .filter(|p| !got.contains_key(p))
            .copied()
            .take(10)
            .collect();
        if !missing.is_empty() {
            findings.push(format!("subscriber {i} never got positions {missing:?}"));
        }
        for (position, (id, stream)) in &got {
            match in_log.get(position) {
                Some(stored) if stored == id => {}
                Some(stored) => findings.push(format!(
                    "subscriber {i} got {id} at {position}, the log has {stored}"
                )),
                // What is not in the final log must be an event a hard delete erased since.
                None if w.hard_deleted.contains(*stream) => {}
                None => findings.push(format!(
                    "subscriber {i} got {id} of {stream} at {position}, which is not in the log"
                )),
            }
        }
    }
    for finding in findings {
        w.finding(finding);
    }
}
