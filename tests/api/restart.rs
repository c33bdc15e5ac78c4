//! PostgreSQL restarted under a running server: health goes NOT_SERVING then SERVING, clients
//! see UNAVAILABLE meanwhile, nothing acknowledged is lost, and a live subscriber resumes by
//! itself on the same call.

use std::time::{Duration, Instant};

use highwater::{embedded_pg::EmbeddedPostgres, pb};
use tokio::sync::mpsc;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;

use crate::helpers::*;

/// Appends one event, retrying while the server says UNAVAILABLE; returns its position and
/// whether UNAVAILABLE was seen.
async fn append_retrying(
    client: &mut highwater::pb::event_store_service_client::EventStoreServiceClient<
        tonic::transport::Channel,
    >,
    n: u32,
) -> (u64, bool) {
    let event = json_event("Tick", &format!("{{\"n\":{n}}}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut saw_unavailable = false;
    loop {
        // The same event id on every try: a retry of an append that did commit is a replay.
        match client
            .append(append_request("ticks", None, vec![event.clone()]))
            .await
        {
            Ok(response) => return (response.into_inner().last_position, saw_unavailable),
            Err(status) => {
                assert_eq!(status.code(), Code::Unavailable, "{status:?}");
                saw_unavailable = true;
                assert!(Instant::now() < deadline, "the server never came back");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_postgresql_restart_is_survived_by_appends_health_and_live_subscribers() {
    let folder = tempfile::Builder::new()
        .prefix("hw-restart-")
        .tempdir_in("/tmp")
        .unwrap();
    let postgres = EmbeddedPostgres::start(folder.path(), None).await.unwrap();
    let url = format!(
        "postgres://highwater@localhost/restart?host={}&port=5432",
        postgres.socket_dir().display()
    );
    let server = RunningServer::start(config_for(&url, &[])).await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let mut client = server.client().await;

    // A live subscriber from the start, on one call for the whole test.
    let mut subscription = client
        .subscribe_all(pb::SubscribeAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    let (positions, mut received) = mpsc::unbounded_channel();
    let subscriber = tokio::spawn(async move {
        while let Ok(Some(message)) = subscription.message().await {
            if let Some(pb::subscribe_all_response::Content::Event(event)) = message.content {
                let _ = positions.send(event.position);
            }
        }
    });

    let mut acknowledged = Vec::new();
    for n in 0..20 {
        acknowledged.push(append_retrying(&mut client, n).await.0);
    }

    postgres.stop().await.unwrap();
    server
        .wait_for_health(ServingStatus::NotServing, Duration::from_secs(15))
        .await;
    let status = client
        .append(append_request(
            "ticks",
            None,
            vec![json_event("Tick", "{}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");

    let postgres = EmbeddedPostgres::start(folder.path(), None).await.unwrap();
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    for n in 20..40 {
        acknowledged.push(append_retrying(&mut client, n).await.0);
    }

    // Everything acknowledged is there, densely, once.
    let log = read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    let logged: Vec<u64> = log.iter().map(|e| e.position).collect();
    assert_eq!(logged, (1..=40).collect::<Vec<_>>());
    assert_eq!(acknowledged, logged);
    // The subscriber, still on its first call, got all of it in order.
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 40 {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, received.recv()).await {
            Ok(Some(position)) => seen.push(position),
            _ => panic!("the subscriber stopped at {seen:?}"),
        }
    }
    assert_eq!(seen, logged);

    subscriber.abort();
    server.stop().await.unwrap();
    postgres.stop().await.unwrap();
}
