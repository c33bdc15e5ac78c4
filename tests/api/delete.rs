//! Stream deletion: soft deletes hide a stream from stream reads until it is written again, hard
//! deletes erase its events and close it for good; both serialise with appends.

use std::time::Duration;

use highwater::pb::{self, Direction, admin_service_client::AdminServiceClient};
use tonic::{Code, transport::Channel};

use crate::helpers::*;

async fn soft_delete(
    app: &mut TestApp,
    stream: &str,
    expected: Option<pb::delete_stream_request::Expected>,
) -> Result<u64, tonic::Status> {
    app.client
        .delete_stream(pb::DeleteStreamRequest {
            stream: stream.into(),
            expected,
        })
        .await
        .map(|r| r.into_inner().deleted_revision)
}

async fn hard_delete(
    admin: &mut AdminServiceClient<Channel>,
    stream: &str,
) -> Result<pb::HardDeleteStreamResponse, tonic::Status> {
    admin
        .hard_delete_stream(pb::HardDeleteStreamRequest {
            stream: stream.into(),
            expected: None,
        })
        .await
        .map(|r| r.into_inner())
}

fn code<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> Code {
    result.expect_err("the call should fail").code()
}

/// The first event a stream subscription from revision 0 delivers.
async fn first_subscribed_revision(app: &mut TestApp, stream: &str) -> u64 {
    let mut subscription = app
        .client
        .subscribe_stream(pb::SubscribeStreamRequest {
            original: false,
            stream: stream.into(),
            start: Some(pb::subscribe_stream_request::Start::FromRevision(0)),
        })
        .await
        .unwrap()
        .into_inner();
    loop {
        if let Some(pb::subscribe_stream_response::Content::Event(event)) =
            next_message(&mut subscription).await.content
        {
            return event.revision;
        }
    }
}

#[tokio::test]
async fn a_soft_deleted_stream_reads_as_not_found_until_recreated_and_stays_in_all() {
    let mut app = TestApp::spawn().await;
    for i in 0..3 {
        app.append(append_request(
            "order-1",
            None,
            vec![json_event("E", &i.to_string())],
        ))
        .await
        .unwrap();
    }
    app.append(append_request("order-2", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();

    let wrong = soft_delete(
        &mut app,
        "order-1",
        Some(pb::delete_stream_request::Expected::Revision(1)),
    )
    .await
    .unwrap_err();
    assert_eq!(wrong.code(), Code::Aborted, "{wrong:?}");
    assert!(wrong.message().contains("actual 2"), "{}", wrong.message());
    assert_eq!(
        app.read_stream("order-1", 0, Direction::Forwards, 0)
            .await
            .unwrap()
            .len(),
        3
    );

    let deleted = soft_delete(
        &mut app,
        "order-1",
        Some(pb::delete_stream_request::Expected::Revision(2)),
    )
    .await
    .unwrap();
    assert_eq!(deleted, 2);
    for direction in [Direction::Forwards, Direction::Backwards] {
        let read = app.read_stream("order-1", 0, direction, 0).await;
        assert_eq!(code(read), Code::NotFound);
    }
    assert_eq!(
        code(soft_delete(&mut app, "order-1", None).await),
        Code::NotFound
    );
    assert_eq!(
        code(soft_delete(&mut app, "never", None).await),
        Code::NotFound
    );
    assert_eq!(
        code(soft_delete(&mut app, "", None).await),
        Code::InvalidArgument
    );
    // The log keeps every event.
    let all = app.read_all().await;
    assert_eq!(
        all.iter().map(|e| e.position).collect::<Vec<_>>(),
        [1, 2, 3, 4]
    );

    // Deleted means "no stream" to expectations; revisions continue.
    let exists = app
        .append(append_request(
            "order-1",
            state(pb::ExpectedState::StreamExists),
            vec![json_event("E", "3")],
        ))
        .await;
    assert_eq!(code(exists), Code::Aborted);
    let stale = app
        .append(append_request(
            "order-1",
            exact(2),
            vec![json_event("E", "3")],
        ))
        .await;
    assert_eq!(code(stale), Code::Aborted);
    let recreated = app
        .append(append_request(
            "order-1",
            state(pb::ExpectedState::NoStream),
            vec![json_event("E", "3")],
        ))
        .await
        .unwrap();
    assert_eq!((recreated.first_revision, recreated.first_position), (3, 5));
    let forwards = app
        .read_stream("order-1", 0, Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&forwards), [3]);
    let backwards = app
        .read_stream("order-1", u64::MAX, Direction::Backwards, 0)
        .await
        .unwrap();
    assert_eq!(revisions(&backwards), [3]);
    assert_eq!(first_subscribed_revision(&mut app, "order-1").await, 3);
    // The other stream never noticed.
    assert_eq!(
        app.read_stream("order-2", 0, Direction::Forwards, 0)
            .await
            .unwrap()
            .len(),
        1
    );
}

#[tokio::test]
async fn a_hard_deleted_stream_is_erased_from_the_log_and_never_written_again() {
    let mut app = TestApp::spawn().await;
    let mut admin = AdminServiceClient::connect(app.server.endpoint())
        .await
        .unwrap();
    for i in 0..3 {
        let stream = if i == 1 { "keep" } else { "erase" };
        app.append(append_request(
            stream,
            None,
            vec![json_event("E", &i.to_string())],
        ))
        .await
        .unwrap();
    }
    // A soft delete first: the hard delete still erases the hidden events.
    soft_delete(&mut app, "erase", None).await.unwrap();
    app.append(append_request("erase", None, vec![json_event("E", "3")]))
        .await
        .unwrap();
    // A subscriber that has read everything before the delete.
    let mut live = subscribe_all(&mut app).await;
    assert_eq!(
        positions_until(&mut live, |m| matches!(m, Message::CaughtUp(_))).await,
        [1, 2, 3, 4]
    );

    let erased = hard_delete(&mut admin, "erase").await.unwrap();
    assert_eq!((erased.deleted_revision, erased.erased_events), (2, 3));

    assert_eq!(
        code(app.read_stream("erase", 0, Direction::Forwards, 0).await),
        Code::NotFound
    );
    let all = app.read_all().await;
    assert!(all.iter().all(|e| e.stream == "keep"), "{all:?}");
    assert_eq!(all.iter().map(|e| e.position).collect::<Vec<_>>(), [2]);
    for expected in [None, state(pb::ExpectedState::NoStream), exact(2)] {
        let append = app
            .append(append_request(
                "erase",
                expected,
                vec![json_event("E", "{}")],
            ))
            .await;
        let status = append.unwrap_err();
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert!(
            status.message().contains("hard-deleted"),
            "{}",
            status.message()
        );
    }
    assert_eq!(
        code(soft_delete(&mut app, "erase", None).await),
        Code::FailedPrecondition
    );
    // A second hard delete answers as the first did (a retry after a lost answer succeeds).
    let again = hard_delete(&mut admin, "erase").await.unwrap();
    assert_eq!((again.deleted_revision, again.erased_events), (2, 0));
    assert_eq!(code(hard_delete(&mut admin, "never").await), Code::NotFound);

    // Positions are never reused: the log carries on after the gap.
    let next = app
        .append(append_request("keep", None, vec![json_event("E", "5")]))
        .await
        .unwrap();
    assert_eq!(next.first_position, 5);
    // The live subscriber goes on; one from the start sees what is left, in order.
    let is_five = |m: &Message| matches!(m, Message::Event(e) if e.position == 5);
    assert_eq!(positions_until(&mut live, is_five).await, [5]);
    let mut fresh = subscribe_all(&mut app).await;
    assert_eq!(positions_until(&mut fresh, is_five).await, [2, 5]);
}

use pb::subscribe_all_response::Content as Message;

async fn subscribe_all(app: &mut TestApp) -> tonic::Streaming<pb::SubscribeAllResponse> {
    app.client
        .subscribe_all(pb::SubscribeAllRequest::default())
        .await
        .unwrap()
        .into_inner()
}

/// Positions of the events received up to and including the first message matching `last`.
async fn positions_until(
    subscription: &mut tonic::Streaming<pb::SubscribeAllResponse>,
    last: impl Fn(&Message) -> bool,
) -> Vec<u64> {
    let mut positions = Vec::new();
    loop {
        let message = next_message(subscription)
            .await
            .content
            .expect("a message has content");
        if let Message::Event(event) = &message {
            positions.push(event.position);
        }
        if last(&message) {
            return positions;
        }
    }
}

#[tokio::test]
async fn deletes_racing_appends_leave_a_stream_that_reads_from_its_last_delete() {
    let mut app = TestApp::spawn().await;
    let endpoint = app.server.endpoint();
    let appenders: Vec<_> = (0..8)
        .map(|_| {
            let endpoint = endpoint.clone();
            tokio::spawn(async move {
                let mut client =
                    pb::event_store_service_client::EventStoreServiceClient::connect(endpoint)
                        .await
                        .unwrap();
                let mut acknowledged = Vec::new();
                for i in 0..40 {
                    let response = client
                        .append(append_request(
                            "hot",
                            None,
                            vec![json_event("E", &i.to_string())],
                        ))
                        .await
                        .unwrap()
                        .into_inner();
                    acknowledged.push(response.first_revision);
                }
                acknowledged
            })
        })
        .collect();
    let mut deleted = Vec::new();
    for _ in 0..30 {
        match soft_delete(&mut app, "hot", None).await {
            Ok(revision) => deleted.push(revision),
            Err(status) => assert_eq!(status.code(), Code::NotFound),
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut acknowledged = Vec::new();
    for appender in appenders {
        acknowledged.extend(appender.await.unwrap());
    }
    assert!(deleted.windows(2).all(|w| w[0] < w[1]), "{deleted:?}");
    acknowledged.sort_unstable();
    assert_eq!(
        acknowledged,
        (0..320).collect::<Vec<u64>>(),
        "revisions stay dense"
    );

    // The stream reads exactly the revisions after the last delete (or NOT_FOUND if none).
    let after = deleted.last().map_or(0, |last| last + 1);
    match app.read_stream("hot", 0, Direction::Forwards, 0).await {
        Ok(events) => assert_eq!(revisions(&events), (after..320).collect::<Vec<_>>()),
        Err(status) => {
            assert_eq!(status.code(), Code::NotFound);
            assert_eq!(after, 320);
        }
    }
    assert_eq!(
        app.read_all().await.len(),
        320,
        "soft deletes keep every event in $all"
    );
}

#[tokio::test]
async fn a_hard_delete_erases_a_long_stream_in_batches_outside_the_append_lock() {
    let mut app = TestApp::spawn().await;
    let mut admin = AdminServiceClient::connect(app.server.endpoint())
        .await
        .unwrap();
    for batch in 0..20 {
        let events = (0..500)
            .map(|i| json_event("E", &(batch * 500 + i).to_string()))
            .collect();
        app.append(append_request("long", None, events))
            .await
            .unwrap();
    }
    // While the erase runs, look for a moment when part of the stream is erased and the lock
    // every append takes (log_head's row) is free: the erase does not hold it.
    let mut connection = app.database.connect().await;
    let deleting = tokio::spawn(async move { hard_delete(&mut admin, "long").await });
    let mut seen_free_mid_erase = false;
    while !deleting.is_finished() && !seen_free_mid_erase {
        let mut transaction = sqlx::Connection::begin(&mut connection).await.unwrap();
        let left: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE stream = 'long'")
            .fetch_one(&mut *transaction)
            .await
            .unwrap();
        let free = sqlx::query("SELECT FROM log_head FOR UPDATE NOWAIT")
            .execute(&mut *transaction)
            .await
            .is_ok();
        transaction.rollback().await.unwrap();
        seen_free_mid_erase = free && left > 0 && left < 10_000;
    }
    let erased = deleting.await.unwrap().unwrap();
    assert_eq!(
        (erased.deleted_revision, erased.erased_events),
        (9999, 10_000)
    );
    assert!(
        seen_free_mid_erase,
        "appends were locked out for the whole erase"
    );
    app.append(append_request("beside", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    let all = app.read_all().await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].position, 10_001);
}

#[tokio::test]
async fn an_erase_left_halfway_by_a_stopped_server_is_finished_at_the_next_start() {
    let mut app = TestApp::spawn().await;
    for stream in ["half", "half", "half", "kept"] {
        app.append(append_request(stream, None, vec![json_event("E", "{}")]))
            .await
            .unwrap();
    }
    // What a server stopped between the tombstone and the end of the erase leaves behind.
    let mut connection = app.database.connect().await;
    sqlx::query(
        "UPDATE streams SET tombstoned = true, deleted_through = revision WHERE stream = 'half'",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    sqlx::query("DELETE FROM events WHERE stream = 'half' AND revision = 0")
        .execute(&mut connection)
        .await
        .unwrap();
    drop(connection);

    let mut app = app.restart().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let streams: Vec<String> = app.read_all().await.into_iter().map(|e| e.stream).collect();
        if streams == ["kept"] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the erase was not finished: {streams:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = app
        .append(append_request("half", None, vec![json_event("E", "{}")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
}

/// Cuts off the erase of `stream` mid-way: a transaction holds the stream's rows, so the erase
/// waits on them, and its backend is terminated. Returns what the hard delete answered.
async fn interrupted_hard_delete(
    app: &TestApp,
    admin: &AdminServiceClient<Channel>,
    stream: &str,
) -> Result<pb::HardDeleteStreamResponse, tonic::Status> {
    let mut holder = app.database.connect().await;
    let mut rows = sqlx::Connection::begin(&mut holder).await.unwrap();
    sqlx::query("SELECT FROM events WHERE stream = $1 FOR UPDATE")
        .bind(stream)
        .execute(&mut *rows)
        .await
        .unwrap();
    let mut admin = admin.clone();
    let target = stream.to_string();
    let deleting = tokio::spawn(async move { hard_delete(&mut admin, &target).await });
    let mut watcher = app.database.connect().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let terminated: bool = sqlx::query_scalar(
            "SELECT coalesce(bool_or(pg_terminate_backend(pid)), false) FROM pg_stat_activity
              WHERE datname = current_database() AND wait_event_type = 'Lock'
                AND query LIKE 'DELETE FROM events WHERE position IN%'",
        )
        .fetch_one(&mut watcher)
        .await
        .unwrap();
        if terminated {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the erase never waited on the held rows"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let answer = deleting.await.unwrap();
    rows.rollback().await.unwrap();
    answer
}

/// A hard delete whose erase loses its connection answers UNAVAILABLE (retryable) with the
/// stream already closed to writes; a retry then finishes the erase and answers as the first
/// call would have, and without a retry the server itself finishes it within seconds. Before,
/// the retry was FAILED_PRECONDITION and the events stayed readable until a server restarted.
#[tokio::test]
async fn an_interrupted_hard_delete_is_finished_by_its_retry_or_by_the_server() {
    let mut app = TestApp::spawn().await;
    let admin = AdminServiceClient::connect(app.server.endpoint())
        .await
        .unwrap();
    for stream in ["retried", "left", "kept"] {
        let events = (0..3).map(|i| json_event("E", &i.to_string())).collect();
        app.append(append_request(stream, None, events))
            .await
            .unwrap();
    }

    let cut = interrupted_hard_delete(&app, &admin, "retried").await;
    assert_eq!(code(cut), Code::Unavailable);
    let refused = app
        .append(append_request("retried", None, vec![json_event("E", "{}")]))
        .await;
    assert_eq!(code(refused), Code::FailedPrecondition);
    let retried = hard_delete(&mut admin.clone(), "retried").await.unwrap();
    assert_eq!(retried.deleted_revision, 2);
    let streams: Vec<String> = app.read_all().await.into_iter().map(|e| e.stream).collect();
    assert!(
        !streams.contains(&"retried".to_string()),
        "the retry answered before its erase was done: {streams:?}"
    );

    let cut = interrupted_hard_delete(&app, &admin, "left").await;
    assert_eq!(code(cut), Code::Unavailable);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let streams: Vec<String> = app.read_all().await.into_iter().map(|e| e.stream).collect();
        if streams == ["kept"; 3] {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the server did not finish the erase: {streams:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
