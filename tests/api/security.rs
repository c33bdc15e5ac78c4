//! Bearer tokens and roles, the loopback-only default, and TLS (with client certificates).

use std::time::Duration;

use highwater::{
    auth::hash_token,
    pb::{
        self, admin_service_client::AdminServiceClient,
        event_store_service_client::EventStoreServiceClient,
    },
    server::Application,
};
use highwater_cli::BearerToken as Bearer;
use tonic::{
    Code, Request, Status,
    service::interceptor::InterceptedService,
    transport::{Certificate, Channel, ClientTlsConfig, Identity},
};
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::*;

/// Sends a fixed authorization header (or none), as the command-line client does.
type Authed = InterceptedService<Channel, Bearer>;

fn code<T>(result: Result<T, Status>) -> Code {
    result.map_or_else(|status| status.code(), |_| Code::Ok)
}

/// The code of every RPC called with one identity, by method name.
async fn codes(channel: Channel, token: Option<&str>) -> Vec<(&'static str, Code)> {
    let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
    let mut store =
        EventStoreServiceClient::new(InterceptedService::new(channel.clone(), bearer.clone()));
    let mut admin: AdminServiceClient<Authed> =
        AdminServiceClient::new(InterceptedService::new(channel.clone(), bearer));
    let append = pb::AppendRequest {
        stream: "sec-1".into(),
        expected: None,
        events: vec![json_event("E", "{}")],
    };
    vec![
        ("Append", code(store.append(append).await)),
        (
            "ReadStream",
            code(
                store
                    .read_stream(pb::ReadStreamRequest {
                        stream: "sec-0".into(),
                        ..Default::default()
                    })
                    .await,
            ),
        ),
        (
            "ReadAll",
            code(store.read_all(pb::ReadAllRequest::default()).await),
        ),
        (
            "SubscribeAll",
            code(
                store
                    .subscribe_all(pb::SubscribeAllRequest::default())
                    .await,
            ),
        ),
        (
            "SubscribeStream",
            code(
                store
                    .subscribe_stream(pb::SubscribeStreamRequest {
                        original: false,
                        stream: "sec-0".into(),
                        start: None,
                    })
                    .await,
            ),
        ),
        (
            "SaveCheckpoint",
            code(
                store
                    .save_checkpoint(pb::SaveCheckpointRequest {
                        subscription: "s".into(),
                        position: 0,
                    })
                    .await,
            ),
        ),
        (
            "ListSubscriptions",
            code(
                store
                    .list_subscriptions(pb::ListSubscriptionsRequest {})
                    .await,
            ),
        ),
        (
            "DeleteSubscription",
            code(
                store
                    .delete_subscription(pb::DeleteSubscriptionRequest {
                        subscription: "none".into(),
                    })
                    .await,
            ),
        ),
        (
            "DeleteStream",
            code(
                store
                    .delete_stream(pb::DeleteStreamRequest {
                        stream: "none".into(),
                        expected: None,
                    })
                    .await,
            ),
        ),
        (
            "SaveSnapshot",
            code(
                store
                    .save_snapshot(pb::SaveSnapshotRequest {
                        stream: "none".into(),
                        revision: 0,
                        r#type: "State".into(),
                        data: b"{}".to_vec().into(),
                        content_type: String::new(),
                    })
                    .await,
            ),
        ),
        (
            "HardDeleteStream",
            code(
                admin
                    .hard_delete_stream(pb::HardDeleteStreamRequest {
                        stream: "none".into(),
                        expected: None,
                    })
                    .await,
            ),
        ),
        (
            "AdminRebuild",
            code(
                admin
                    .admin_rebuild(pb::AdminRebuildRequest {
                        projection: "none".into(),
                        strategy: 0,
                    })
                    .await,
            ),
        ),
        (
            "RegisterProjection",
            code(
                admin
                    .register_projection(pb::RegisterProjectionRequest { source: None })
                    .await,
            ),
        ),
        (
            "ListProjections",
            code(admin.list_projections(pb::ListProjectionsRequest {}).await),
        ),
        (
            "GetProjection",
            code(
                admin
                    .get_projection(pb::GetProjectionRequest {
                        name: "none".into(),
                    })
                    .await,
            ),
        ),
        (
            "ListSystemMessages",
            code(
                admin
                    .list_system_messages(pb::ListSystemMessagesRequest::default())
                    .await,
            ),
        ),
        (
            "RetryDeadLetters",
            code(
                admin
                    .retry_dead_letters(pb::RetryDeadLettersRequest {
                        projection: "none".into(),
                    })
                    .await,
            ),
        ),
    ]
}

/// What a permitted call answers, whatever the identity (the calls' own outcomes).
fn permitted(method: &str) -> Code {
    match method {
        "ReadStream" => Code::NotFound,
        "DeleteSubscription" | "DeleteStream" | "HardDeleteStream" | "AdminRebuild"
        | "GetProjection" | "RetryDeadLetters" | "SaveSnapshot" => Code::NotFound,
        "RegisterProjection" => Code::InvalidArgument,
        _ => Code::Ok,
    }
}

fn needs(method: &str) -> usize {
    match method {
        "Append" | "SaveCheckpoint" | "DeleteSubscription" | "DeleteStream" | "SaveSnapshot" => 1,
        "ReadStream" | "ReadAll" | "SubscribeAll" | "SubscribeStream" | "ListSubscriptions" => 0,
        _ => 2,
    }
}

#[tokio::test]
async fn every_rpc_answers_each_identity_with_exactly_the_expected_code() {
    let folder = tempfile::tempdir().unwrap();
    let auth_file = folder.path().join("auth.toml");
    let roles = ["read", "write", "admin"];
    let mut file = String::new();
    for role in roles {
        file.push_str(&format!(
            "[[token]]\nname = \"{role}-token\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hash_token(&format!("secret-{role}"))
        ));
    }
    std::fs::write(&auth_file, file).unwrap();
    let app = TestApp::spawn_with(&["--auth-file", auth_file.to_str().unwrap()]).await;
    let channel = Channel::from_shared(app.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();

    // Health (and reflection) stay open.
    let health = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await;
    assert_eq!(code(health), Code::Ok);

    // Every answer carries a request id: the caller's, or a new one (refusals too).
    let mut request = Request::new(pb::ListSubscriptionsRequest {});
    request
        .metadata_mut()
        .insert("x-request-id", "req-42".parse().unwrap());
    let refused = EventStoreServiceClient::new(channel.clone())
        .list_subscriptions(request)
        .await
        .unwrap_err();
    assert_eq!(refused.metadata().get("x-request-id").unwrap(), "req-42");
    let answered = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let generated = answered
        .metadata()
        .get("x-request-id")
        .unwrap()
        .to_str()
        .unwrap();
    assert!(uuid::Uuid::parse_str(generated).is_ok(), "{generated}");

    for (identity, token) in [("none", None), ("wrong", Some("secret-nope"))] {
        for (method, got) in codes(channel.clone(), token).await {
            assert_eq!(got, Code::Unauthenticated, "{method} with {identity} token");
        }
    }
    let mut appended = 0;
    for (level, role) in roles.iter().enumerate() {
        let token = format!("secret-{role}");
        for (method, got) in codes(channel.clone(), Some(&token)).await {
            let expected = if level >= needs(method) {
                permitted(method)
            } else {
                Code::PermissionDenied
            };
            assert_eq!(got, expected, "{method} with a {role} token");
            if method == "Append" && got == Code::Ok {
                appended += 1;
            }
        }
    }
    // Only the permitted appends were written.
    let mut reader = EventStoreServiceClient::new(InterceptedService::new(
        channel,
        Bearer(Some("Bearer secret-read".parse().unwrap())),
    ));
    let mut stream = reader
        .read_all(pb::ReadAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut count = 0;
    while stream.message().await.unwrap().is_some() {
        count += 1;
    }
    assert_eq!((appended, count), (2, 2));

    // The command-line client sends --token; a refusal prints the code.
    let cli = async |args: &[&str]| {
        highwater()
            .args(args)
            .args(["--server", &app.server.endpoint()])
            .output()
            .await
            .unwrap()
    };
    let append = ["append", "sec-2", "--type", "E", "--data", "{}"];
    let anonymous = cli(&append).await;
    assert!(!anonymous.status.success());
    assert!(String::from_utf8_lossy(&anonymous.stderr).starts_with("error: UNAUTHENTICATED"));
    let reader = cli(&[&append[..], &["--token", "secret-read"]].concat()).await;
    assert!(String::from_utf8_lossy(&reader.stderr).starts_with("error: PERMISSION_DENIED"));
    let writer = cli(&[&append[..], &["--token", "secret-write"]].concat()).await;
    assert!(
        writer.status.success(),
        "{}",
        String::from_utf8_lossy(&writer.stderr)
    );
}

#[test]
fn the_token_command_prints_a_token_and_the_entry_that_accepts_it() {
    let output = highwater_blocking()
        .args(["token", "--role", "write", "--name", "billing"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    let token = text.lines().nth(1).unwrap();
    assert!(token.starts_with("hw_"), "{text}");
    let entry = &text[text.find("[[token]]").unwrap()..];
    assert!(entry.contains("name = \"billing\""), "{text}");
    assert!(entry.contains("role = \"write\""), "{text}");
    assert!(
        entry.contains(&format!("sha256 = \"{}\"", hash_token(token))),
        "{text}"
    );
}

#[tokio::test]
async fn non_loopback_needs_tokens_and_tokens_need_tls_unless_insecure_is_explicit() {
    let database = TestDatabase::new();
    let mut config = config_for(&database.url, &[]);
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = Application::build(config.clone())
        .await
        .err()
        .expect("refused");
    assert!(
        refused.to_string().contains("--insecure-no-auth"),
        "{refused}"
    );

    config.security.insecure_no_auth = true;
    let app = Application::build(config)
        .await
        .expect("explicitly insecure");
    assert!(!app.local_addr().ip().is_loopback());

    let bad_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad_file.path(),
        "[[token]]\nname = \"x\"\nrole = \"root\"\nsha256 = \"00\"\n",
    )
    .unwrap();
    let config = config_for(
        &database.url,
        &["--auth-file", bad_file.path().to_str().unwrap()],
    );
    let refused = Application::build(config)
        .await
        .err()
        .expect("a bad auth file is refused");
    assert!(refused.to_string().contains("auth file"), "{refused}");

    // Tokens on a non-loopback address need TLS, or an explicit --insecure-plaintext.
    let auth_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        auth_file.path(),
        format!(
            "[[token]]\nname = \"ops\"\nrole = \"admin\"\nsha256 = \"{}\"\n",
            highwater::auth::hash_token(&highwater::auth::new_token())
        ),
    )
    .unwrap();
    let mut config = config_for(
        &database.url,
        &["--auth-file", auth_file.path().to_str().unwrap()],
    );
    config.listen = "0.0.0.0:0".parse().unwrap();
    let refused = Application::build(config.clone())
        .await
        .err()
        .expect("tokens in plaintext are refused");
    assert!(
        refused.to_string().contains("--insecure-plaintext"),
        "{refused}"
    );
    config.security.insecure_plaintext = true;
    let app = Application::build(config)
        .await
        .expect("explicitly plaintext");
    assert!(!app.local_addr().ip().is_loopback());
}

/// A CA, a server certificate for localhost and a client certificate, as PEM.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn new_pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let client = CertificateParams::new(vec!["client".to_string()])
        .unwrap()
        .signed_by(&client_key, &ca, &ca_key)
        .unwrap();
    Pki {
        ca: ca.pem(),
        server_cert: server.pem(),
        server_key: server_key.serialize_pem(),
        client_cert: client.pem(),
        client_key: client_key.serialize_pem(),
    }
}

async fn tls_channel(port: u16, ca: &str, identity: Option<Identity>) -> Result<Channel, String> {
    let mut tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca))
        .domain_name("localhost");
    if let Some(identity) = identity {
        tls = tls.identity(identity);
    }
    let channel = Channel::from_shared(format!("https://127.0.0.1:{port}"))
        .unwrap()
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    // The handshake may only fail at the first call.
    HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .map_err(|status| status.to_string())?;
    Ok(channel)
}

#[tokio::test]
async fn tls_serves_encrypted_and_client_certificates_are_required_when_configured() {
    let pki = new_pki();
    let folder = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = folder.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    };
    let (ca, cert, key) = (
        write("ca.pem", &pki.ca),
        write("server.pem", &pki.server_cert),
        write("server.key", &pki.server_key),
    );
    let database = TestDatabase::new();
    let server = RunningServer::start(config_for(
        &database.url,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--idle-timeout-secs",
            "1",
        ],
    ))
    .await;
    let port = server.address.port();

    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let channel = loop {
        match tls_channel(port, &pki.ca, None).await {
            Ok(channel) => break channel,
            Err(error) => assert!(
                std::time::Instant::now() < deadline,
                "no TLS service: {error}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let mut client = EventStoreServiceClient::new(channel);
    let mut appended = None;
    for _ in 0..100 {
        match client
            .append(append_request("tls-1", None, vec![json_event("E", "{}")]))
            .await
        {
            Ok(response) => {
                appended = Some(response.into_inner());
                break;
            }
            Err(status) if status.code() == Code::Unavailable => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(status) => panic!("append over TLS: {status}"),
        }
    }
    assert_eq!(appended.expect("an append over TLS").last_position, 1);
    // Calls over TLS count as activity: a subscription keeps its connection past the idle
    // timeout.
    let mut subscription = client
        .subscribe_all(pb::SubscribeAllRequest::default())
        .await
        .unwrap()
        .into_inner();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    client
        .append(append_request("tls-1", None, vec![json_event("E", "{}")]))
        .await
        .unwrap();
    assert_eq!(next_event(&mut subscription).await.position, 1);
    assert_eq!(next_event(&mut subscription).await.position, 2);
    drop(subscription);
    // Plaintext to a TLS port fails.
    assert!(server.health().await.is_none(), "plaintext was answered");
    // So does a client that does not trust the server's CA.
    assert!(tls_channel(port, &new_pki().ca, None).await.is_err());
    server.stop().await.unwrap();

    // Mutual TLS: a client without a certificate is refused; one with a certificate is served.
    let server = RunningServer::start(config_for(
        &database.url,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    ))
    .await;
    let port = server.address.port();
    let identity = || Identity::from_pem(&pki.client_cert, &pki.client_key);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while let Err(error) = tls_channel(port, &pki.ca, Some(identity())).await {
        assert!(
            std::time::Instant::now() < deadline,
            "no mutual TLS service: {error}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        tls_channel(port, &pki.ca, None).await.is_err(),
        "served a client without a certificate"
    );

    // The command-line client speaks TLS too. The server answers TLS before its database is
    // ready (NOT_SERVING until then): ask until it serves.
    let (client_cert, client_key) = (
        write("client.pem", &pki.client_cert),
        write("client.key", &pki.client_key),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let output = loop {
        let output = highwater()
            .args([
                "health",
                "--server",
                &format!("https://localhost:{port}"),
                "--tls-ca",
                &ca,
            ])
            .args(["--tls-client-cert", &client_cert])
            .args(["--tls-client-key", &client_key])
            .output()
            .await
            .unwrap();
        let not_yet = String::from_utf8_lossy(&output.stderr).contains("NOT_SERVING");
        if !not_yet || std::time::Instant::now() > deadline {
            break output;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "SERVING");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn tokens_given_inline_with_auth_tokens_are_enforced() {
    let tokens = format!(
        "[[token]]\nname = \"env-writer\"\nrole = \"write\"\nsha256 = \"{}\"\n",
        hash_token("env-secret")
    );
    let app = TestApp::spawn_with(&["--auth-tokens", &tokens]).await;
    let channel = Channel::from_shared(app.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |token: Option<&str>| {
        let bearer = Bearer(token.map(|t| format!("Bearer {t}").parse().unwrap()));
        EventStoreServiceClient::new(InterceptedService::new(channel.clone(), bearer))
    };
    let append = || append_request("env-1", None, vec![json_event("E", "{}")]);
    assert_eq!(
        code(client(None).append(append()).await),
        Code::Unauthenticated
    );
    assert_eq!(
        code(client(Some("env-secret")).append(append()).await),
        Code::Ok
    );

    // Not both sources at once, and not an empty list.
    let database = TestDatabase::new();
    let both = <ServeFlags as clap::Parser>::try_parse_from([
        "highwater",
        "--auth-tokens",
        &tokens,
        "--auth-file",
        "/dev/null",
    ]);
    assert!(both.is_err(), "--auth-tokens with --auth-file was accepted");
    let empty = Application::build(config_for(&database.url, &["--auth-tokens", "# none"]))
        .await
        .err()
        .expect("an empty token list is refused");
    assert!(empty.to_string().contains("--auth-tokens"), "{empty}");
}

/// A durable subscription is a row kept until deleted, so creating one is a write: a read token
/// may resume an existing durable subscription but not create one (PERMISSION_DENIED, and no
/// row is stored); a write token creates it.
#[tokio::test]
async fn a_read_token_resumes_durable_subscriptions_but_cannot_create_them() {
    use pb::subscribe_all_request::Start;

    let folder = tempfile::tempdir().unwrap();
    let auth_file = folder.path().join("auth.toml");
    let mut file = String::new();
    for role in ["read", "write"] {
        file.push_str(&format!(
            "[[token]]\nname = \"{role}-token\"\nrole = \"{role}\"\nsha256 = \"{}\"\n",
            hash_token(&format!("secret-{role}"))
        ));
    }
    std::fs::write(&auth_file, file).unwrap();
    let app = TestApp::spawn_with(&["--auth-file", auth_file.to_str().unwrap()]).await;
    let channel = Channel::from_shared(app.server.endpoint())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let client = |role: &str| {
        EventStoreServiceClient::new(InterceptedService::new(
            channel.clone(),
            Bearer(Some(format!("Bearer secret-{role}").parse().unwrap())),
        ))
    };
    let durable = |name: &str| pb::SubscribeAllRequest {
        start: Some(Start::Subscription(name.into())),
        ..Default::default()
    };

    let refused = client("read")
        .subscribe_all(durable("made-by-reader"))
        .await
        .expect_err("a read token cannot create a durable subscription");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("write role"), "{refused:?}");
    let mut connection = app.database.connect().await;
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM subscriptions")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(stored, 0);

    drop(
        client("write")
            .subscribe_all(durable("shared"))
            .await
            .expect("a write token creates it"),
    );
    drop(
        client("read")
            .subscribe_all(durable("shared"))
            .await
            .expect("a read token resumes an existing one"),
    );
    let names: Vec<String> = sqlx::query_scalar("SELECT name FROM subscriptions")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(names, ["shared"]);
}
