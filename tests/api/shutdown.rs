//! Shutdown is bounded and leaves nothing running (docs/ARCHITECTURE.md, "Tasks and shutdown"):
//! whatever the database does, `run_until_stopped` returns within twice the grace period, and
//! once it has returned no task of the server still works on the database or listens.

use std::time::{Duration, Instant};

use highwater::pb;
use sqlx::Connection;

use crate::{
    helpers::*,
    projection::{admin, wait_active},
};

/// The writer is stuck in the database (another session holds `log_head`, so the append it is
/// writing waits for the lock): the stop still returns within twice the grace period. Before,
/// it waited for the writer without a bound, for as long as the database kept the lock.
#[tokio::test]
async fn stopping_takes_at_most_twice_the_grace_when_the_writer_is_stuck_in_the_database() {
    let app = TestApp::spawn_configured(
        |settings| settings.shutdown_grace = Duration::from_secs(1),
        &[],
    )
    .await;
    let mut blocker = app.database.connect().await;
    sqlx::query("BEGIN").execute(&mut blocker).await.unwrap();
    sqlx::query("SELECT * FROM log_head FOR UPDATE")
        .execute(&mut blocker)
        .await
        .unwrap();
    let mut client = app.client.clone();
    let append = tokio::spawn(async move {
        client
            .append(append_request("stuck", None, vec![json_event("E", "{}")]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    let (server, database) = app.into_server();
    let started = Instant::now();
    let stopped = tokio::time::timeout(Duration::from_secs(20), server.stop()).await;
    let took = started.elapsed();
    sqlx::query("ROLLBACK").execute(&mut blocker).await.unwrap();
    assert!(stopped.is_ok(), "the stop did not return within 20 s");
    assert!(
        took < Duration::from_secs(5),
        "the stop took {took:?} with a grace of 1 s"
    );
    // Acknowledged only if written: once the lock is released the abandoned writer may still
    // commit it (in a test the runtime outlives the server; a process would have exited).
    if append.await.unwrap().is_ok() {
        let mut connection = database.connect().await;
        let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream = 'stuck'")
            .fetch_one(&mut connection)
            .await
            .unwrap();
        assert_eq!(stored, 1);
    }
}

fn counting_async_projection() -> pb::RegisterProjectionRequest {
    let toml = r#"
name = "tally"
mode = "async"
setup = "CREATE TABLE {{table}} (k text PRIMARY KEY, n bigint NOT NULL)"
[handlers]
Counted = "INSERT INTO {{table}} VALUES ($stream, 1) ON CONFLICT (k) DO UPDATE SET n = {{table}}.n + 1"
"#;
    pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    }
}

/// An async projection with a backlog stops between batches when its server stops. Before, its
/// worker went on from batch to batch (it looked at the stop only when caught up), writing to
/// the database after `run_until_stopped` had returned.
#[tokio::test]
async fn an_async_worker_with_a_backlog_stops_with_its_server() {
    let mut app = TestApp::spawn_configured(
        |settings| {
            settings.shutdown_grace = Duration::from_secs(1);
            settings.projection.batch_size = 1;
        },
        &[],
    )
    .await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_projection(counting_async_projection())
        .await
        .unwrap();
    wait_active(&mut admin, "tally", 1, Duration::from_secs(20)).await;
    for batch in 0..10 {
        let events = (0..1000).map(|_| json_event("Counted", "{}")).collect();
        app.append(append_request(&format!("c-{batch}"), None, events))
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(admin);

    let (server, database) = app.into_server();
    server.stop().await.expect("graceful stop");
    let mut connection = database.connect().await;
    let applied = "SELECT applied_position FROM projection_versions WHERE name = 'tally'";
    let before: i64 = sqlx::query_scalar(applied)
        .fetch_one(&mut connection)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after: i64 = sqlx::query_scalar(applied)
        .fetch_one(&mut connection)
        .await
        .unwrap();
    let others: Vec<String> = sqlx::query_scalar(
        "SELECT application_name FROM pg_stat_activity
          WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    connection.close().await.unwrap();
    assert!(
        before < 10_000,
        "the backlog was gone before the stop: {before}"
    );
    assert_eq!(
        before, after,
        "the worker applied events after its server stopped"
    );
    assert!(others.is_empty(), "connections left: {others:?}");
}

/// A server that cannot start serving (its TLS files do not parse) returns the error and leaves
/// nothing listening. Before, the metrics endpoint went on answering after
/// `run_until_stopped` had returned the error.
#[tokio::test]
async fn a_server_that_cannot_start_serving_leaves_nothing_listening() {
    let folder = tempfile::tempdir().unwrap();
    let (cert, key) = (
        folder.path().join("cert.pem"),
        folder.path().join("key.pem"),
    );
    std::fs::write(&cert, "not a certificate").unwrap();
    std::fs::write(&key, "not a key").unwrap();
    let database = TestDatabase::new();
    let settings = config_for(
        &database.url,
        &[
            "--metrics-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    let app = highwater::server::Application::build(settings)
        .await
        .expect("the files are read when serving starts");
    let metrics = app.metrics_addr().expect("a metrics address");
    let grpc = app.local_addr();
    let ran = tokio::time::timeout(
        Duration::from_secs(10),
        app.run_until_stopped(std::future::pending()),
    )
    .await
    .expect("the server stops by itself");
    let error = ran.expect_err("TLS files that do not parse are refused");
    assert!(error.to_string().contains("TLS"), "{error}");
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (what, address) in [("metrics", metrics), ("gRPC", grpc)] {
        assert!(
            tokio::net::TcpStream::connect(address).await.is_err(),
            "the {what} port still accepts connections"
        );
    }
}
