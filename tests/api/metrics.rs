//! The Prometheus endpoint: counters move with appends, lag is read per durable subscription and
//! per projection.

use std::net::SocketAddr;

use highwater::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::*;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/projections");

/// GET /metrics over plain HTTP/1.1; returns the status line and the body.
async fn scrape(address: SocketAddr) -> (String, String) {
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    stream
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: metrics\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    (head.lines().next().unwrap().to_string(), body.to_string())
}

/// The value of one series (name with labels, exactly as rendered).
fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
        .parse()
        .unwrap()
}

#[tokio::test]
async fn metrics_count_appends_and_show_subscription_and_projection_lag() {
    let mut app =
        TestApp::spawn_with(&["--metrics-listen", "127.0.0.1:0", "--projections", EXAMPLES]).await;
    let address = app.server.metrics.expect("a metrics address");
    let (_, before) = scrape(address).await;
    for cart in 0..3 {
        app.append(append_request(
            &format!("cart-{cart}"),
            None,
            vec![json_event("ProductAdded", r#"{"sku":"a","quantity":1}"#)],
        ))
        .await
        .unwrap();
    }
    let conflict = app
        .append(append_request(
            "cart-0",
            exact(7),
            vec![json_event("E", "{}")],
        ))
        .await;
    assert!(conflict.is_err());
    app.client
        .save_checkpoint(pb::SaveCheckpointRequest {
            subscription: "audit".into(),
            position: 1,
        })
        .await
        .unwrap();

    // The head is what this server's hub has seen: it follows commits within milliseconds.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let (status, after) = loop {
        let (status, body) = scrape(address).await;
        if value(&body, "highwater_log_head_position") == 3.0 {
            break (status, body);
        }
        assert!(std::time::Instant::now() < deadline, "head not 3:\n{body}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.contains("200"), "{status}");
    assert_eq!(value(&after, "highwater_ready"), 1.0);
    // Counters are per process, which other tests share: compare with the earlier scrape.
    let moved = |series: &str| value(&after, series) - value(&before, series);
    assert!(moved("highwater_appends_total") >= 3.0);
    assert!(moved("highwater_events_appended_total") >= 3.0);
    assert!(moved("highwater_append_errors_total") >= 1.0);
    assert!(moved("highwater_append_duration_seconds_count") >= 4.0);
    assert!(moved("highwater_append_group_requests_count") >= 3.0);
    assert_eq!(
        value(
            &after,
            "highwater_subscription_lag_events{subscription=\"audit\"}"
        ),
        2.0
    );
    // Behind by events appended moments ago: a small, positive age.
    let lag_seconds = value(
        &after,
        "highwater_subscription_lag_seconds{subscription=\"audit\"}",
    );
    assert!(lag_seconds > 0.0 && lag_seconds < 60.0, "{lag_seconds}");
    // Inline: at most the events appended while its first version was still building.
    assert!(
        value(
            &after,
            "highwater_projection_lag_events{projection=\"cart_summary\"}"
        ) <= 3.0
    );
    assert_eq!(
        value(
            &after,
            "highwater_projection_dead_letters{projection=\"cart_summary\"}"
        ),
        0.0
    );
    assert_eq!(value(&after, "highwater_metrics_scrape_errors"), 0.0);
    assert!(after.contains("# TYPE highwater_append_duration_seconds histogram"));
}

/// Per-RPC series: started, handled by code, time and in flight, per method; a stream is in
/// flight until it ends, and one the client drops is CANCELLED.
#[tokio::test]
async fn every_rpc_is_counted_by_method_and_code_and_process_metrics_are_served() {
    let mut app = TestApp::spawn_with(&["--metrics-listen", "127.0.0.1:0"]).await;
    let address = app.server.metrics.expect("a metrics address");
    for n in 0..2 {
        app.append(append_request(
            "counted",
            None,
            vec![json_event("E", &n.to_string())],
        ))
        .await
        .unwrap();
    }
    let invalid = app
        .append(append_request("", None, vec![json_event("E", "{}")]))
        .await;
    assert_eq!(invalid.unwrap_err().code(), tonic::Code::InvalidArgument);
    let missing = app
        .read_stream("missing", 0, pb::Direction::Forwards, 0)
        .await;
    assert_eq!(missing.unwrap_err().code(), tonic::Code::NotFound);
    assert_eq!(app.read_all().await.len(), 2);

    let store = r#"grpc_service="highwater.v1.EventStoreService""#;
    let series = |name: &str, method: &str, code: Option<&str>| match code {
        Some(code) => format!(r#"{name}{{{store},grpc_method="{method}",grpc_code="{code}"}}"#),
        None => format!(r#"{name}{{{store},grpc_method="{method}"}}"#),
    };
    let mut subscription = app
        .client
        .subscribe_all(pb::SubscribeAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    subscription.message().await.unwrap();
    let (_, open) = scrape(address).await;
    assert_eq!(
        value(
            &open,
            &series("grpc_server_in_flight", "SubscribeAll", None)
        ),
        1.0
    );
    drop(subscription);

    let handled = |body: &str, method, code| {
        value(
            body,
            &series("grpc_server_handled_total", method, Some(code)),
        )
    };
    let mut body = String::new();
    for _ in 0..100 {
        body = scrape(address).await.1;
        if body.contains(&series(
            "grpc_server_handled_total",
            "SubscribeAll",
            Some("CANCELLED"),
        )) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(handled(&body, "Append", "OK"), 2.0);
    assert_eq!(handled(&body, "Append", "INVALID_ARGUMENT"), 1.0);
    assert_eq!(handled(&body, "ReadStream", "NOT_FOUND"), 1.0);
    assert_eq!(handled(&body, "ReadAll", "OK"), 1.0);
    assert_eq!(handled(&body, "SubscribeAll", "CANCELLED"), 1.0);
    assert_eq!(
        value(&body, &series("grpc_server_started_total", "Append", None)),
        3.0
    );
    assert_eq!(
        value(
            &body,
            &series("grpc_server_in_flight", "SubscribeAll", None)
        ),
        0.0
    );
    assert_eq!(
        value(
            &body,
            &series("grpc_server_handling_seconds_count", "Append", None)
        ),
        3.0
    );
    assert!(
        body.contains("# TYPE grpc_server_handling_seconds histogram"),
        "{body}"
    );
    // Health checks are counted under their own service; a method no one serves is not a label.
    assert!(
        body.contains(r#"grpc_service="grpc.health.v1.Health",grpc_method="Check""#),
        "{body}"
    );
    assert!(
        body.contains(
            r#"grpc_service="grpc.reflection.v1.ServerReflection",grpc_method="ServerReflectionInfo""#
        ),
        "{body}"
    );
    assert!(
        body.contains(r#"grpc_server_started_total{grpc_service="other",grpc_method="other"}"#),
        "{body}"
    );

    for name in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_max_fds",
        "process_start_time_seconds",
    ] {
        assert!(value(&body, name) > 0.0, "{name}");
    }
}
