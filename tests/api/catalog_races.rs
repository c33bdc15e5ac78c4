//! Sandbox DDL from concurrent callers: registrations, rebuilds and the start-up check all change
//! catalog rows (grants on `events` and on a projection's schema, its apply functions), and
//! PostgreSQL refuses a second writer of a catalog row with an internal error ("tuple
//! concurrently updated") instead of waiting. So every such change is serialised
//! (docs/ARCHITECTURE.md, "Lock order"), and no caller may see that error.

use std::time::{Duration, Instant};

use highwater::pb::{
    self, AdminRebuildRequest, RebuildStrategy, admin_service_client::AdminServiceClient,
};
use tonic::{Code, transport::Channel};

use crate::{
    helpers::*,
    projection::{admin, projection, rebuild, register_toml, wait_active},
};

fn counter(name: &str, version: u32, weight: u32) -> String {
    format!(
        r#"
name = "{name}"
version = {version}
mode = "inline"
setup = "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY, n bigint NOT NULL)"
[handlers]
Tick = "INSERT INTO {{{{table}}}} VALUES ($stream, {weight}) ON CONFLICT (k) DO UPDATE SET n = {{{{table}}}}.n + {weight}"
"#
    )
}

/// A server with the inline projection `tally` (version 1, weight 1) active.
async fn with_tally() -> (TestApp, AdminServiceClient<Channel>) {
    let app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_projection(register_toml(&counter("tally", 1, 1)))
        .await
        .unwrap();
    wait_active(&mut admin, "tally", 1, Duration::from_secs(10)).await;
    (app, admin)
}

/// Every new projection is granted `SELECT` on `events`: one catalog row for all of them.
#[tokio::test]
async fn new_projections_registered_at_once_all_succeed() {
    let app = TestApp::spawn().await;
    let admin = admin(app.server.endpoint()).await;
    for round in 0..3 {
        let calls: Vec<_> = (0..6)
            .map(|n| {
                let mut admin = admin.clone();
                let name = format!("p{round}_{n}");
                tokio::spawn(async move {
                    admin
                        .register_projection(register_toml(&counter(&name, 1, 1)))
                        .await
                        .map_err(|status| format!("register {name}: {status:?}"))
                })
            })
            .collect();
        for call in calls {
            call.await
                .unwrap()
                .unwrap_or_else(|failure| panic!("{failure}"));
        }
    }
}

/// A blue/green rebuild makes a version, runs its setup and installs apply functions while a
/// registration of the same projection does the same: they take turns, and the loser of a
/// version number is told the next free one.
#[tokio::test]
async fn registrations_racing_blue_green_rebuilds_take_turns() {
    let (mut app, admin) = with_tally().await;
    app.append(append_request("t-1", None, vec![json_event("Tick", "{}")]))
        .await
        .unwrap();

    let mut next = 2;
    for round in 0..12 {
        let mut rebuilding = admin.clone();
        let rebuild = tokio::spawn(async move {
            let request = AdminRebuildRequest {
                projection: "tally".into(),
                strategy: RebuildStrategy::BlueGreen as i32,
            };
            let mut stream = rebuilding.admin_rebuild(request).await?.into_inner();
            while let Some(message) = stream.message().await? {
                let progress = message.progress.unwrap_or_default();
                if progress.phase() == pb::rebuild_progress::Phase::Failed
                    && !progress.error.contains("superseded by a newer version")
                {
                    return Err(tonic::Status::internal(format!(
                        "rebuild failed: {progress:?}"
                    )));
                }
            }
            Ok::<_, tonic::Status>(())
        });
        // Even rounds ask for the number the rebuild takes too; odd rounds update the handlers of
        // the version just registered, whose apply function the rebuild's setup reinstalls.
        let (version, weight) = if round % 2 == 0 {
            (next, 1)
        } else {
            (next - 1, 1 + round)
        };
        let mut registering = admin.clone();
        let registration = tokio::spawn(async move {
            registering
                .register_projection(register_toml(&counter("tally", version, weight)))
                .await
        });
        match registration.await.unwrap() {
            Ok(_) => next = next.max(version + 1),
            Err(status) if status.code() == Code::FailedPrecondition => {
                // "... register version N", or "... is older than its version N-1".
                let number = |marker: &str| {
                    status
                        .message()
                        .rsplit_once(marker)
                        .and_then(|(_, n)| n.parse::<u32>().ok())
                };
                let free = number("register version ")
                    .or_else(|| number("older than its version ").map(|n| n + 1))
                    .unwrap_or_else(|| panic!("round {round}: {status:?}"));
                next = next.max(free);
            }
            Err(status) => panic!("round {round}: register v{version}: {status:?}"),
        }
        match rebuild.await.unwrap() {
            Ok(()) => {}
            Err(status) if status.code() == Code::FailedPrecondition => {}
            Err(status) => panic!("round {round}: rebuild: {status:?}"),
        }
    }
}

/// An in-place rebuild that waits for a reader of its table while the handlers are updated
/// replays with the updated handlers: its apply function is installed from the definition stored
/// under the projection's row lock, not from the one it read before it waited.
#[tokio::test]
async fn an_in_place_rebuild_replays_with_handlers_updated_while_it_waited() {
    let (mut app, mut admin) = with_tally().await;
    for _ in 0..5 {
        app.append(append_request("t-1", None, vec![json_event("Tick", "{}")]))
            .await
            .unwrap();
    }
    // A reader of the read model: the rebuild's TRUNCATE waits for it (and retries).
    let mut reader = app.database.connect().await;
    sqlx::raw_sql("BEGIN; SELECT count(*) FROM projections.tally")
        .execute(&mut reader)
        .await
        .unwrap();
    let mut rebuilding = admin.clone();
    let rebuild =
        tokio::spawn(
            async move { rebuild(&mut rebuilding, "tally", RebuildStrategy::InPlace).await },
        );
    let deadline = Instant::now() + Duration::from_secs(10);
    while projection(&mut admin, "tally").await.status != "rebuilding" {
        assert!(Instant::now() < deadline, "the rebuild did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    admin
        .register_projection(register_toml(&counter("tally", 1, 10)))
        .await
        .unwrap();
    sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
    let progress = rebuild.await.unwrap();
    assert_eq!(
        progress.last().map(|p| p.phase()),
        Some(pb::rebuild_progress::Phase::Done),
        "{progress:?}"
    );
    wait_active(&mut admin, "tally", 1, Duration::from_secs(10)).await;
    let n: i64 = sqlx::query_scalar("SELECT n FROM projections.tally WHERE k = 't-1'")
        .fetch_one(&mut reader)
        .await
        .unwrap();
    assert_eq!(
        n, 50,
        "five events replayed with the updated handler (weight 10)"
    );
}
