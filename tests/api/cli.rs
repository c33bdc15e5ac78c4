//! The command-line client (`highwater append`, `read`, `tail`, `rebuild`...) against a real
//! server: the built binary, run as a user would.

use std::{process::Stdio, time::Duration};

use serde_json::Value;
use tokio::{io::AsyncWriteExt, process::Command};

use crate::helpers::*;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/projections");

/// What a command printed and how it exited.
struct Run {
    success: bool,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Standard output as JSON lines.
    fn json(&self) -> Vec<Value> {
        assert!(self.success, "command failed: {}", self.stderr);
        self.stdout
            .lines()
            .map(|line| serde_json::from_str(line).expect("a JSON line"))
            .collect()
    }
}

fn command(server: &str, args: &[&str]) -> Command {
    let mut command = highwater();
    command
        .args(args)
        .args(["--server", server])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs a client command against `server`, feeding `stdin`.
async fn run_on(server: &str, args: &[&str], stdin: &str) -> Run {
    let mut child = command(server, args).spawn().expect("run highwater");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
        .await
        .expect("the command finished")
        .unwrap();
    Run {
        success: output.status.success(),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

async fn run(app: &TestApp, args: &[&str]) -> Run {
    run_on(&app.server.endpoint(), args, "").await
}

/// The command failed, and its error starts as given (the gRPC code and the message's start).
fn assert_fails_with(run: &Run, start: &str) {
    assert!(!run.success, "succeeded: {}", run.stdout);
    assert!(run.stderr.starts_with(start), "{}", run.stderr);
}

fn positions(events: &[Value]) -> Vec<u64> {
    events
        .iter()
        .map(|e| e["position"].as_u64().unwrap())
        .collect()
}

#[tokio::test]
async fn append_and_read_round_trip_and_errors_print_the_grpc_code() {
    let app = TestApp::spawn().await;
    let server = app.server.endpoint();

    let first = run(
        &app,
        &[
            "append",
            "cart-1",
            "--type",
            "ProductAdded",
            "--data",
            r#"{"sku":"apple","quantity":2}"#,
        ],
    )
    .await;
    assert!(first.success, "{}", first.stderr);
    assert!(
        first.stdout.contains("revision 0, position 1"),
        "{}",
        first.stdout
    );
    // Data from standard input, with an expected revision and metadata.
    let second = run_on(
        &server,
        &[
            "append",
            "cart-1",
            "--type",
            "ProductAdded",
            "--expected-revision",
            "0",
            "--metadata",
            "user=ann",
            "--json",
        ],
        r#"{"sku":"pear","quantity":1}"#,
    )
    .await;
    let appended = second.json();
    assert_eq!(appended[0]["last_revision"], 1);
    assert_eq!(appended[0]["last_position"], 2);

    let read = run(&app, &["read", "cart-1", "--json"]).await.json();
    assert_eq!(positions(&read), [1, 2]);
    assert_eq!(read[0]["data"]["sku"], "apple");
    assert_eq!(read[1]["data"]["quantity"], 1);
    assert_eq!(read[1]["metadata"]["user"], "ann");
    assert_eq!(read[1]["type"], "ProductAdded");
    let newest = run(
        &app,
        &["read", "cart-1", "--backwards", "--limit", "1", "--json"],
    )
    .await
    .json();
    assert_eq!(positions(&newest), [2]);
    let table = run(&app, &["read", "cart-1"]).await;
    assert!(table.success);
    assert!(
        table.stdout.starts_with("  POSITION  REVISION  STREAM"),
        "{}",
        table.stdout
    );
    assert!(
        table.stdout.contains(r#"{"sku":"pear","quantity":1}"#),
        "{}",
        table.stdout
    );

    run(
        &app,
        &["append", "order-9", "--type", "OrderPlaced", "--data", "{}"],
    )
    .await;
    let all = run(&app, &["read-all", "--after", "1", "--json"])
        .await
        .json();
    assert_eq!(positions(&all), [2, 3]);
    assert_eq!(all[1]["stream"], "order-9");

    let conflict = run(
        &app,
        &[
            "append",
            "cart-1",
            "--type",
            "X",
            "--data",
            "{}",
            "--expected-revision",
            "no-stream",
        ],
    )
    .await;
    assert_fails_with(&conflict, "error: ABORTED: wrong expected revision");
    let invalid = run(
        &app,
        &["append", "cart-1", "--type", "X", "--data", "{not json"],
    )
    .await;
    assert_fails_with(&invalid, "error: INVALID_ARGUMENT:");
    let missing = run(&app, &["read", "cart-404"]).await;
    assert_fails_with(&missing, "error: NOT_FOUND:");
    let bad_flag = run(
        &app,
        &[
            "append",
            "cart-1",
            "--type",
            "X",
            "--data",
            "{}",
            "--expected-revision",
            "soon",
        ],
    )
    .await;
    assert!(!bad_flag.success);
    assert!(bad_flag.stderr.contains("soon"), "{}", bad_flag.stderr);
    // Nothing of the refused appends was written.
    let log = run(&app, &["read-all", "--json"]).await.json();
    assert_eq!(positions(&log), [1, 2, 3]);

    let health = run(&app, &["health"]).await;
    assert!(health.success);
    assert_eq!(health.stdout.trim(), "SERVING");
    let unreachable = run_on(
        &format!("http://127.0.0.1:{}", free_port()),
        &["health"],
        "",
    )
    .await;
    assert_fails_with(&unreachable, "error: UNAVAILABLE:");
}

#[tokio::test]
async fn tail_follows_live_events_and_a_durable_tail_resumes_after_its_checkpoint() {
    let mut app = TestApp::spawn().await;
    for (stream, event_type) in [
        ("cart-1", "ProductAdded"),
        ("order-1", "OrderPlaced"),
        ("cart-2", "ProductAdded"),
    ] {
        app.append(append_request(
            stream,
            None,
            vec![json_event(event_type, "{}")],
        ))
        .await
        .unwrap();
    }

    let history = run(&app, &["tail", "--from", "0", "--count", "3", "--json"])
        .await
        .json();
    assert_eq!(positions(&history), [1, 2, 3]);
    let filtered = run(
        &app,
        &[
            "tail",
            "--from",
            "0",
            "--stream-prefix",
            "cart-",
            "--count",
            "2",
            "--json",
        ],
    )
    .await
    .json();
    assert_eq!(positions(&filtered), [1, 3]);
    let lines = run(
        &app,
        &[
            "tail",
            "--from",
            "0",
            "--type",
            "OrderPlaced",
            "--count",
            "1",
        ],
    )
    .await;
    assert!(lines.success, "{}", lines.stderr);
    assert_eq!(lines.stdout, "2\torder-1@0\tOrderPlaced\t{}\n");

    // A durable tail prints from its checkpoint and saves it as it goes.
    let first = run(
        &app,
        &["tail", "--subscription", "audit", "--count", "2", "--json"],
    )
    .await
    .json();
    assert_eq!(positions(&first), [1, 2]);
    let saved = run(&app, &["subscriptions", "--json"]).await.json();
    assert_eq!(saved[0]["name"], "audit");
    assert_eq!(saved[0]["position"], 2);
    assert_eq!(saved[0]["lag"], 1);
    let second = run(
        &app,
        &["tail", "--subscription", "audit", "--count", "1", "--json"],
    )
    .await
    .json();
    assert_eq!(positions(&second), [3]);

    // Without --from: only what commits after the tail started.
    let live = command(&app.server.endpoint(), &["tail", "--count", "1", "--json"])
        .spawn()
        .unwrap();
    let waiting = tokio::spawn(live.wait_with_output());
    let mut appended = Vec::new();
    while !waiting.is_finished() {
        assert!(appended.len() < 100, "the live tail printed nothing");
        let response = app
            .append(append_request(
                "live-1",
                None,
                vec![json_event("Ping", "{}")],
            ))
            .await
            .unwrap();
        appended.push(response.last_position);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let output = waiting.await.unwrap().unwrap();
    let event: Value = serde_json::from_slice(&output.stdout).unwrap();
    let position = event["position"].as_u64().unwrap();
    assert!(
        appended.contains(&position),
        "{position} is one of {appended:?}"
    );
    assert_eq!(event["stream"], "live-1");
}

#[tokio::test]
async fn rebuild_reports_progress_to_done_and_projections_show_the_new_version() {
    let mut app = TestApp::spawn_with(&["--projections", EXAMPLES]).await;
    for cart in 0..20 {
        app.append(append_request(
            &format!("cart-{cart}"),
            None,
            vec![json_event(
                "ProductAdded",
                r#"{"sku":"apple","quantity":3}"#,
            )],
        ))
        .await
        .unwrap();
    }

    let rebuild = run(&app, &["rebuild", "cart_summary"]).await;
    assert!(rebuild.success, "{}", rebuild.stderr);
    let lines: Vec<&str> = rebuild.stdout.lines().collect();
    assert!(lines[0].starts_with("starting"), "{}", rebuild.stdout);
    assert!(!rebuild.stdout.contains("version 0"), "{}", rebuild.stdout);
    assert_eq!(
        *lines.last().unwrap(),
        lines.last().unwrap().replace("\r", ""),
        "plain lines when not on a terminal"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("done: version 2 applied 20 events"),
        "{}",
        rebuild.stdout
    );

    let listed = run(&app, &["projections", "--json"]).await.json();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["name"], "cart_summary");
    assert_eq!(listed[0]["active_version"], 2);
    assert_eq!(listed[0]["applied_position"], 20);
    let table = run(&app, &["projections"]).await;
    assert!(table.stdout.starts_with("NAME"), "{}", table.stdout);
    assert!(
        table.stdout.contains("cart_summary  inline  2"),
        "{}",
        table.stdout
    );
    let detail = run(&app, &["projection", "cart_summary"]).await;
    assert!(detail.success, "{}", detail.stderr);
    assert!(
        detail.stdout.contains("projection_cart_summary.v2"),
        "{}",
        detail.stdout
    );

    let in_place = run(&app, &["rebuild", "cart_summary", "--in-place", "--json"])
        .await
        .json();
    let last = in_place.last().unwrap();
    assert_eq!(last["phase"], "done");
    assert_eq!(last["version"], 2);
    assert_eq!(last["position"], 20);

    let unknown = run(&app, &["rebuild", "nope"]).await;
    assert_fails_with(&unknown, "error: NOT_FOUND:");
    let unknown = run(&app, &["projection", "nope"]).await;
    assert_fails_with(&unknown, "error: NOT_FOUND:");
}

#[tokio::test]
async fn delete_stream_soft_then_hard_prints_what_it_did() {
    let app = TestApp::spawn().await;
    for _ in 0..2 {
        let appended = run(&app, &["append", "cart-3", "--type", "X", "--data", "{}"]).await;
        assert!(appended.success, "{}", appended.stderr);
    }
    let stale = run(
        &app,
        &["delete-stream", "cart-3", "--expected-revision", "0"],
    )
    .await;
    assert_fails_with(&stale, "error: ABORTED: wrong expected revision");
    let soft = run(
        &app,
        &["delete-stream", "cart-3", "--expected-revision", "1"],
    )
    .await;
    assert!(soft.success, "{}", soft.stderr);
    assert_eq!(
        soft.stdout.trim(),
        "deleted cart-3 through revision 1; its next event gets revision 2"
    );
    assert_fails_with(&run(&app, &["read", "cart-3"]).await, "error: NOT_FOUND:");

    let hard = run(&app, &["delete-stream", "cart-3", "--hard", "--json"])
        .await
        .json();
    assert_eq!(hard[0]["hard"], true);
    assert_eq!(hard[0]["deleted_revision"], 1);
    assert_eq!(hard[0]["erased_events"], 2);
    let refused = run(&app, &["append", "cart-3", "--type", "X", "--data", "{}"]).await;
    assert_fails_with(
        &refused,
        "error: FAILED_PRECONDITION: stream \"cart-3\" is hard-deleted",
    );
    let log = run(&app, &["read-all", "--json"]).await;
    assert!(log.success && log.stdout.is_empty(), "{}", log.stdout);
}

#[tokio::test]
async fn a_server_given_as_host_and_port_is_reached_in_plaintext() {
    let app = TestApp::spawn().await;
    let endpoint = app.server.endpoint();
    let bare = endpoint.trim_start_matches("http://");
    assert_ne!(bare, endpoint, "the test server's endpoint has a scheme");
    let appended = run_on(bare, &["append", "bare", "--type", "E", "--data", "{}"], "").await;
    assert!(appended.success, "{}", appended.stderr);
    let read = run_on(bare, &["read", "bare", "--json"], "").await.json();
    assert_eq!(read.len(), 1);
    let unreachable = run_on("127.0.0.1:1", &["read", "bare"], "").await;
    assert_fails_with(
        &unreachable,
        "error: UNAVAILABLE: cannot reach http://127.0.0.1:1",
    );
}

#[tokio::test]
async fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish", "powershell", "elvish"] {
        let output = highwater()
            .args(["completions", shell])
            .output()
            .await
            .expect("run highwater");
        assert!(
            output.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let script = String::from_utf8(output.stdout).unwrap();
        for word in ["serve", "append", "read-all", "delete-stream", "rebuild"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
    }
    // The bash script is valid bash.
    let output = highwater()
        .args(["completions", "bash"])
        .output()
        .await
        .unwrap();
    let path =
        std::env::temp_dir().join(format!("highwater-completions-{}.bash", std::process::id()));
    std::fs::write(&path, &output.stdout).unwrap();
    let checked = std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    std::fs::remove_file(&path).ok();
    assert!(
        checked.status.success(),
        "{}",
        String::from_utf8_lossy(&checked.stderr)
    );
    let refused = highwater()
        .args(["completions", "tcsh"])
        .output()
        .await
        .unwrap();
    assert!(!refused.status.success());
}

#[tokio::test]
async fn color_is_off_for_pipes_and_no_color_and_on_when_asked() {
    let app = TestApp::spawn().await;
    let server = app.server.endpoint();
    let health = |color: &'static str, no_color: bool| {
        let mut command = command(&server, &["health", "--color", color]);
        if no_color {
            command.env("NO_COLOR", "1");
        } else {
            command.env_remove("NO_COLOR");
        }
        command
    };
    let output = |mut command: Command| async move { command.output().await.unwrap() };
    let always = output(health("always", true)).await;
    assert_eq!(
        String::from_utf8(always.stdout).unwrap(),
        "\x1b[32mSERVING\x1b[0m\n"
    );
    for (choice, no_color) in [("auto", false), ("auto", true), ("never", false)] {
        let plain = output(health(choice, no_color)).await;
        assert_eq!(
            String::from_utf8(plain.stdout).unwrap(),
            "SERVING\n",
            "--color {choice}"
        );
    }
    let failed = output(command(&server, &["read", "missing", "--color", "always"])).await;
    let stderr = String::from_utf8(failed.stderr).unwrap();
    assert!(
        stderr.starts_with("\x1b[31merror\x1b[0m: NOT_FOUND"),
        "{stderr}"
    );
}

#[tokio::test]
async fn reads_and_tail_print_upcast_events_unless_asked_for_the_original() {
    let app = TestApp::spawn().await;
    let mut admin =
        highwater::pb::admin_service_client::AdminServiceClient::connect(app.server.endpoint())
            .await
            .unwrap();
    admin
        .register_upcaster(highwater::pb::RegisterUpcasterRequest {
            source: Some(highwater::pb::register_upcaster_request::Source::Toml(
                "name = \"renamed\"\nevent_type = \"Old\"\nto_type = \"New\"\n\
                 data = \"jsonb_build_object('renamed', $data->'name')\"\n"
                    .into(),
            )),
        })
        .await
        .unwrap();
    let appended = run(
        &app,
        &[
            "append",
            "s-1",
            "--type",
            "Old",
            "--data",
            r#"{"name":"x"}"#,
        ],
    )
    .await;
    assert!(appended.success, "{}", appended.stderr);
    for args in [
        &["read", "s-1", "--json"][..],
        &["read-all", "--json"],
        &["tail", "--from", "0", "--count", "1", "--json"],
    ] {
        let upcast = run(&app, args).await.json();
        assert_eq!(upcast[0]["type"], "New", "{args:?}");
        assert_eq!(upcast[0]["data"]["renamed"], "x", "{args:?}");
        let original = run(&app, &[args, &["--original"]].concat()).await.json();
        assert_eq!(original[0]["type"], "Old", "{args:?}");
        assert_eq!(original[0]["data"]["name"], "x", "{args:?}");
    }
}
