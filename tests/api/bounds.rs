//! What may run while the log's lock is held is bounded: projection SQL has a time limit, and
//! registrations and inline appends take their locks in one order.

use std::time::{Duration, Instant};

use highwater::pb;
use tonic::Code;

use crate::{
    helpers::*,
    projection::{admin, register_toml, wait_active},
};

#[tokio::test]
async fn a_looping_inline_handler_fails_its_own_append_within_the_sql_timeout() {
    let mut app = TestApp::spawn_configured(
        |settings| settings.projection.sql_timeout = Duration::from_millis(300),
        &[],
    )
    .await;
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
        admin
            .register_projection(register_toml(&toml))
            .await
            .unwrap();
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
        .register_projection(register_toml(&definition(0)))
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
            .register_projection(register_toml(&definition(n)))
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

/// The default `--max-append-events`.
const MAX_APPEND_EVENTS: usize = 10_000;

fn numbered_events(count: usize) -> Vec<pb::ProposedEvent> {
    (0..count)
        .map(|i| json_event("Numbered", &format!(r#"{{"n":{i}}}"#)))
        .collect()
}

#[tokio::test]
async fn an_append_over_the_event_cap_is_invalid_argument_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    let status = app
        .append(append_request(
            "big",
            None,
            numbered_events(MAX_APPEND_EVENTS + 1),
        ))
        .await
        .expect_err("over the cap");
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().contains("10000 events"), "{status:?}");
    assert!(app.read_all().await.is_empty());
    let appended = app
        .append(append_request(
            "big",
            None,
            numbered_events(MAX_APPEND_EVENTS),
        ))
        .await
        .unwrap();
    assert_eq!(appended.last_position, MAX_APPEND_EVENTS as u64);
}

/// While a client resends the largest append allowed, again and again (its events are all
/// stored, so each resend is an idempotent replay checked under the log's lock), single appends
/// of another client keep answering: the bound stated in docs/ARCHITECTURE.md ("Bounds") is a
/// median under 200 ms and no append over 2 s. Before the check was a set operation, each
/// resend held the lock for about 0.35 s, and the median single append waited that long.
#[tokio::test]
async fn single_appends_answer_promptly_while_a_maximal_append_is_resent() {
    let mut app = TestApp::spawn().await;
    let maximal = append_request("bulk", None, numbered_events(MAX_APPEND_EVENTS));
    let original = app.append(maximal.clone()).await.unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut resender = app.client.clone();
    let resending = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut resends = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let replayed = resender.append(maximal.clone()).await.unwrap().into_inner();
                assert_eq!(replayed, original);
                resends += 1;
            }
            resends
        }
    });

    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut latencies = Vec::new();
    for i in 0..60 {
        let started = Instant::now();
        app.append(append_request(
            &format!("single-{i}"),
            None,
            vec![json_event("One", "{}")],
        ))
        .await
        .unwrap();
        latencies.push(started.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let resends = resending.await.unwrap();

    latencies.sort();
    let median = latencies[latencies.len() / 2];
    let max = latencies[latencies.len() - 1];
    eprintln!(
        "{resends} resends of {MAX_APPEND_EVENTS} events; single appends: median {median:?}, max {max:?}"
    );
    assert!(resends >= 3, "the resends must overlap the single appends");
    assert!(median < Duration::from_millis(500), "median {median:?}");
    assert!(max < Duration::from_secs(2), "max {max:?}");
    assert_eq!(
        app.read_all().await.len(),
        MAX_APPEND_EVENTS + 60,
        "resends wrote nothing"
    );
}

/// A connection lost while inline handlers run is the database's failure, not the event's:
/// the append answers UNAVAILABLE (which clients retry, appends being idempotent by id), no
/// dead letter is written, and the retry writes the event once.
#[tokio::test]
async fn a_connection_lost_during_inline_handlers_is_unavailable_and_the_retry_writes_once() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_projection(register_toml(
            r#"
name = "napping"
mode = "inline"
on_error = "skip"
setup = "CREATE TABLE {{table}} (k text PRIMARY KEY)"
[handlers]
Nap = "INSERT INTO {{table}} SELECT $stream FROM pg_sleep(1) ON CONFLICT DO NOTHING"
"#,
        ))
        .await
        .unwrap();
    wait_active(&mut admin, "napping", 1, Duration::from_secs(10)).await;

    let request = append_request("nap-1", None, vec![json_event("Nap", "{}")]);
    let mut client = app.client.clone();
    let appending = tokio::spawn({
        let request = request.clone();
        async move { client.append(request).await }
    });
    let mut connection = app.database.connect().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut terminated = false;
    while !terminated && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        terminated = sqlx::query_scalar::<_, bool>(
            "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity
              WHERE datname = current_database() AND pid <> pg_backend_pid()
                AND query LIKE '%highwater_apply%' AND wait_event = 'PgSleep'",
        )
        .fetch_one(&mut connection)
        .await
        .unwrap();
    }
    assert!(
        terminated,
        "the handler's connection was found and terminated"
    );
    let status = appending
        .await
        .unwrap()
        .expect_err("the append's transaction was lost");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let letters: i64 = sqlx::query_scalar("SELECT count(*) FROM system_messages")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(letters, 0, "a lost connection dead-letters nothing");
    assert!(app.read_all().await.is_empty(), "nothing committed");

    let retried = app.append(request.clone()).await.unwrap();
    assert_eq!(app.append(request).await.unwrap(), retried);
    assert_eq!(app.read_all().await.len(), 1);
    let applied: Vec<String> = sqlx::query_scalar("SELECT k FROM projections.napping")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(applied, ["nap-1"]);
}

/// A reader of a read model that keeps its transaction open holds the view's (and its table's)
/// ACCESS SHARE lock. A rebuild's cut-over needs the view's ACCESS EXCLUSIVE lock, and an
/// in-place rebuild the table's: both are taken before `log_head`, with a lock timeout and
/// retries, so appends keep their latency while the rebuild waits for the reader, and the
/// rebuild completes once the reader ends. Bound asserted: append p99 under 500 ms during the
/// wait (before, every append waited for the reader: 2.5 s here).
#[tokio::test]
async fn appends_keep_their_latency_while_a_rebuild_waits_for_a_reader_of_the_view() {
    use crate::projection::rebuild;
    use highwater::pb::{RebuildStrategy, rebuild_progress::Phase};

    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_projection(register_toml(
            r#"
name = "tally"
mode = "inline"
setup = "CREATE TABLE {{table}} (k text PRIMARY KEY, n bigint NOT NULL)"
[handlers]
Counted = "INSERT INTO {{table}} VALUES ($stream, 1) ON CONFLICT (k) DO UPDATE SET n = {{table}}.n + 1"
"#,
        ))
        .await
        .unwrap();
    wait_active(&mut admin, "tally", 1, Duration::from_secs(10)).await;
    for i in 0..50 {
        app.append(append_request(
            &format!("t-{}", i % 5),
            None,
            vec![json_event("Counted", "{}")],
        ))
        .await
        .unwrap();
    }

    for strategy in [RebuildStrategy::BlueGreen, RebuildStrategy::InPlace] {
        let mut reader = app.database.connect().await;
        sqlx::raw_sql("BEGIN; SELECT count(*) FROM projections.tally")
            .execute(&mut reader)
            .await
            .unwrap();

        let mut rebuild_admin = admin.clone();
        let rebuilding =
            tokio::spawn(async move { rebuild(&mut rebuild_admin, "tally", strategy).await });

        let mut latencies = Vec::new();
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_millis(2500) {
            let sent = Instant::now();
            let appending = app.append(append_request(
                &format!("t-{}", i % 5),
                None,
                vec![json_event("Counted", "{}")],
            ));
            tokio::time::timeout(Duration::from_secs(5), appending)
                .await
                .unwrap_or_else(|_| panic!("{strategy:?}: an append waited for the reader"))
                .unwrap();
            latencies.push(sent.elapsed());
            i += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            !rebuilding.is_finished(),
            "{strategy:?}: the rebuild waits for the reader"
        );
        sqlx::raw_sql("COMMIT").execute(&mut reader).await.unwrap();
        let progress = tokio::time::timeout(Duration::from_secs(30), rebuilding)
            .await
            .expect("the rebuild completes once the reader ends")
            .unwrap();
        assert_eq!(
            progress.last().map(|p| p.phase()),
            Some(Phase::Done),
            "{progress:?}"
        );

        latencies.sort();
        let p99 = latencies[(latencies.len() * 99 / 100).min(latencies.len() - 1)];
        eprintln!(
            "{strategy:?}: {} appends while the rebuild waited for a reader; p99 {p99:?}, max {:?}",
            latencies.len(),
            latencies.last().unwrap()
        );
        assert!(
            p99 < Duration::from_millis(500),
            "{strategy:?}: p99 {p99:?}"
        );

        // The read model is the fold of the log.
        let mut connection = app.database.connect().await;
        let expected: Vec<(String, i64)> = sqlx::query_as(
            "SELECT stream, count(*) FROM events WHERE type = 'Counted' GROUP BY stream ORDER BY stream",
        )
        .fetch_all(&mut connection)
        .await
        .unwrap();
        let tally: Vec<(String, i64)> =
            sqlx::query_as("SELECT k, n FROM projections.tally ORDER BY k")
                .fetch_all(&mut connection)
                .await
                .unwrap();
        assert_eq!(tally, expected, "{strategy:?}");
    }
}

/// An append of one event of `bytes` bytes of JSON data.
fn big_append(stream: &str, bytes: usize) -> pb::AppendRequest {
    let data = format!("\"{}\"", "x".repeat(bytes - 2));
    append_request(stream, None, vec![json_event("Big", &data)])
}

/// The bytes of requests a server holds are bounded across calls and connections: with room
/// for three appends of about 900 KB held in flight (the log's lock is taken, so they wait in
/// the writer), a fourth from another connection is RESOURCE_EXHAUSTED after 5 s and writes
/// nothing, a small append still fits, and everything held commits once the lock is free. A
/// budget smaller than one maximal request is refused at start.
#[tokio::test]
async fn request_bytes_in_flight_are_bounded_across_connections() {
    let flags = [
        "--max-append-bytes",
        "1048576",
        "--max-request-bytes-in-flight",
        "3145728",
    ];
    let app = TestApp::spawn_with(&flags).await;
    let mut holder = app.database.connect().await;
    let mut lock = sqlx::Connection::begin(&mut holder).await.unwrap();
    sqlx::query("SELECT FROM log_head FOR UPDATE")
        .execute(&mut *lock)
        .await
        .unwrap();

    let mut held = Vec::new();
    for i in 0..3 {
        let mut client = app.server.client().await; // a connection each
        let request = big_append(&format!("big-{i}"), 900_000);
        held.push(tokio::spawn(async move { client.append(request).await }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut small_client = app.server.client().await;
    let small = tokio::spawn(async move {
        small_client
            .append(append_request("small", None, vec![json_event("E", "{}")]))
            .await
    });
    let mut fourth = app.server.client().await;
    let started = Instant::now();
    let refused = fourth
        .append(big_append("big-3", 900_000))
        .await
        .expect_err("no room for a fourth large request");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(
        refused.message().contains("--max-request-bytes-in-flight"),
        "{refused:?}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "it waited for room first"
    );

    lock.rollback().await.unwrap();
    for append in held {
        append.await.unwrap().expect("a held append commits");
    }
    small
        .await
        .unwrap()
        .expect("a small append fits beside them");
    let mut client = app.server.client().await;
    let streams: Vec<String> = read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.stream)
        .collect();
    assert_eq!(streams.len(), 4, "{streams:?}");
    assert!(!streams.contains(&"big-3".to_string()));
    // With room again, the refused append goes through.
    fourth.append(big_append("big-3", 900_000)).await.unwrap();

    let too_small = config_for(
        &app.database.url,
        &[
            "--max-append-bytes",
            "1048576",
            "--max-request-bytes-in-flight",
            "1048576",
        ],
    );
    let error = highwater::server::Application::build(too_small)
        .await
        .err()
        .expect("a budget below one maximal request is refused");
    assert!(
        error.to_string().contains("--max-request-bytes-in-flight"),
        "{error}"
    );
}
