//! What may run while the log's lock is held is bounded: projection SQL has a time limit, and
//! registrations and inline appends take their locks in one order.

use std::time::{Duration, Instant};

use highwater::pb;
use tonic::Code;

use crate::{
    helpers::*,
    projection::{admin, wait_active},
};

fn register(toml: &str) -> pb::RegisterProjectionRequest {
    pb::RegisterProjectionRequest {
        source: Some(pb::register_projection_request::Source::Toml(toml.into())),
    }
}

#[tokio::test]
async fn a_looping_inline_handler_fails_its_own_append_within_the_sql_timeout() {
    let mut app = TestApp::spawn_configured(|_| {}, &["--projection-sql-timeout-ms", "300"]).await;
    let mut admin = admin(app.server.endpoint()).await;
    for (name, on_error) in [("strict", "fail"), ("lenient", "skip")] {
        let toml = format!(
            r#"
name = "{name}"
mode = "inline"
on_error = "{on_error}"
setup = "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY)"
[handlers]
Seen = "INSERT INTO {{{{table}}}} VALUES ($stream) ON CONFLICT DO NOTHING"
Slow{name} = "INSERT INTO {{{{table}}}} SELECT 'slow' FROM pg_sleep(30)"
"#
        );
        admin.register_projection(register(&toml)).await.unwrap();
        wait_active(&mut admin, name, 1, Duration::from_secs(10)).await;
    }

    // The strict projection's slow handler fails its append after about 300 ms; an append
    // waiting behind it for the log's lock answers soon after, not after 30 s.
    let mut slow_client = app.client.clone();
    let started = Instant::now();
    let slow = tokio::spawn(async move {
        let result = slow_client
            .append(append_request(
                "slow-1",
                None,
                vec![json_event("Slowstrict", "{}")],
            ))
            .await;
        (result, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let waiting = Instant::now();
    app.append(append_request("s-1", None, vec![json_event("Seen", "{}")]))
        .await
        .unwrap();
    let waited = waiting.elapsed();
    let (result, slow_took) = slow.await.unwrap();
    let status = result.expect_err("the slow handler must fail its append");
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("strict") && status.message().contains("300 ms"),
        "{status:?}"
    );
    eprintln!("slow append failed after {slow_took:?}; the append behind it waited {waited:?}");
    assert!(slow_took < Duration::from_secs(5), "{slow_took:?}");
    assert!(waited < Duration::from_secs(5), "{waited:?}");

    // The lenient projection dead-letters the event and the append commits.
    let appended = app
        .append(append_request(
            "slow-2",
            None,
            vec![json_event("Slowlenient", "{}")],
        ))
        .await
        .unwrap();
    let mut connection = app.database.connect().await;
    let letters: Vec<(i64, String)> = sqlx::query_as(
        "SELECT position, reason FROM system_messages WHERE projection = 'lenient' AND kind = 'dead_letter'",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].0 as u64, appended.first_position);
    assert!(letters[0].1.contains("timeout"), "{letters:?}");
    let stored: Vec<String> = sqlx::query_scalar("SELECT stream FROM events ORDER BY position")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(stored, ["s-1", "slow-2"]);
}

#[tokio::test]
async fn handler_updates_and_inline_appends_never_deadlock() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    let definition = |n: usize| {
        format!(
            r#"
name = "counter"
mode = "inline"
setup = "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY, n bigint NOT NULL)"
[handlers]
Tick = "INSERT INTO {{{{table}}}} VALUES ($stream, 1) ON CONFLICT (k) DO UPDATE SET n = {{{{table}}}}.n + 1 + {n} - {n}"
"#
        )
    };
    admin
        .register_projection(register(&definition(0)))
        .await
        .unwrap();
    wait_active(&mut admin, "counter", 1, Duration::from_secs(10)).await;

    let appenders: Vec<_> = (0..4)
        .map(|worker| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                for i in 0..60 {
                    client
                        .append(append_request(
                            &format!("c-{worker}-{}", i % 3),
                            None,
                            vec![json_event("Tick", "{}")],
                        ))
                        .await
                        .unwrap_or_else(|status| panic!("append: {status:?}"));
                }
            })
        })
        .collect();
    for n in 1..=40 {
        admin
            .register_projection(register(&definition(n)))
            .await
            .unwrap_or_else(|status| panic!("handler update {n}: {status:?}"));
    }
    for appender in appenders {
        appender.await.unwrap();
    }
    let mut connection = app.database.connect().await;
    let total: i64 = sqlx::query_scalar("SELECT sum(n)::bigint FROM projections.counter")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(total, 240, "every tick applied once");
    let _ = app.read_all().await;
}
