//! The binary as a user runs it: no DATABASE_URL, a private PostgreSQL in --data-dir.

use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use highwater::pb::{
    self, admin_service_client::AdminServiceClient,
    event_store_service_client::EventStoreServiceClient,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::{
    helpers::*,
    projection::{register_toml, wait_active},
};

/// The binary as a user's shell starts it: no DATABASE_URL, no RUST_LOG.
fn as_user() -> Command {
    let mut command = highwater_blocking();
    command
        .env_remove("DATABASE_URL")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

fn serve(data_dir: &Path, port: u16) -> Child {
    as_user()
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data-dir",
        ])
        .arg(data_dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start highwater")
}

async fn wait_serving(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(channel) =
            tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
                .unwrap()
                .connect()
                .await
        {
            let mut client = HealthClient::new(channel);
            if let Ok(response) = client
                .check(HealthCheckRequest {
                    service: "highwater.v1.EventStoreService".into(),
                })
                .await
                && response.into_inner().status == ServingStatus::Serving as i32
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// SIGTERM, then waits without blocking the runtime (client connections must see the GOAWAY).
async fn terminate(mut child: Child) -> std::process::ExitStatus {
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "server did not stop");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn without_a_database_url_it_runs_a_private_postgres_kept_across_restarts() {
    let data_dir = tempfile::Builder::new()
        .prefix("hw-embedded-")
        .tempdir_in("/tmp")
        .unwrap();
    let port = free_port();
    let server = serve(data_dir.path(), port);
    wait_serving(port).await;
    let mut client = EventStoreServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let event = json_event("Kept", "{\"across\":\"restarts\"}");
    client
        .append(append_request("embedded", None, vec![event.clone()]))
        .await
        .unwrap();
    drop(client);

    let status = terminate(server).await;
    assert!(status.success(), "SIGTERM exits 0, got {status}");
    assert!(
        !data_dir.path().join("postgres/postmaster.pid").exists(),
        "the private PostgreSQL was stopped with the server"
    );

    let port = free_port();
    let server = serve(data_dir.path(), port);
    wait_serving(port).await;
    let mut client = EventStoreServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let request = pb::ReadStreamRequest {
        original: false,
        stream: "embedded".into(),
        from_revision: 0,
        direction: 0,
        max_count: 0,
        from_latest_snapshot: false,
    };
    let mut stream = client.read_stream(request).await.unwrap().into_inner();
    let stored = stream
        .message()
        .await
        .unwrap()
        .expect("the event survived the restart")
        .event
        .unwrap();
    assert_eq!(stored.id, event.id);
    drop(client);

    // The sandbox runs projections here too: the private cluster's superuser took the advisory
    // locks from every other role (migration 0019), which the server's own role cannot do.
    let mut admin = AdminServiceClient::connect(format!("http://127.0.0.1:{port}"))
        .await
        .unwrap();
    let toml = "name = \"kept\"\nmode = \"inline\"\nsetup = \"CREATE TABLE {{table}} (k text PRIMARY KEY)\"\n\
                [handlers]\nKept = \"INSERT INTO {{table}} VALUES ($stream) ON CONFLICT DO NOTHING\"\n";
    admin
        .register_projection(register_toml(toml))
        .await
        .expect("a projection registers in the private cluster");
    wait_active(&mut admin, "kept", 1, Duration::from_secs(30)).await;
    drop(admin);
    assert!(terminate(server).await.success());
}

#[test]
fn without_postgres_binaries_it_says_how_to_get_them() {
    let empty = tempfile::tempdir().unwrap();
    let output = as_user()
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(empty.path().join("data"))
        .arg("--postgres-bin-dir")
        .arg(empty.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no PostgreSQL server binaries"), "{stderr}");
    assert!(
        stderr.contains("apt-get install postgresql") && stderr.contains("DATABASE_URL"),
        "{stderr}"
    );
}

#[test]
fn migrate_applies_the_schema_and_exits() {
    let database = TestDatabase::new();
    let output = as_user()
        .args(["migrate", "--database-url", &database.url])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let head: i64 = runtime.block_on(async {
        let mut connection = database.connect().await;
        sqlx::query_scalar("SELECT position FROM log_head")
            .fetch_one(&mut connection)
            .await
            .unwrap()
    });
    assert_eq!(head, 0);
}
