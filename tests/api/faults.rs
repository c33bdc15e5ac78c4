//! Fault proofs: a server killed with SIGKILL while 32 clients append loses nothing it
//! acknowledged, writes no half request, and leaves positions dense.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use highwater::pb::{self, event_store_service_client::EventStoreServiceClient};
use tokio::process::{Child, Command};
use tonic::transport::Channel;

use crate::helpers::*;

/// The server binary as its own process, on `database_url`, at `port`.
fn spawn_server(database_url: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_highwater"))
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
