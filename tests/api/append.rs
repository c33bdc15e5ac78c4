use std::collections::{HashMap, HashSet};

use highwater::pb::{self, ExpectedState};
use tonic::Code;
use tonic_types::StatusExt;
use uuid::Uuid;

use crate::helpers::*;

fn error_info(status: &tonic::Status) -> (String, HashMap<String, String>) {
    let info = status
        .get_details_error_info()
        .expect("status carries ErrorInfo");
    (info.reason, info.metadata)
}

fn violation_fields(status: &tonic::Status) -> Vec<String> {
    let bad_request = status
        .get_details_bad_request()
        .expect("status carries BadRequest");
    bad_request
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[tokio::test]
async fn binary_and_json_data_round_trip_byte_for_byte() {
    let mut app = TestApp::spawn().await;
    let binary: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
    // JSON whose bytes a re-serialisation would change (spacing, key order, escapes).
    let json = "{ \"b\" : 1,\n \"a\":[1.50, \"\\u00e9\"] }";
    let mut binary_event = json_event("Blob", "");
    binary_event.data = binary.clone().into();
    binary_event.content_type = "application/octet-stream".into();
    binary_event.metadata = HashMap::from([("correlation".to_string(), "c-1".to_string())]);
    let json_event = json_event("Json", json);
    let ids = [binary_event.id.clone(), json_event.id.clone()];

    let response = app
        .append(append_request(
            "blobs",
            None,
            vec![binary_event, json_event],
        ))
        .await
        .unwrap();
    assert_eq!(
        (
            response.first_revision,
            response.last_revision,
            response.first_position,
            response.last_position
        ),
        (0, 1, 1, 2)
    );

    let events = app
        .read_stream("blobs", 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].data.as_ref(), binary.as_slice());
    assert_eq!(events[0].content_type, "application/octet-stream");
    assert_eq!(
        events[0].metadata.get("correlation").map(String::as_str),
        Some("c-1")
    );
    assert_eq!(events[1].data.as_ref(), json.as_bytes());
    assert_eq!(events[1].content_type, "application/json");
    assert_eq!([events[0].id.clone(), events[1].id.clone()], ids);
    assert_eq!(
        (events[1].stream.as_str(), events[1].r#type.as_str()),
        ("blobs", "Json")
    );
    assert_eq!((events[1].revision, events[1].position), (1, 2));
    let recorded = events[0].recorded_at.as_ref().expect("recorded_at is set");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert!(
        (recorded.seconds - now).abs() < 60,
        "recorded_at {recorded:?} is not about now"
    );
}

#[tokio::test]
async fn expected_revision_variants_and_their_conflicts() {
    let mut app = TestApp::spawn().await;
    let one = || vec![json_event("E", "{}")];

    // No stream: succeeds on a new stream, conflicts once it exists.
    app.append(append_request("s", state(ExpectedState::NoStream), one()))
        .await
        .unwrap();
    let conflict = app
        .append(append_request("s", state(ExpectedState::NoStream), one()))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted);
    let (reason, metadata) = error_info(&conflict);
    assert_eq!(reason, "WRONG_EXPECTED_REVISION");
    assert_eq!(metadata["expected"], "no stream");
    assert_eq!(metadata["actual"], "0");
    assert_eq!(metadata["stream"], "s");

    // Stream exists: conflicts on a missing stream, succeeds on an existing one.
    let conflict = app
        .append(append_request(
            "missing",
            state(ExpectedState::StreamExists),
            one(),
        ))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted);
    let (_, metadata) = error_info(&conflict);
    assert_eq!(
        (metadata["expected"].as_str(), metadata["actual"].as_str()),
        ("stream exists", "no stream")
    );
    let ok = app
        .append(append_request(
            "s",
            state(ExpectedState::StreamExists),
            one(),
        ))
        .await
        .unwrap();
    assert_eq!(ok.last_revision, 1);

    // Exact revision.
    let ok = app
        .append(append_request("s", exact(1), one()))
        .await
        .unwrap();
    assert_eq!((ok.first_revision, ok.last_revision), (2, 2));
    let conflict = app
        .append(append_request("s", exact(1), one()))
        .await
        .unwrap_err();
    assert_eq!(conflict.code(), Code::Aborted);
    let (_, metadata) = error_info(&conflict);
    assert_eq!(
        (metadata["expected"].as_str(), metadata["actual"].as_str()),
        ("1", "2")
    );
    let conflict = app
        .append(append_request("missing", exact(0), one()))
        .await
        .unwrap_err();
    assert_eq!(error_info(&conflict).1["actual"], "no stream");

    // Any, explicit and implicit.
    app.append(append_request("s", state(ExpectedState::Any), one()))
        .await
        .unwrap();
    let ok = app.append(append_request("s", None, one())).await.unwrap();
    assert_eq!(ok.last_revision, 4);

    // The conflicts wrote nothing: 5 events in "s", nothing in "missing".
    let log = app.read_all().await;
    assert_eq!(log.len(), 5);
    assert!(log.iter().all(|e| e.stream == "s"));
    assert_eq!(
        log.iter().map(|e| e.revision).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
}

#[tokio::test]
async fn retried_append_returns_the_original_result_and_writes_nothing() {
    let mut app = TestApp::spawn().await;
    app.append(append_request("other", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    let events = vec![
        json_event("A", "1"),
        json_event("B", "2"),
        json_event("C", "3"),
    ];
    let request = append_request("orders-1", state(ExpectedState::NoStream), events.clone());
    let original = app.append(request.clone()).await.unwrap();
    assert_eq!((original.first_position, original.last_position), (2, 4));

    // Same request again, even though its expected state no longer holds.
    let retried = app.append(request).await.unwrap();
    assert_eq!(retried, original);
    // With another expected revision too.
    let retried = app
        .append(append_request("orders-1", exact(17), events.clone()))
        .await
        .unwrap();
    assert_eq!(retried, original);
    assert_eq!(app.read_all().await.len(), 4);

    // An id reused by a different append: ALREADY_EXISTS naming it.
    let mut reused = json_event("D", "4");
    reused.id = events[1].id.clone();
    let status = app
        .append(append_request(
            "orders-1",
            None,
            vec![json_event("New", "5"), reused],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let (reason, metadata) = error_info(&status);
    assert_eq!(reason, "DUPLICATE_EVENT_ID");
    assert_eq!(metadata["id"], events[1].id);
    assert!(status.message().contains(&events[1].id));

    // The same ids in another stream, or in another order, are not a retry.
    let status = app
        .append(append_request("elsewhere", None, events.clone()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    let reordered = vec![events[1].clone(), events[0].clone()];
    let status = app
        .append(append_request("orders-1", None, reordered))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists);
    assert_eq!(app.read_all().await.len(), 4);
}

#[tokio::test]
async fn an_empty_id_gets_a_server_generated_uuid_v7() {
    let mut app = TestApp::spawn().await;
    let mut event = json_event("E", "{}");
    event.id.clear();
    app.append(append_request(
        "s",
        None,
        vec![event.clone(), {
            let mut second = event.clone();
            second.r#type = "F".into();
            second
        }],
    ))
    .await
    .unwrap();
    let stored = app.read_all().await;
    let ids: Vec<Uuid> = stored
        .iter()
        .map(|e| Uuid::parse_str(&e.id).unwrap())
        .collect();
    assert!(ids.iter().all(|id| id.get_version_num() == 7));
    assert_ne!(ids[0], ids[1]);
}

#[tokio::test]
async fn invalid_input_is_rejected_with_its_field_and_leaves_the_log_unchanged() {
    let mut app = TestApp::spawn().await;
    app.append(append_request("seed", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();

    let with = |change: &dyn Fn(&mut pb::ProposedEvent)| {
        let mut event = json_event("E", "{}");
        change(&mut event);
        append_request("s", None, vec![json_event("Ok", "{}"), event])
    };
    let big = |size: usize| {
        let mut event = json_event("Big", "");
        event.content_type = "application/octet-stream".into();
        event.data = vec![7u8; size].into();
        event
    };
    let cases: Vec<(&str, pb::AppendRequest, &str)> = vec![
        (
            "empty stream",
            append_request("", None, vec![json_event("E", "{}")]),
            "stream",
        ),
        (
            "long stream",
            append_request(&"s".repeat(256), None, vec![json_event("E", "{}")]),
            "stream",
        ),
        (
            "control character",
            append_request("a\u{7}b", None, vec![json_event("E", "{}")]),
            "stream",
        ),
        ("no events", append_request("s", None, vec![]), "events"),
        ("empty type", with(&|e| e.r#type.clear()), "events[1].type"),
        (
            "long type",
            with(&|e| e.r#type = "t".repeat(256)),
            "events[1].type",
        ),
        (
            "malformed id",
            with(&|e| e.id = "not-a-uuid".into()),
            "events[1].id",
        ),
        (
            "invalid JSON",
            with(&|e| e.data = b"{\"unclosed\": ".to_vec().into()),
            "events[1].data",
        ),
        (
            "invalid JSON with explicit type",
            with(&|e| {
                e.content_type = "application/json; charset=utf-8".into();
                e.data = b"nope".to_vec().into();
            }),
            "events[1].data",
        ),
        (
            "event over 1 MiB",
            append_request("s", None, vec![big(1024 * 1024 + 1)]),
            "events[0].data",
        ),
        (
            "request over 16 MiB",
            append_request("s", None, (0..17).map(|_| big(1_000_000)).collect()),
            "events",
        ),
    ];
    for (name, request, field) in cases {
        let status = app.append(request).await.expect_err(name);
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert_eq!(violation_fields(&status), [field], "{name}");
        assert!(
            status.message().starts_with("invalid request"),
            "{name}: {}",
            status.message()
        );
    }

    // Names of exactly 255 bytes, and non-JSON content, are fine.
    let mut raw = json_event(&"t".repeat(255), "");
    raw.content_type = "text/plain".into();
    raw.data = b"not json".to_vec().into();
    app.append(append_request(&"s".repeat(255), None, vec![raw]))
        .await
        .unwrap();

    let log = app.read_all().await;
    assert_eq!(
        log.len(),
        2,
        "only the seed and the valid append are stored"
    );
    assert_eq!(log[1].position, 2);
}

#[tokio::test]
async fn concurrent_appenders_get_dense_positions_and_revisions() {
    let app = TestApp::spawn().await;
    const WRITERS: usize = 8;
    const APPENDS: usize = 60;
    let mut tasks = Vec::new();
    for writer in 0..WRITERS {
        let mut client = app.server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut appended = 0u64;
            for i in 0..APPENDS {
                // Shared streams (any revision, 1 to 3 events) and a stream of the writer's own
                // (exact revision, one event each).
                let (stream, expected, count) = if i % 2 == 0 {
                    (format!("shared-{}", i % 3), None, 1 + i % 3)
                } else if i == 1 {
                    (format!("own-{writer}"), state(ExpectedState::NoStream), 1)
                } else {
                    (format!("own-{writer}"), exact((i / 2 - 1) as u64), 1)
                };
                let events = (0..count)
                    .map(|_| json_event("E", "{}"))
                    .collect::<Vec<_>>();
                appended += events.len() as u64;
                client
                    .append(append_request(&stream, expected, events))
                    .await
                    .unwrap();
            }
            appended
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap();
    }

    let mut client = app.server.client().await;
    let log = read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(log.len() as u64, total);
    let positions: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(
        positions,
        (1..=total).collect::<Vec<_>>(),
        "positions are 1..N with no gap"
    );
    let ids: HashSet<&str> = log.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len() as u64, total, "no duplicates");
    let mut next_revision: HashMap<&str, u64> = HashMap::new();
    for event in &log {
        let expected = next_revision.entry(event.stream.as_str()).or_default();
        assert_eq!(
            event.revision, *expected,
            "revisions of {} are dense in position order",
            event.stream
        );
        *expected += 1;
    }
}

#[tokio::test]
async fn two_servers_on_one_database_share_one_dense_order() {
    let first = TestApp::spawn().await;
    let second = crate::helpers::RunningServer::start(config_for(&first.database.url, &[])).await;
    second
        .wait_for_health(
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            std::time::Duration::from_secs(30),
        )
        .await;

    let mut tasks = Vec::new();
    for (index, endpoint) in [
        first.server.endpoint(),
        second.endpoint(),
        first.server.endpoint(),
        second.endpoint(),
    ]
    .into_iter()
    .enumerate()
    {
        tasks.push(tokio::spawn(async move {
            let mut client =
                pb::event_store_service_client::EventStoreServiceClient::connect(endpoint)
                    .await
                    .unwrap();
            for i in 0..50u64 {
                let expected = if i == 0 {
                    state(ExpectedState::NoStream)
                } else {
                    exact(i - 1)
                };
                client
                    .append(append_request(
                        &format!("p-{index}"),
                        expected,
                        vec![json_event("E", "{}")],
                    ))
                    .await
                    .unwrap();
                client
                    .append(append_request(
                        "common",
                        None,
                        vec![json_event("E", "{}"), json_event("E", "{}")],
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let mut client = second.client().await;
    let log = read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(log.len(), 4 * 50 * 3);
    assert!(
        log.iter()
            .enumerate()
            .all(|(i, e)| e.position == i as u64 + 1)
    );
    let common: Vec<u64> = log
        .iter()
        .filter(|e| e.stream == "common")
        .map(|e| e.revision)
        .collect();
    assert_eq!(common, (0..400).collect::<Vec<_>>());
}

/// Two requests of one group carrying the same events (a retry racing its original): the second
/// is a replay of the first, written once. Called on the group function directly, since which
/// requests share a group is up to timing.
#[tokio::test]
async fn a_retry_in_the_same_group_as_its_original_is_a_replay() {
    let app = TestApp::spawn().await;
    let mut connection = app.database.connect().await;
    let (a, b) = (Uuid::now_v7(), Uuid::now_v7());
    let rows: Vec<(i32, i16, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT r_request, r_outcome, r_first_position, r_last_position FROM highwater_append(
             ARRAY['s', 's', 'other'], ARRAY[1, 0, 0]::smallint[], ARRAY[NULL, NULL, NULL]::bigint[],
             ARRAY[2, 2, 1], ARRAY[$1, $2, $1, $2, $3]::uuid[], ARRAY['E', 'E', 'E', 'E', 'E'],
             ARRAY['\\x7b7d', '\\x7b7d', '\\x7b7d', '\\x7b7d', '\\x7b7d']::bytea[],
             ARRAY['application/json', 'application/json', 'application/json', 'application/json', 'application/json'],
             ARRAY['{}', '{}', '{}', '{}', '{}']::jsonb[], 0)",
    )
    .bind(a)
    .bind(b)
    .bind(Uuid::now_v7())
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(
        rows,
        [
            (1, 0, Some(1), Some(2)),
            (2, 1, Some(1), Some(2)),
            (3, 0, Some(3), Some(3))
        ]
    );
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(count, 3);
}

#[tokio::test]
async fn json_that_jsonb_refuses_and_nul_metadata_are_invalid_argument_and_write_nothing() {
    let mut app = TestApp::spawn().await;
    // serde accepts a NUL escape, PostgreSQL's jsonb does not: every rebuild computing $data
    // would fail on such an event, so it is refused at append.
    let status = app
        .append(append_request(
            "s-1",
            None,
            vec![
                json_event("Ok", "{}"),
                json_event("Bad", r#"{"a":"\u0000"}"#),
            ],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(violation_fields(&status), ["events[1].data"]);
    let mut event = json_event("Ok", "{}");
    event.metadata.insert("trace".into(), "a\0b".into());
    let status = app
        .append(append_request("s-1", None, vec![event]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(
        violation_fields(&status),
        [r#"events[0].metadata["trace"]"#]
    );
    assert!(app.read_all().await.is_empty());
}

#[tokio::test]
async fn an_id_resent_with_a_different_payload_is_already_exists_and_the_stored_event_stays() {
    let mut app = TestApp::spawn().await;
    let mut original = json_event("Placed", r#"{"total":10}"#);
    original.metadata.insert("tenant".into(), "acme".into());
    let first = app
        .append(append_request("orders-7", None, vec![original.clone()]))
        .await
        .unwrap();
    // The very same event again is a retry: the original answer.
    assert_eq!(
        app.append(append_request("orders-7", None, vec![original.clone()]))
            .await
            .unwrap(),
        first
    );

    type Change = fn(&mut pb::ProposedEvent);
    let variants: [(&str, Change); 4] = [
        ("data", |e| e.data = br#"{"total":99}"#.to_vec().into()),
        ("type", |e| e.r#type = "Cancelled".into()),
        ("content type", |e| {
            e.content_type = "application/vnd.x+json".into()
        }),
        ("metadata", |e| {
            e.metadata.insert("tenant".into(), "other".into());
        }),
    ];
    for (what, change) in variants {
        let mut changed = original.clone();
        change(&mut changed);
        let status = app
            .append(append_request("orders-7", None, vec![changed]))
            .await
            .expect_err(what);
        assert_eq!(status.code(), Code::AlreadyExists, "{what}: {status:?}");
        let (reason, metadata) = error_info(&status);
        assert_eq!(reason, "DUPLICATE_EVENT_ID", "{what}");
        assert_eq!(metadata["id"], original.id, "{what}");
    }

    let stored = app.read_all().await;
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0].r#type, "Placed");
    assert_eq!(&stored[0].data[..], br#"{"total":10}"#);
    assert_eq!(stored[0].metadata["tenant"], "acme");
}

#[tokio::test]
async fn concurrent_resends_of_one_append_write_it_once_and_a_changed_payload_is_refused() {
    let app = TestApp::spawn().await;
    // Sent at once, these queue together and the writer groups them, so the check also meets
    // ids repeated within one group.
    let events = vec![json_event("A", "1"), json_event("B", "2")];
    let request = append_request("cart-1", None, events.clone());
    let answers = futures::future::join_all((0..24).map(|_| {
        let mut client = app.client.clone();
        let request = request.clone();
        async move { client.append(request).await.map(|r| r.into_inner()) }
    }))
    .await;
    let first = answers[0].clone().unwrap();
    for answer in &answers {
        assert_eq!(answer.as_ref().unwrap(), &first);
    }

    let id = Uuid::now_v7().to_string();
    let answers = futures::future::join_all((0..24).map(|i| {
        let mut client = app.client.clone();
        let mut event = json_event("C", &i.to_string());
        event.id = id.clone();
        async move {
            client
                .append(append_request("cart-2", None, vec![event]))
                .await
                .map(|r| r.into_inner())
        }
    }))
    .await;
    let written = answers.iter().filter(|a| a.is_ok()).count();
    assert_eq!(written, 1, "{answers:?}");
    for answer in answers.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(answer.code(), Code::AlreadyExists, "{answer:?}");
    }

    let mut app = app;
    let stored = app.read_all().await;
    assert_eq!(stored.len(), 3);
    assert_eq!(
        stored.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

/// One group (one call of the append function, as the writer makes it) where an id comes three
/// times: refused in the first request (wrong expected revision), accepted in the second, and
/// the third is a replay of the second when it is the same event (another stream: ALREADY_EXISTS).
/// Before migration 0012 the third was accepted again and the group failed on the unique index.
#[tokio::test]
async fn an_id_repeated_across_a_group_after_a_refused_request_is_a_replay_not_a_second_write() {
    let mut app = TestApp::spawn().await;
    app.append(append_request("taken", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    let mut connection = app.database.connect().await;
    for (third_stream, expected_third) in [("s-a", 1i16), ("s-other", 3)] {
        let id = Uuid::now_v7();
        let second_stream = if third_stream == "s-a" { "s-a" } else { "s-b" };
        let outcomes: Vec<(i32, i16)> = sqlx::query_as(
            "SELECT r_request, r_outcome FROM highwater_append(
                 ARRAY['taken', $2, $3], ARRAY[1, 0, 0]::smallint[], ARRAY[NULL, NULL, NULL]::bigint[],
                 ARRAY[1, 1, 1], ARRAY[$1, $1, $1]::uuid[], ARRAY['E', 'E', 'E'],
                 ARRAY['\\x7b7d', '\\x7b7d', '\\x7b7d']::bytea[],
                 ARRAY['application/json', 'application/json', 'application/json'],
                 ARRAY['{}', '{}', '{}']::jsonb[],
                 (SELECT catalog_version FROM log_head))",
        )
        .bind(id)
        .bind(second_stream)
        .bind(third_stream)
        .fetch_all(&mut connection)
        .await
        .unwrap();
        assert_eq!(
            outcomes,
            [(1, 2), (2, 0), (3, expected_third)],
            "{third_stream}"
        );
    }
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(stored, 3);
}
