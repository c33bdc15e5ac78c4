use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use highwater::pb::{
    self, AdminRebuildRequest, GetProjectionRequest, RebuildStrategy,
    admin_service_client::AdminServiceClient, event_store_service_client::EventStoreServiceClient,
    rebuild_progress::Phase,
};
use sqlx::Connection;
use tonic::{Code, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/projections");

/// A cart row: item count, line count, checked out, last position.
type Cart = (i32, i32, bool, i64);

/// The read model computed independently from the log.
fn fold(log: &[pb::RecordedEvent]) -> BTreeMap<String, Cart> {
    let mut carts: BTreeMap<String, Cart> = BTreeMap::new();
    for event in log {
        let quantity = || {
            let data: serde_json::Value = serde_json::from_slice(&event.data).unwrap();
            data["quantity"].as_i64().unwrap() as i32
        };
        match event.r#type.as_str() {
            "ProductAdded" => {
                let cart = carts
                    .entry(event.stream.clone())
                    .or_insert((0, 0, false, 0));
                cart.0 += quantity();
                cart.1 += 1;
                cart.3 = event.position as i64;
            }
            "ProductRemoved" => {
                if let Some(cart) = carts.get_mut(&event.stream) {
                    cart.0 -= quantity();
                    cart.1 -= 1;
                    cart.3 = event.position as i64;
                }
            }
            "CartCheckedOut" => {
                if let Some(cart) = carts.get_mut(&event.stream) {
                    cart.2 = true;
                    cart.3 = event.position as i64;
                }
            }
            _ => {}
        }
    }
    carts
}

async fn read_model(database: &TestDatabase, relation: &str) -> BTreeMap<String, Cart> {
    let mut connection = database.connect().await;
    let sql = format!(
        "SELECT cart_id, item_count, line_count, checked_out, last_position FROM {relation}"
    );
    let rows: Vec<(String, i32, i32, bool, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .fetch_all(&mut connection)
        .await
        .unwrap();
    connection.close().await.unwrap();
    rows.into_iter()
        .map(|(id, a, b, c, d)| (id, (a, b, c, d)))
        .collect()
}

/// The i-th event for a cart: its first is always ProductAdded.
fn cart_event(i: usize) -> pb::ProposedEvent {
    match i % 5 {
        0 | 1 | 3 => json_event(
            "ProductAdded",
            &format!("{{\"sku\":\"s{i}\",\"quantity\":{}}}", 1 + i % 4),
        ),
        2 => json_event("ProductRemoved", "{\"sku\":\"s\",\"quantity\":1}"),
        _ => json_event("CartCheckedOut", "{}"),
    }
}

/// Appends `appends` events to ten carts of writer `writer`, from index `from`.
async fn append_carts(
    client: &mut EventStoreServiceClient<Channel>,
    writer: usize,
    from: usize,
    appends: usize,
) {
    for i in from..from + appends {
        let cart = format!("cart-{writer}-{}", i % 10);
        client
            .append(append_request(&cart, None, vec![cart_event(i / 10)]))
            .await
            .unwrap();
    }
}

/// Appends from `writers` clients until `stop` is set; returns how many appends were made.
fn append_until(
    endpoint: String,
    writers: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    tokio::spawn(async move {
        let mut tasks = Vec::new();
        for writer in 0..writers {
            let stop = stop.clone();
            let endpoint = endpoint.clone();
            tasks.push(tokio::spawn(async move {
                let mut client = EventStoreServiceClient::connect(endpoint).await.unwrap();
                let mut i = 1000;
                while !stop.load(Ordering::Relaxed) {
                    append_carts(&mut client, 100 + writer, i, 10).await;
                    i += 10;
                }
                i - 1000
            }));
        }
        let mut total = 0;
        for task in tasks {
            total += task.await.unwrap();
        }
        total
    })
}

pub(crate) async fn admin(endpoint: String) -> AdminServiceClient<Channel> {
    AdminServiceClient::connect(endpoint).await.unwrap()
}

pub(crate) async fn projection(
    admin: &mut AdminServiceClient<Channel>,
    name: &str,
) -> pb::ProjectionInfo {
    admin
        .get_projection(GetProjectionRequest { name: name.into() })
        .await
        .unwrap()
        .into_inner()
        .projection
        .expect("a projection")
}

pub(crate) async fn wait_active(
    admin: &mut AdminServiceClient<Channel>,
    name: &str,
    version: u32,
    within: Duration,
) -> pb::ProjectionInfo {
    let deadline = Instant::now() + within;
    loop {
        let info = projection(admin, name).await;
        if info.active_version == version && info.status == "active" && info.building_version == 0 {
            return info;
        }
        assert!(
            Instant::now() < deadline,
            "{name} v{version} not active: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Runs a rebuild to its end; returns every progress message.
pub(crate) async fn rebuild(
    admin: &mut AdminServiceClient<Channel>,
    name: &str,
    strategy: RebuildStrategy,
) -> Vec<pb::RebuildProgress> {
    let request = AdminRebuildRequest {
        projection: name.into(),
        strategy: strategy as i32,
    };
    let mut stream = admin.admin_rebuild(request).await.unwrap().into_inner();
    let mut all = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        all.push(message.progress.expect("progress"));
    }
    all
}

#[tokio::test]
async fn an_inline_projection_equals_the_fold_of_the_log_after_concurrent_appends() {
    let mut app = TestApp::spawn_with(&["--projections", EXAMPLES]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;

    let mut tasks = Vec::new();
    for writer in 0..6 {
        let mut client = app.server.client().await;
        tasks.push(tokio::spawn(async move {
            append_carts(&mut client, writer, 0, 300).await
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let log = app.read_all().await;
    assert_eq!(log.len(), 1800);
    let model = read_model(&app.database, "projections.cart_summary").await;
    assert_eq!(model, fold(&log));
    let info = projection(&mut admin, "cart_summary").await;
    assert_eq!(
        (info.applied_position, info.lag_events, info.pending_skips),
        (1800, 0, 0)
    );
}

#[tokio::test]
async fn concurrent_rebuild_calls_on_one_server_watch_one_rebuild() {
    let mut app = TestApp::spawn_with(&["--projections", EXAMPLES]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;
    append_carts(&mut app.client, 0, 0, 50).await;

    let callers: Vec<_> = (0..4)
        .map(|_| {
            let endpoint = app.server.endpoint();
            tokio::spawn(async move {
                let mut caller = AdminServiceClient::connect(endpoint).await.unwrap();
                rebuild(&mut caller, "cart_summary", RebuildStrategy::BlueGreen).await
            })
        })
        .collect();
    let all = futures::future::join_all(callers).await;
    for progress in all {
        let progress = progress.unwrap();
        let last = progress.last().unwrap();
        assert_eq!(last.phase(), Phase::Done, "{progress:?}");
        assert_eq!(last.version, 2, "one rebuild, to version 2: {progress:?}");
        // The version is 0 until chosen, then the one being built: never the active one.
        assert!(
            progress.iter().all(|p| p.version == 0 || p.version == 2),
            "{progress:?}"
        );
    }
    let info = projection(&mut admin, "cart_summary").await;
    assert_eq!(info.active_version, 2);
}

#[tokio::test]
async fn a_blue_green_rebuild_under_appends_never_empties_the_view() {
    let mut app =
        TestApp::spawn_with(&["--projections", EXAMPLES, "--projection-batch-size", "200"]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;
    let mut client = app.server.client().await;
    for writer in 0..4 {
        append_carts(&mut client, writer, 0, 500).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let appending = append_until(app.server.endpoint(), 3, stop.clone());
    // A reader that checks the view all along.
    let reading = {
        let stop = stop.clone();
        let url = app.database.url.clone();
        tokio::spawn(async move {
            let mut connection = sqlx::PgConnection::connect(&url).await.unwrap();
            let mut reads = 0;
            while !stop.load(Ordering::Relaxed) {
                let count: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM projections.cart_summary")
                        .fetch_one(&mut connection)
                        .await
                        .expect("the view answers during the rebuild");
                assert!(count >= 40, "the view showed {count} carts");
                reads += 1;
            }
            reads
        })
    };
    let progress = rebuild(&mut admin, "cart_summary", RebuildStrategy::BlueGreen).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    stop.store(true, Ordering::Relaxed);
    let appended_during = appending.await.unwrap();
    let reads = reading.await.unwrap();
    assert!(appended_during > 0 && reads > 0);

    let last = progress.last().unwrap();
    assert_eq!(last.phase(), Phase::Done, "{last:?}");
    assert_eq!(last.version, 2);
    let phases: Vec<Phase> = progress.iter().map(|p| p.phase()).collect();
    assert!(
        phases.contains(&Phase::Backfilling) && phases.contains(&Phase::CuttingOver),
        "{phases:?}"
    );

    let log = app.read_all().await;
    assert_eq!(
        read_model(&app.database, "projections.cart_summary").await,
        fold(&log)
    );
    assert_eq!(
        read_model(&app.database, "projection_cart_summary.v2").await,
        fold(&log)
    );
    let info = projection(&mut admin, "cart_summary").await;
    assert_eq!(info.active_version, 2);
    let statuses: Vec<(u32, &str)> = info
        .versions
        .iter()
        .map(|v| (v.version, v.status.as_str()))
        .collect();
    assert_eq!(statuses, [(2, "active"), (1, "retired")]);
}

#[tokio::test]
async fn an_in_place_rebuild_under_appends_records_and_replays_skips() {
    let mut app =
        TestApp::spawn_with(&["--projections", EXAMPLES, "--projection-batch-size", "100"]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;
    let mut client = app.server.client().await;
    for writer in 0..4 {
        append_carts(&mut client, writer, 0, 500).await;
    }

    let stop = Arc::new(AtomicBool::new(false));
    let appending = append_until(app.server.endpoint(), 3, stop.clone());
    tokio::time::sleep(Duration::from_millis(100)).await;
    let progress = rebuild(&mut admin, "cart_summary", RebuildStrategy::InPlace).await;
    stop.store(true, Ordering::Relaxed);
    assert!(appending.await.unwrap() > 0);

    let last = progress.last().unwrap();
    assert_eq!(last.phase(), Phase::Done, "{last:?}");
    assert_eq!(last.version, 1);
    assert!(progress.iter().any(|p| p.phase() == Phase::ReplayingSkips));
    let info = projection(&mut admin, "cart_summary").await;
    assert_eq!(info.pending_skips, 0, "no skip is left pending");
    assert!(
        info.archived_skips > 0,
        "appends during the rebuild recorded skips"
    );
    assert_eq!(last.skips_replayed, info.archived_skips);

    let log = app.read_all().await;
    assert_eq!(
        read_model(&app.database, "projections.cart_summary").await,
        fold(&log)
    );
    let messages = admin
        .list_system_messages(pb::ListSystemMessagesRequest {
            projection: "cart_summary".into(),
            kind: "skip".into(),
            include_archived: true,
            limit: 5,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert!(!messages.is_empty() && messages.iter().all(|m| m.archived_at.is_some()));
}

#[tokio::test]
async fn two_rebuilds_at_once_through_two_servers_one_runs_the_other_is_refused() {
    let slow = [
        "--projections",
        EXAMPLES,
        "--projection-batch-size",
        "50",
        "--rebuild-batch-pause-ms",
        "20",
    ];
    let mut args_a = slow.to_vec();
    args_a.extend(["--node-name", "node-a"]);
    let mut app = TestApp::spawn_with(&args_a).await;
    let mut args_b = slow.to_vec();
    args_b.extend(["--node-name", "node-b"]);
    let b = RunningServer::start(config_for(&app.database.url, &args_b)).await;
    b.wait_for_health(
        tonic_health::pb::health_check_response::ServingStatus::Serving,
        Duration::from_secs(30),
    )
    .await;
    let mut admin_a = admin(app.server.endpoint()).await;
    wait_active(&mut admin_a, "cart_summary", 1, Duration::from_secs(10)).await;
    append_carts(&mut app.client, 0, 0, 1000).await;

    let mut admin_b = admin(b.endpoint()).await;
    let request = || AdminRebuildRequest {
        projection: "cart_summary".into(),
        strategy: RebuildStrategy::BlueGreen as i32,
    };
    let (first, second) = tokio::join!(
        admin_a.admin_rebuild(request()),
        admin_b.admin_rebuild(request())
    );
    let (winner, refused, owner) = match (first, second) {
        (Ok(stream), Err(status)) => (stream, status, "node-a"),
        (Err(status), Ok(stream)) => (stream, status, "node-b"),
        (a, b) => panic!(
            "exactly one rebuild runs: {:?} / {:?}",
            a.map(|_| ()),
            b.map(|_| ())
        ),
    };
    assert_eq!(refused.code(), Code::FailedPrecondition);
    assert!(
        refused.message().contains(owner),
        "names the owner: {}",
        refused.message()
    );
    let mut stream = winner.into_inner();
    let mut last = None;
    while let Some(message) = stream.message().await.unwrap() {
        last = message.progress;
    }
    assert_eq!(last.unwrap().phase(), Phase::Done);
    let log = app.read_all().await;
    assert_eq!(
        read_model(&app.database, "projections.cart_summary").await,
        fold(&log)
    );
}

#[tokio::test]
async fn a_failing_inline_handler_fails_the_append_and_bad_definitions_are_rejected() {
    let mut app = TestApp::spawn_with(&["--projections", EXAMPLES]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;

    // quantity is not a number: the handler's cast fails, so the append fails and writes nothing.
    let status = app
        .append(append_request(
            "cart-x",
            None,
            vec![json_event("ProductAdded", "{\"quantity\":\"many\"}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().contains("cart_summary")
            && status.message().contains("ProductAdded")
            && status.message().contains("invalid input syntax"),
        "{}",
        status.message()
    );
    assert!(app.read_all().await.is_empty());

    let register = |toml: &str| pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    };
    let setup_fails = "name = \"bad\"\nmode = \"inline\"\nsetup = \"CREATE TABLE {{table}} (x nonsense_type)\"\n[handlers]\nE = \"SELECT 1\"\n";
    let status = admin
        .register_projection(register(setup_fails))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("api")
            && status.message().contains("setup")
            && status.message().contains("nonsense_type"),
        "{}",
        status.message()
    );

    let handler_fails = "name = \"bad\"\nmode = \"inline\"\nsetup = \"CREATE TABLE {{table}} (x int)\"\n[handlers]\nE = \"UPDATE {{table}} SET y = 1\"\n";
    let status = admin
        .register_projection(register(handler_fails))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("handler E") && status.message().contains("\"y\""),
        "{}",
        status.message()
    );

    let malformed = "name = \"bad\"\nmode = \"sometimes\"\n";
    let status = admin
        .register_projection(register(malformed))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = admin
        .get_projection(GetProjectionRequest { name: "bad".into() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
}

const COUNTER_V1: &str = r#"
name = "counter"
mode = "async"
on_error = "skip"
setup = "CREATE TABLE {{table}} (stream text PRIMARY KEY, total bigint NOT NULL)"
[handlers]
Counted = """
INSERT INTO {{table}} AS c VALUES ($stream, ($data->>'n')::int)
ON CONFLICT (stream) DO UPDATE SET total = c.total + EXCLUDED.total
"""
"#;

#[tokio::test]
async fn an_async_projection_catches_up_dead_letters_a_poison_event_and_retries_it_once_fixed() {
    // No polling to fall back on: the worker starts because the catalog change is notified.
    let mut app = TestApp::spawn_with(&["--projection-supervise-ms", "600000"]).await;
    let mut admin = admin(app.server.endpoint()).await;
    for i in 1..=200 {
        app.append(append_request(
            "counter-a",
            None,
            vec![json_event("Counted", &format!("{{\"n\":{i}}}"))],
        ))
        .await
        .unwrap();
    }
    let register = |toml: &str| pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    };
    admin
        .register_projection(register(COUNTER_V1))
        .await
        .unwrap();
    wait_active(&mut admin, "counter", 1, Duration::from_secs(10)).await;

    // Live appends, one of them poison.
    app.append(append_request(
        "counter-a",
        None,
        vec![json_event("Counted", "{\"n\":\"seven\"}")],
    ))
    .await
    .unwrap();
    for _ in 0..10 {
        app.append(append_request(
            "counter-b",
            None,
            vec![json_event("Counted", "{\"n\":1}")],
        ))
        .await
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let info = loop {
        let info = projection(&mut admin, "counter").await;
        if info.lag_events == 0 && info.dead_letters == 1 {
            break info;
        }
        assert!(
            Instant::now() < deadline,
            "async projection did not catch up: {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(info.applied_position, info.head);
    let totals = |rows: Vec<(String, i64)>| rows.into_iter().collect::<BTreeMap<_, _>>();
    let mut connection = app.database.connect().await;
    let model = totals(
        sqlx::query_as("SELECT stream, total FROM projections.counter")
            .fetch_all(&mut connection)
            .await
            .unwrap(),
    );
    assert_eq!(
        model,
        BTreeMap::from([
            ("counter-a".to_string(), 20100),
            ("counter-b".to_string(), 10)
        ])
    );
    let letters = admin
        .list_system_messages(pb::ListSystemMessagesRequest {
            projection: "counter".into(),
            kind: "dead_letter".into(),
            include_archived: false,
            limit: 0,
        })
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].position, 201);
    assert!(
        letters[0].reason.contains("invalid input syntax"),
        "{}",
        letters[0].reason
    );

    // Fix the handler (same version, same setup): words count as 7, then retry.
    let fixed = COUNTER_V1.replace(
        "($data->>'n')::int",
        "(CASE WHEN $data->>'n' = 'seven' THEN 7 ELSE ($data->>'n')::int END)",
    );
    admin.register_projection(register(&fixed)).await.unwrap();
    let retried = admin
        .retry_dead_letters(pb::RetryDeadLettersRequest {
            projection: "counter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retried.applied, retried.still_failing), (1, 0));
    let model = totals(
        sqlx::query_as("SELECT stream, total FROM projections.counter")
            .fetch_all(&mut connection)
            .await
            .unwrap(),
    );
    assert_eq!(model["counter-a"], 20107);
    assert_eq!(projection(&mut admin, "counter").await.dead_letters, 0);
}

/// A server process of the built binary on the test database.
fn server_process(database_url: &str, port: u16, node: &str) -> std::process::Child {
    highwater_blocking()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--database-url",
            database_url,
        ])
        .args(["--projections", EXAMPLES, "--node-name", node])
        .args([
            "--projection-batch-size",
            "50",
            "--rebuild-batch-pause-ms",
            "10",
        ])
        .args([
            "--rebuild-heartbeat-timeout-ms",
            "1500",
            "--projection-supervise-ms",
            "200",
        ])
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start highwater")
}

async fn wait_serving(endpoint: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(mut admin) = AdminServiceClient::connect(endpoint.to_string()).await
            && admin
                .list_projections(pb::ListProjectionsRequest {})
                .await
                .is_ok()
        {
            return;
        }
        assert!(Instant::now() < deadline, "{endpoint} did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn a_rebuild_whose_process_is_killed_is_resumed_by_another_process() {
    let database = TestDatabase::new();
    let (port_a, port_b) = (free_port(), free_port());
    let (endpoint_a, endpoint_b) = (
        format!("http://127.0.0.1:{port_a}"),
        format!("http://127.0.0.1:{port_b}"),
    );
    let mut a = server_process(&database.url, port_a, "node-a");
    wait_serving(&endpoint_a).await;
    let mut admin_a = admin(endpoint_a.clone()).await;
    wait_active(&mut admin_a, "cart_summary", 1, Duration::from_secs(10)).await;
    let mut client = EventStoreServiceClient::connect(endpoint_a.clone())
        .await
        .unwrap();
    for cart in 0..40 {
        for batch in 0..10 {
            let events = (batch * 10..batch * 10 + 10).map(cart_event).collect();
            client
                .append(append_request(&format!("cart-{cart}"), None, events))
                .await
                .unwrap();
        }
    }
    let mut b = server_process(&database.url, port_b, "node-b");
    wait_serving(&endpoint_b).await;

    let request = AdminRebuildRequest {
        projection: "cart_summary".into(),
        strategy: RebuildStrategy::BlueGreen as i32,
    };
    let mut progress = admin_a.admin_rebuild(request).await.unwrap().into_inner();
    loop {
        let message = progress
            .message()
            .await
            .unwrap()
            .expect("progress until killed")
            .progress
            .expect("progress");
        assert_ne!(
            message.phase(),
            Phase::Done,
            "the rebuild finished before it could be killed"
        );
        if message.position >= 500 {
            break;
        }
    }
    a.kill().unwrap(); // SIGKILL: no cleanup, the rebuild's connection just drops
    a.wait().unwrap();

    let mut admin_b = admin(endpoint_b.clone()).await;
    let interrupted = projection(&mut admin_b, "cart_summary").await;
    let building = interrupted
        .versions
        .iter()
        .find(|v| v.version == 2)
        .expect("version 2 exists");
    assert!(
        building.applied_position >= 500,
        "the killed rebuild committed its batches: {building:?}"
    );
    assert_eq!(building.rebuild_owner, "node-a");

    let info = wait_active(&mut admin_b, "cart_summary", 2, Duration::from_secs(60)).await;
    assert_eq!(
        info.versions[0].rebuild_owner, "node-b",
        "node-b took the rebuild over"
    );
    let mut client = EventStoreServiceClient::connect(endpoint_b).await.unwrap();
    let log = read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(log.len(), 4000);
    assert_eq!(
        read_model(&database, "projections.cart_summary").await,
        fold(&log)
    );
    b.kill().unwrap();
    b.wait().unwrap();
}

#[tokio::test]
async fn a_hard_deleted_stream_stays_in_a_read_model_until_it_is_rebuilt() {
    let mut app = TestApp::spawn_with(&["--projections", EXAMPLES]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;
    append_carts(&mut app.client, 0, 0, 40).await;
    let before = read_model(&app.database, "projections.cart_summary").await;
    assert!(before.contains_key("cart-0-3"), "{before:?}");

    admin
        .hard_delete_stream(pb::HardDeleteStreamRequest {
            stream: "cart-0-3".into(),
            expected: None,
        })
        .await
        .unwrap();
    let log = app.read_all().await;
    assert!(log.iter().all(|e| e.stream != "cart-0-3"));
    // What the projection applied stays...
    assert_eq!(
        read_model(&app.database, "projections.cart_summary").await,
        before
    );
    // ...until a rebuild folds the log as it is now.
    rebuild(&mut admin, "cart_summary", RebuildStrategy::BlueGreen).await;
    let rebuilt = read_model(&app.database, "projections.cart_summary").await;
    assert!(!rebuilt.contains_key("cart-0-3"), "{rebuilt:?}");
    assert_eq!(rebuilt, fold(&log));
}

/// An in-place rebuild applies every event again, the dead-lettered ones included (with the
/// handlers of that time), so the version's pending dead letters are archived when it starts: a
/// RetryDeadLetters afterwards has nothing to apply twice. The oracle is the fold of the log.
#[tokio::test]
async fn retrying_dead_letters_after_an_in_place_rebuild_applies_nothing_twice() {
    let register = |toml: &str| pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    };
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    let inline = COUNTER_V1.replace("mode = \"async\"", "mode = \"inline\"");
    admin.register_projection(register(&inline)).await.unwrap();
    wait_active(&mut admin, "counter", 1, Duration::from_secs(10)).await;
    for n in ["1", "2", "\"seven\"", "3"] {
        app.append(append_request(
            "r-a",
            None,
            vec![json_event("Counted", &format!(r#"{{"n":{n}}}"#))],
        ))
        .await
        .unwrap();
    }
    assert_eq!(projection(&mut admin, "counter").await.dead_letters, 1);

    let fixed = inline.replace(
        "($data->>'n')::int",
        "(CASE WHEN $data->>'n' = 'seven' THEN 7 ELSE ($data->>'n')::int END)",
    );
    admin.register_projection(register(&fixed)).await.unwrap();
    let progress = rebuild(&mut admin, "counter", RebuildStrategy::InPlace).await;
    assert_eq!(
        progress.last().unwrap().phase(),
        Phase::Done,
        "{progress:?}"
    );
    assert_eq!(projection(&mut admin, "counter").await.dead_letters, 0);

    let retried = admin
        .retry_dead_letters(pb::RetryDeadLettersRequest {
            projection: "counter".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((retried.applied, retried.still_failing), (0, 0));
    let mut connection = app.database.connect().await;
    let total: i64 =
        sqlx::query_scalar("SELECT total FROM projections.counter WHERE stream = 'r-a'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
    assert_eq!(total, 1 + 2 + 7 + 3, "each event applied once");
}

/// A rebuild in place that fails leaves the version failed at the batch it reached, while
/// appends record skips. Registering fixed handlers resumes the rebuild from there (before, it
/// made the version active as it stood: the inline claim jumped over the gap, and the skips
/// stayed pending for ever). The oracle is the fold of the log.
#[tokio::test]
async fn fixing_a_failed_in_place_rebuild_resumes_it_and_leaves_no_gap() {
    let register = |toml: &str| pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    };
    let mut app = TestApp::spawn_with(&["--projection-batch-size", "10"]).await;
    let mut admin = admin(app.server.endpoint()).await;
    let definition = |n_expression: &str| {
        COUNTER_V1
            .replace("mode = \"async\"", "mode = \"inline\"")
            .replace("on_error = \"skip\"", "on_error = \"fail\"")
            .replace("($data->>'n')::int", n_expression)
    };
    admin
        .register_projection(register(&definition("($data->>'n')::int")))
        .await
        .unwrap();
    wait_active(&mut admin, "counter", 1, Duration::from_secs(10)).await;
    let append = async |app: &mut TestApp, n: i64| {
        app.append(append_request(
            &format!("g-{}", n % 3),
            None,
            vec![json_event("Counted", &format!(r#"{{"n":{n}}}"#))],
        ))
        .await
        .unwrap();
    };
    for n in 1..=30 {
        append(&mut app, n).await;
    }

    // Handlers that fail on the event with n = 25: the rebuild in place fails past its first
    // batches.
    admin
        .register_projection(register(&definition(
            "(($data->>'n')::int + 0 / (($data->>'n')::int - 25))",
        )))
        .await
        .unwrap();
    let progress = rebuild(&mut admin, "counter", RebuildStrategy::InPlace).await;
    assert_eq!(
        progress.last().unwrap().phase(),
        Phase::Failed,
        "{progress:?}"
    );
    let failed = projection(&mut admin, "counter").await;
    assert!(
        failed.applied_position > 0 && failed.applied_position < 30,
        "{failed:?}"
    );
    // Appends meanwhile record skips.
    for n in 31..=36 {
        append(&mut app, n).await;
    }

    admin
        .register_projection(register(&definition("($data->>'n')::int")))
        .await
        .unwrap();
    let mut connection = app.database.connect().await;
    let expected: Vec<(String, i64)> = sqlx::query_as(
        "SELECT stream, sum((convert_from(data, 'UTF8')::jsonb->>'n')::bigint)::bigint
           FROM events GROUP BY stream ORDER BY stream",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let model: Vec<(String, i64)> =
            sqlx::query_as("SELECT stream, total FROM projections.counter ORDER BY stream")
                .fetch_all(&mut connection)
                .await
                .unwrap();
        let pending: i64 =
            sqlx::query_scalar("SELECT count(*) FROM system_messages WHERE archived_at IS NULL")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        let info = projection(&mut admin, "counter").await;
        if model == expected && pending == 0 && info.status == "active" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "model {model:?}, fold {expected:?}, pending messages {pending}, {info:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And appends apply inline again.
    append(&mut app, 37).await;
    let total: i64 = sqlx::query_scalar("SELECT sum(total)::bigint FROM projections.counter")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(total, (1..=37).sum::<i64>());
}

fn tally(version: u32, weight: u32) -> String {
    format!(
        r#"
name = "tally"
version = {version}
mode = "inline"
setup = "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY, n bigint NOT NULL)"
[handlers]
Counted = "INSERT INTO {{{{table}}}} VALUES ($stream, {weight}) ON CONFLICT (k) DO UPDATE SET n = {{{{table}}}}.n + {weight}"
"#
    )
}

/// A registration of the definition in `toml`.
pub(crate) fn register_toml(toml: &str) -> pb::RegisterProjectionRequest {
    pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    }
}

/// A version number means one definition: after AdminRebuild made version 2 as a copy of
/// version 1, registering other handlers as version 2 is refused (it would swap the copy's
/// handlers without a rebuild) and names the next free number, which then builds.
#[tokio::test]
async fn a_version_number_made_by_a_rebuild_is_not_taken_by_other_handlers() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_projection(register_toml(&tally(1, 1)))
        .await
        .unwrap();
    wait_active(&mut admin, "tally", 1, Duration::from_secs(10)).await;
    for _ in 0..3 {
        app.append(append_request("x", None, vec![json_event("Counted", "{}")]))
            .await
            .unwrap();
    }
    let progress = rebuild(&mut admin, "tally", RebuildStrategy::BlueGreen).await;
    assert_eq!(progress.last().unwrap().phase(), Phase::Done);
    assert_eq!(projection(&mut admin, "tally").await.active_version, 2);

    let refused = admin
        .register_projection(register_toml(&tally(2, 10)))
        .await
        .expect_err("version 2 is the rebuild's copy of version 1");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("register version 3"),
        "{refused:?}"
    );

    admin
        .register_projection(register_toml(&tally(3, 10)))
        .await
        .unwrap();
    wait_active(&mut admin, "tally", 3, Duration::from_secs(20)).await;
    let mut connection = app.database.connect().await;
    let n: i64 = sqlx::query_scalar("SELECT n FROM projections.tally WHERE k = 'x'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(n, 30, "version 3's handlers over the whole log");
}

/// Versions only move forward: versions 2 and 3 registered while a rebuild holds the
/// projection's rebuild lock; version 2, superseded, is never built, and version 3 stays active
/// (before, version 2 could be built last and replace version 3).
#[tokio::test]
async fn an_older_pending_version_never_replaces_a_newer_one() {
    let mut app = TestApp::spawn_with(&["--projection-supervise-ms", "100"]).await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_projection(register_toml(&tally(1, 1)))
        .await
        .unwrap();
    wait_active(&mut admin, "tally", 1, Duration::from_secs(10)).await;
    app.append(append_request("x", None, vec![json_event("Counted", "{}")]))
        .await
        .unwrap();

    // Another rebuild holds the lock: registrations store their versions and leave the build.
    let mut holder = app.database.connect().await;
    sqlx::query("SELECT pg_advisory_lock($1)")
        .bind(highwater_core::projection::keys::rebuild_key("tally"))
        .execute(&mut holder)
        .await
        .unwrap();
    admin
        .register_projection(register_toml(&tally(2, 10)))
        .await
        .unwrap();
    admin
        .register_projection(register_toml(&tally(3, 100)))
        .await
        .unwrap();
    sqlx::query("SELECT pg_advisory_unlock_all()")
        .execute(&mut holder)
        .await
        .unwrap();

    wait_active(&mut admin, "tally", 3, Duration::from_secs(20)).await;
    // Give the supervisor time to build anything still pending.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let info = projection(&mut admin, "tally").await;
    assert_eq!(info.active_version, 3, "{info:?}");
    let v2 = info.versions.iter().find(|v| v.version == 2).unwrap();
    assert_eq!(v2.status, "retired", "{info:?}");
    let mut connection = app.database.connect().await;
    let n: i64 = sqlx::query_scalar("SELECT n FROM projections.tally WHERE k = 'x'")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(n, 100);
}

/// A rebuild is a task of the server: when the server stops, the rebuild stops at its next batch
/// (its connection, and with it the rebuild lock, closed before `run_until_stopped` returns),
/// its caller is told why, and the version is left to be resumed, not failed. A server started
/// afterwards resumes it from its last batch once the heartbeat is stale. Before, the rebuild
/// ran on, detached, after its server had stopped.
#[tokio::test]
async fn a_rebuild_running_at_shutdown_stops_with_its_server_and_is_resumed_after() {
    let flags = [
        "--projections",
        EXAMPLES,
        "--projection-batch-size",
        "20",
        "--rebuild-batch-pause-ms",
        "10",
        "--rebuild-heartbeat-timeout-ms",
        "1000",
        "--projection-supervise-ms",
        "200",
    ];
    let mut app = TestApp::spawn_with(&flags).await;
    let mut first = admin(app.server.endpoint()).await;
    wait_active(&mut first, "cart_summary", 1, Duration::from_secs(10)).await;
    for cart in 0..20 {
        for batch in 0..10 {
            let events = (batch * 10..batch * 10 + 10).map(cart_event).collect();
            app.append(append_request(&format!("cart-{cart}"), None, events))
                .await
                .unwrap();
        }
    }
    let request = AdminRebuildRequest {
        projection: "cart_summary".into(),
        strategy: RebuildStrategy::BlueGreen as i32,
    };
    let mut progress = first.admin_rebuild(request).await.unwrap().into_inner();
    loop {
        let message = progress
            .message()
            .await
            .unwrap()
            .expect("progress until the stop")
            .progress
            .expect("progress");
        assert_ne!(message.phase(), Phase::Done, "finished before the stop");
        if message.position >= 200 {
            break;
        }
    }

    let (server, database) = app.into_server();
    server.stop().await.expect("graceful stop");
    let mut last = None;
    while let Ok(Some(message)) = progress.message().await {
        last = message.progress;
    }
    let last = last.expect("a last progress message");
    assert_eq!(last.phase(), Phase::Failed, "{last:?}");
    assert!(last.error.contains("stopping"), "{last:?}");

    // Nothing of the rebuild runs once its server has stopped.
    let mut connection = database.connect().await;
    let rebuild_connections: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity
          WHERE datname = current_database() AND application_name LIKE 'highwater-rebuild%'",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert_eq!(rebuild_connections, 0, "a rebuild outlived its server");
    let (status, applied): (String, i64) = sqlx::query_as(
        "SELECT status, applied_position FROM projection_versions
          WHERE name = 'cart_summary' AND version = 2",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let applied_later: i64 = sqlx::query_scalar(
        "SELECT applied_position FROM projection_versions
          WHERE name = 'cart_summary' AND version = 2",
    )
    .fetch_one(&mut connection)
    .await
    .unwrap();
    assert_eq!(status, "building", "the version is left to be resumed");
    assert!((200..2000).contains(&applied), "stopped partway: {applied}");
    assert_eq!(applied_later, applied, "no batch after the stop");

    let server = RunningServer::start(config_for(&database.url, &flags)).await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let mut resumed = admin(server.endpoint()).await;
    wait_active(&mut resumed, "cart_summary", 2, Duration::from_secs(60)).await;
    let mut client = server.client().await;
    let log = read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(log.len(), 2000);
    assert_eq!(
        read_model(&database, "projections.cart_summary").await,
        fold(&log)
    );
}

/// A projection's name becomes part of SQL identifiers (`projection_<name>.v<N>`), so a name
/// that is not a lowercase identifier is refused however the definition arrives (a protobuf
/// definition or TOML): INVALID_ARGUMENT naming the field, and nothing registered.
#[tokio::test]
async fn a_name_that_is_not_an_identifier_is_refused_from_either_source() {
    use tonic_types::StatusExt;

    let app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    for name in ["Cart", "a;drop table events", "x-y", ""] {
        let definition = pb::ProjectionDefinition {
            name: name.into(),
            version: 1,
            mode: pb::ProjectionMode::Inline as i32,
            on_error: pb::OnError::Fail as i32,
            setup: "CREATE TABLE {{table}} (k text)".into(),
            handlers: [("E".to_string(), "SELECT 1".to_string())].into(),
        };
        let status = admin
            .register_projection(pb::RegisterProjectionRequest {
                source: Some(pb::register_projection_request::Source::Definition(
                    definition,
                )),
            })
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}: {status:?}");
        let fields: Vec<String> = status
            .get_details_bad_request()
            .expect("a BadRequest detail")
            .field_violations
            .into_iter()
            .map(|violation| violation.field)
            .collect();
        assert_eq!(fields, ["name"], "{name:?}");

        let toml = format!(
            "name = {name:?}\nmode = \"inline\"\nsetup = \"CREATE TABLE {{{{table}}}} (k text)\"\n[handlers]\nE = \"SELECT 1\"\n"
        );
        let status = admin
            .register_projection(register_toml(&toml))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}: {status:?}");
        assert!(status.message().contains("lowercase letters"), "{status:?}");
    }
    let listed = admin
        .list_projections(pb::ListProjectionsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(listed.projections.is_empty(), "{listed:?}");
}
