//! Fault proofs: a server killed with SIGKILL while 32 clients append loses nothing it
//! acknowledged, writes no half request, and leaves positions dense; a second server on the same
//! database goes on serving appends and subscriptions when the first is killed.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use highwater::pb::{self, event_store_service_client::EventStoreServiceClient};
use tokio::process::Child;
use tonic::transport::Channel;

use crate::helpers::*;

/// The server binary as its own process, on `database_url`, at `port`.
fn spawn_server(database_url: &str, port: u16) -> Child {
    highwater()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", database_url, "--log-level", "warn"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start the server")
}

async fn connect_when_ready(port: u16) -> EventStoreServiceClient<Channel> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(channel) = Channel::from_shared(format!("http://127.0.0.1:{port}"))
            .unwrap()
            .connect()
            .await
        {
            let mut client = EventStoreServiceClient::new(channel);
            let probe = pb::ReadAllRequest {
                original: false,
                after_position: 0,
                direction: 0,
                max_count: 1,
            };
            if client.read_all(probe).await.is_ok() {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "the server did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_under_load_loses_nothing_acknowledged_and_writes_no_half_request() {
    let database = TestDatabase::new();
    let port = free_port();
    let mut server = spawn_server(&database.url, port);
    let client = connect_when_ready(port).await;

    // Every acknowledged request: its first event id, and the positions it was given.
    let acknowledged: Arc<Mutex<BTreeMap<String, (u64, u64)>>> = Arc::default();
    let mut writers = Vec::new();
    for writer in 0..32 {
        let mut client = client.clone();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                // Two events per request: a half-written request would show as a lone event.
                let events = vec![json_event("First", "{}"), json_event("Second", "{}")];
                let id = events[0].id.clone();
                let request = append_request(&format!("fault-{writer}"), None, events);
                match client.append(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        acknowledged
                            .lock()
                            .unwrap()
                            .insert(id, (response.first_position, response.last_position));
                    }
                    Err(_) => return n,
                }
            }
            unreachable!()
        }));
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    server.start_kill().unwrap();
    server.wait().await.unwrap();
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(
        acknowledged.len() > 32,
        "too few appends before the kill: {}",
        acknowledged.len()
    );

    let _restarted = spawn_server(&database.url, port);
    let mut client = connect_when_ready(port).await;
    let mut stream = client
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut log = Vec::new();
    while let Some(message) = stream.message().await.unwrap() {
        log.push(message.event.unwrap());
    }
    // Dense positions from 1.
    for (index, event) in log.iter().enumerate() {
        assert_eq!(event.position, index as u64 + 1, "positions are dense");
    }
    // Whole requests only: every First is followed by its Second on the same stream.
    for pair in log.chunks(2) {
        assert_eq!(pair.len(), 2, "a lone event at the end of the log");
        assert_eq!(
            (pair[0].r#type.as_str(), pair[1].r#type.as_str()),
            ("First", "Second")
        );
        assert_eq!(pair[0].stream, pair[1].stream);
        assert_eq!(pair[1].revision, pair[0].revision + 1);
    }
    // Every acknowledged request is there, where it was acknowledged.
    let by_id: BTreeMap<&str, u64> = log.iter().map(|e| (e.id.as_str(), e.position)).collect();
    for (id, (first, last)) in &acknowledged {
        assert_eq!(
            by_id.get(id.as_str()),
            Some(first),
            "acknowledged append {id} is lost"
        );
        assert_eq!(last - first, 1);
    }
    // At most the requests in flight at the kill were written without an acknowledgement.
    let written: BTreeSet<&str> = log.iter().step_by(2).map(|e| e.id.as_str()).collect();
    assert!(written.len() >= acknowledged.len());
    assert!(written.len() - acknowledged.len() <= 32);
}

type Subscription = tonic::Streaming<pb::SubscribeAllResponse>;

async fn subscribe_after(
    client: &mut EventStoreServiceClient<Channel>,
    start: pb::subscribe_all_request::Start,
) -> Subscription {
    client
        .subscribe_all(pb::SubscribeAllRequest {
            start: Some(start),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Positions of the events received until the subscription reports it is caught up at `until`
/// or has delivered it.
async fn positions_through(subscription: &mut Subscription, until: u64) -> Vec<u64> {
    use pb::subscribe_all_response::Content;
    let mut positions = Vec::new();
    loop {
        match next_message(subscription).await.content {
            Some(Content::Event(event)) => {
                positions.push(event.position);
                if event.position >= until {
                    return positions;
                }
            }
            Some(Content::CaughtUp(caught_up)) if caught_up.position >= until => {
                return positions;
            }
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_one_of_two_servers_is_killed_the_other_serves_appends_and_subscriptions() {
    let database = TestDatabase::new();
    let (port_a, port_b) = (free_port(), free_port());
    let mut a = spawn_server(&database.url, port_a);
    let mut b = spawn_server(&database.url, port_b);
    let mut client_a = connect_when_ready(port_a).await;
    let mut client_b = connect_when_ready(port_b).await;
    for i in 0..50 {
        let client = if i % 2 == 0 {
            &mut client_a
        } else {
            &mut client_b
        };
        client
            .append(append_request(
                "two-servers",
                None,
                vec![json_event("E", "{}")],
            ))
            .await
            .unwrap();
    }
    use pb::subscribe_all_request::Start;
    // A subscriber on each server, caught up with the 50 events.
    let mut on_a = subscribe_after(&mut client_a, Start::AfterPosition(0)).await;
    let mut on_b = subscribe_after(&mut client_b, Start::AfterPosition(0)).await;
    let first_fifty: Vec<u64> = (1..=50).collect();
    assert_eq!(positions_through(&mut on_a, 50).await, first_fifty);
    assert_eq!(positions_through(&mut on_b, 50).await, first_fifty);

    a.start_kill().unwrap();
    a.wait().await.unwrap();
    // Past what the killed server sent before it died, its subscription ends.
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Ok(Some(message)) = on_a.message().await {
            assert!(
                !matches!(
                    message.content,
                    Some(pb::subscribe_all_response::Content::Event(_))
                ),
                "an event after the kill: {message:?}"
            );
        }
    })
    .await
    .expect("the killed server's subscription ends");

    // The survivor appends, and its subscriber receives, in order.
    for _ in 0..20 {
        client_b
            .append(append_request(
                "two-servers",
                None,
                vec![json_event("E", "{}")],
            ))
            .await
            .expect("the other server keeps appending");
    }
    let next_twenty: Vec<u64> = (51..=70).collect();
    assert_eq!(positions_through(&mut on_b, 70).await, next_twenty);
    // The killed server's subscriber resumes on the survivor after its last position.
    let mut resumed = subscribe_after(&mut client_b, Start::AfterPosition(50)).await;
    assert_eq!(positions_through(&mut resumed, 70).await, next_twenty);
    b.start_kill().unwrap();
    b.wait().await.unwrap();
}
