use std::time::Duration;

use highwater::pb::{self, ExpectedState};
use tokio::{
    io::copy_bidirectional,
    net::{TcpListener, TcpStream, UnixStream},
    sync::watch,
};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_reflection::pb::v1::{
    ServerReflectionRequest, server_reflection_client::ServerReflectionClient,
    server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
};

use crate::helpers::*;

#[tokio::test]
async fn reflection_lists_the_event_store() {
    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(
        tonic::transport::Channel::from_shared(app.server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let response = responses
        .message()
        .await
        .unwrap()
        .expect("one reflection response");
    let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
        panic!("unexpected reflection response: {response:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(
        names.contains(&"highwater.v1.EventStoreService".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"grpc.health.v1.Health".to_string()),
        "{names:?}"
    );
}

/// The google.rpc error details the errors carry are served too, so that generic tools (grpcurl,
/// Postman) can decode an `ErrorInfo` or a `BadRequest`.
#[tokio::test]
async fn reflection_serves_the_error_detail_types() {
    use prost::Message;

    let app = TestApp::spawn().await;
    let mut client = ServerReflectionClient::new(
        tonic::transport::Channel::from_shared(app.server.endpoint())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    );
    for symbol in [
        "google.rpc.ErrorInfo",
        "google.rpc.BadRequest",
        "highwater.v1.Snapshot",
    ] {
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(symbol.into())),
        };
        let response = client
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .unwrap()
            .into_inner()
            .message()
            .await
            .unwrap()
            .expect("one reflection response");
        let Some(MessageResponse::FileDescriptorResponse(files)) = response.message_response else {
            panic!("{symbol}: unexpected reflection response: {response:?}");
        };
        let (package, message) = symbol.rsplit_once('.').unwrap();
        let found = files.file_descriptor_proto.iter().any(|bytes| {
            let file = prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap();
            file.package() == package && file.message_type.iter().any(|m| m.name() == message)
        });
        assert!(found, "{symbol} not in the files served");
    }
}

#[tokio::test]
async fn an_acknowledged_append_survives_a_graceful_shutdown_and_restart() {
    let mut app = TestApp::spawn().await;
    let event = json_event("Kept", "{\"n\":1}");
    let acknowledged = app
        .append(append_request("durable", None, vec![event.clone()]))
        .await
        .unwrap();
    let mut app = app.restart().await;
    let stored = app
        .read_stream("durable", 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!(
        (stored[0].id.as_str(), stored[0].position),
        (event.id.as_str(), acknowledged.last_position)
    );
    // The restarted server continues the same log.
    let next = app
        .append(append_request(
            "durable",
            state(ExpectedState::StreamExists),
            vec![json_event("E", "{}")],
        ))
        .await
        .unwrap();
    assert_eq!(next.last_position, acknowledged.last_position + 1);
}

#[tokio::test]
async fn shutdown_answers_the_appends_in_flight() {
    let app = TestApp::spawn().await;
    let mut tasks = Vec::new();
    for writer in 0..8 {
        let mut client = app.server.client().await;
        tasks.push(tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            for _ in 0..200 {
                let event = json_event("E", "{}");
                match client
                    .append(append_request(
                        &format!("w-{writer}"),
                        None,
                        vec![event.clone()],
                    ))
                    .await
                {
                    Ok(_) => acknowledged.push(event.id),
                    Err(_) => break,
                }
            }
            acknowledged
        }));
    }
    tokio::time::sleep(Duration::from_millis(150)).await;
    let TestApp {
        server,
        database,
        client,
    } = app;
    drop(client);
    server.stop().await.expect("graceful stop");
    let mut acknowledged = Vec::new();
    for task in tasks {
        // Every caller got an answer: no task is left waiting.
        acknowledged.extend(
            tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("answered")
                .unwrap(),
        );
    }
    assert!(!acknowledged.is_empty());

    let server = RunningServer::start(config_for(&database.url, &[])).await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let mut client = server.client().await;
    let stored: std::collections::HashSet<String> =
        read_all_from(&mut client, 0, pb::Direction::Forwards, 0)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged event {id} was lost");
    }
}

#[tokio::test]
async fn two_servers_started_at_once_on_a_new_database_both_come_up() {
    let database = TestDatabase::new();
    let (first, second) = tokio::join!(
        RunningServer::start(config_for(&database.url, &[])),
        RunningServer::start(config_for(&database.url, &[])),
    );
    tokio::join!(
        first.wait_for_health(ServingStatus::Serving, Duration::from_secs(30)),
        second.wait_for_health(ServingStatus::Serving, Duration::from_secs(30)),
    );
    let mut a = first.client().await;
    let mut b = second.client().await;
    a.append(append_request("s", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    let seen = read_all_from(&mut b, 0, pb::Direction::Forwards, 0)
        .await
        .unwrap();
    assert_eq!(seen.len(), 1);
    first.stop().await.unwrap();
    second.stop().await.unwrap();
}

/// A TCP proxy in front of the test database that can be switched off, cutting every
/// connection through it, to make the database unreachable for the server under test.
struct SwitchableProxy {
    port: u16,
    /// True while the proxy passes connections through.
    switch: watch::Sender<bool>,
}

impl SwitchableProxy {
    async fn start(initially_on: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (switch, on) = watch::channel(initially_on);
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut on = on.clone();
                if !*on.borrow() {
                    continue; // refused: dropped at once
                }
                tokio::spawn(async move {
                    let Some(upstream) = connect_upstream().await else {
                        return;
                    };
                    tokio::select! {
                        _ = on.wait_for(|on| !*on) => {}
                        _ = async {
                            match upstream {
                                Upstream::Tcp(mut s) => { let _ = copy_bidirectional(&mut inbound, &mut s).await; }
                                Upstream::Unix(mut s) => { let _ = copy_bidirectional(&mut inbound, &mut s).await; }
                            }
                        } => {}
                    }
                });
            }
        });
        Self { port, switch }
    }

    fn set(&self, on: bool) {
        self.switch.send_replace(on);
    }

    /// The test database reached through the proxy.
    fn url(&self, database: &str) -> String {
        format!(
            "postgres://{}@127.0.0.1:{}/{database}",
            upstream_user(),
            self.port
        )
    }
}

enum Upstream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

fn upstream_options() -> sqlx::postgres::PgConnectOptions {
    admin_url().parse().unwrap()
}

fn upstream_user() -> String {
    upstream_options().get_username().to_string()
}

async fn connect_upstream() -> Option<Upstream> {
    let options = upstream_options();
    match options.get_socket() {
        Some(dir) => UnixStream::connect(dir.join(format!(".s.PGSQL.{}", options.get_port())))
            .await
            .ok()
            .map(Upstream::Unix),
        None => TcpStream::connect((options.get_host(), options.get_port()))
            .await
            .ok()
            .map(Upstream::Tcp),
    }
}

#[tokio::test]
async fn health_follows_readiness_and_database_reachability() {
    let database = TestDatabase::new();
    let proxy = SwitchableProxy::start(false).await;
    let server = RunningServer::start(config_for(&proxy.url(&database.name), &[])).await;

    // Database unreachable at start: the server answers, but is not serving.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(server.health().await, Some(ServingStatus::NotServing));
    let mut client = server.client().await;
    let status = client
        .append(append_request("s", None, vec![json_event("E", "{}")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);

    // Reachable: migrations run, then SERVING.
    proxy.set(true);
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    client
        .append(append_request("s", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();

    // Lost: NOT_SERVING, and appends fail as unavailable rather than hang.
    proxy.set(false);
    server
        .wait_for_health(ServingStatus::NotServing, Duration::from_secs(15))
        .await;
    let status = client
        .append(append_request("s", None, vec![json_event("E", "{}")]))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");

    // Back: SERVING again, and appends work.
    proxy.set(true);
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(15))
        .await;
    let ok = client
        .append(append_request("s", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    assert_eq!(ok.into_inner().last_revision, 1);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn connections_idle_past_the_timeout_are_closed_and_open_calls_keep_theirs() {
    use std::sync::atomic::Ordering;
    use tokio::io::AsyncReadExt;
    let closed = || {
        highwater_core::metrics::RECORDED
            .idle_connections_closed
            .load(Ordering::Relaxed)
    };
    let app = TestApp::spawn_with(&["--idle-timeout-secs", "1"]).await;

    // A connection that never makes a call is closed after the timeout.
    let started = std::time::Instant::now();
    let mut raw = TcpStream::connect(app.server.address).await.unwrap();
    let mut buffer = [0u8; 256];
    loop {
        let read = tokio::time::timeout(Duration::from_secs(10), raw.read(&mut buffer))
            .await
            .expect("the server closes an idle connection within 10 s");
        if matches!(read, Ok(0) | Err(_)) {
            break;
        }
    }
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );

    // A subscription is a call in progress: its connection outlives the timeout and carries
    // other calls after it.
    // A client on a connection of its own.
    let mut client =
        pb::event_store_service_client::EventStoreServiceClient::connect(app.server.endpoint())
            .await
            .unwrap();
    let mut subscription = client
        .subscribe_all(pb::SubscribeAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let before = closed();
    let appended = client
        .append(append_request("idle", None, vec![json_event("E", "{}")]))
        .await
        .expect("the connection is still open")
        .into_inner();
    assert_eq!(
        next_event(&mut subscription).await.position,
        appended.last_position
    );

    // Once its calls end, that connection is closed too, and the client's next call reconnects.
    drop(subscription);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while closed() == before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no idle close within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    client
        .append(append_request("idle", None, vec![json_event("E", "{}")]))
        .await
        .expect("a call after the close reconnects");
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_carrying_the_request_id() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let database = TestDatabase::new();
    let port = free_port();
    let mut server = highwater()
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(["--database-url", &database.url])
        .args(["--log-format", "json", "--log-level", "info"])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    // Every line is a JSON object; returns the first whose message is `message`.
    let mut next_with = async |message: &str| -> serde_json::Value {
        loop {
            let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
                .await
                .expect("a log line within 30 s")
                .unwrap()
                .expect("the server is still logging");
            let object: serde_json::Value = serde_json::from_str(&line)
                .unwrap_or_else(|error| panic!("not JSON ({error}): {line}"));
            assert!(object["level"].is_string(), "{line}");
            if object["message"] == message {
                return object;
            }
        }
    };
    let ready = next_with("ready").await;
    assert_eq!(ready["level"], "INFO");

    let mut client = pb::event_store_service_client::EventStoreServiceClient::connect(format!(
        "http://127.0.0.1:{port}"
    ))
    .await
    .unwrap();
    client
        .append(append_request("logged", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    let mut delete = tonic::Request::new(pb::DeleteStreamRequest {
        stream: "logged".into(),
        expected: None,
    });
    delete
        .metadata_mut()
        .insert("x-request-id", "req-json-7".parse().unwrap());
    client.delete_stream(delete).await.unwrap();

    let deleted = next_with("stream deleted").await;
    assert_eq!(deleted["stream"], "logged");
    let spans = deleted["spans"].as_array().expect("the spans of the line");
    let rpc = spans
        .iter()
        .find(|span| span["name"] == "rpc")
        .unwrap_or_else(|| panic!("no rpc span: {deleted}"));
    assert_eq!(rpc["request_id"], "req-json-7");
    assert_eq!(
        rpc["method"],
        "/highwater.v1.EventStoreService/DeleteStream"
    );
    server.start_kill().unwrap();
    let _ = server.wait().await;
}

#[tokio::test]
async fn calls_over_the_streams_per_connection_limit_wait_for_a_free_stream() {
    let app = TestApp::spawn_with(&["--max-streams-per-connection", "2"]).await;
    // A client on a connection of its own.
    let mut client =
        pb::event_store_service_client::EventStoreServiceClient::connect(app.server.endpoint())
            .await
            .unwrap();
    let from_end = || pb::SubscribeAllRequest {
        start: Some(pb::subscribe_all_request::Start::End(())),
        ..Default::default()
    };
    let first = client.subscribe_all(from_end()).await.unwrap();
    let _second = client.subscribe_all(from_end()).await.unwrap();
    // The connection has no free stream: a third call waits for one.
    let mut waiting = client.clone();
    let third = tokio::spawn(async move {
        waiting
            .append(append_request("streams", None, vec![json_event("E", "{}")]))
            .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third call ran beside two open ones"
    );
    drop(first);
    let appended = tokio::time::timeout(Duration::from_secs(10), third)
        .await
        .expect("the third call runs once a stream is free")
        .unwrap()
        .unwrap();
    assert_eq!(appended.into_inner().last_position, 1);
}
