//! The writer and a projection catalog that changes under it (docs/ARCHITECTURE.md, "The
//! writer"): groups encoded with the old catalog are refused under `log_head` and written again
//! with the new one, so no append is lost, applied twice or answered with an error.

use std::time::Duration;

use highwater::pb;

use crate::{
    helpers::*,
    projection::{admin, register_toml, wait_active},
};

const COUNTER: &str = r#"
name = "ticks"
mode = "inline"
setup = "CREATE TABLE {{table}} (k text PRIMARY KEY, n bigint NOT NULL)"
[handlers]
Tick = "INSERT INTO {{table}} VALUES ($stream, 1) ON CONFLICT (k) DO UPDATE SET n = {{table}}.n + 1"
"#;

#[tokio::test]
async fn appends_in_flight_while_an_inline_projection_goes_live_are_all_written_and_applied() {
    let app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    const APPENDERS: usize = 6;
    const APPENDS: usize = 150;
    let appenders: Vec<_> = (0..APPENDERS)
        .map(|worker| {
            let mut client = app.client.clone();
            tokio::spawn(async move {
                for i in 0..APPENDS {
                    let expected = if i == 0 {
                        state(pb::ExpectedState::NoStream)
                    } else {
                        exact(i as u64 - 1)
                    };
                    client
                        .append(append_request(
                            &format!("t-{worker}"),
                            expected,
                            vec![json_event("Tick", "{}")],
                        ))
                        .await
                        .unwrap_or_else(|status| panic!("append {worker}/{i}: {status:?}"));
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(100)).await;
    admin
        .register_projection(register_toml(COUNTER))
        .await
        .unwrap();
    for appender in appenders {
        appender.await.unwrap();
    }
    wait_active(&mut admin, "ticks", 1, Duration::from_secs(30)).await;
    let mut connection = app.database.connect().await;
    let counts: Vec<(String, i64)> =
        sqlx::query_as("SELECT k, n FROM projections.ticks ORDER BY k")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    let expected: Vec<(String, i64)> = (0..APPENDERS)
        .map(|worker| (format!("t-{worker}"), APPENDS as i64))
        .collect();
    assert_eq!(counts, expected, "every tick applied once");
}
