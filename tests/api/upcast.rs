//! Upcasters: events read in a newer shape, through chains, in every read path, with the stored
//! bytes unchanged; failures a user sees; expressions kept in their sandbox.

use std::time::Duration;

use highwater::pb::{self, admin_service_client::AdminServiceClient};
use sqlx::Connection;
use tokio_stream::StreamExt;
use tonic::{Code, transport::Channel};
use tonic_health::pb::health_check_response::ServingStatus;

use crate::{
    helpers::*,
    projection::{admin, rebuild, register_toml, wait_active},
};

fn upcaster(
    name: &str,
    event_type: &str,
    from_version: Option<&str>,
    to_type: Option<&str>,
    to_version: Option<&str>,
    data: &str,
) -> pb::RegisterUpcasterRequest {
    pb::RegisterUpcasterRequest {
        source: Some(pb::register_upcaster_request::Source::Definition(
            pb::UpcasterDefinition {
                name: name.into(),
                event_type: event_type.into(),
                from_version: from_version.map(Into::into),
                to_type: to_type.map(Into::into),
                to_version: to_version.map(Into::into),
                data: data.into(),
                metadata: None,
            },
        )),
    }
}

/// An Order event of a schema version (none: no version key).
fn order(version: Option<&str>, json: &str) -> pb::ProposedEvent {
    let mut event = json_event("Order", json);
    if let Some(version) = version {
        event
            .metadata
            .insert("schema_version".into(), version.into());
    }
    event
}

fn json(event: &pb::RecordedEvent) -> serde_json::Value {
    serde_json::from_slice(&event.data).unwrap()
}

async fn read_stream_shaped(
    app: &mut TestApp,
    stream: &str,
    original: bool,
) -> Result<Vec<pb::RecordedEvent>, tonic::Status> {
    let request = pb::ReadStreamRequest {
        stream: stream.into(),
        from_revision: 0,
        direction: pb::Direction::Forwards as i32,
        max_count: 0,
        from_latest_snapshot: false,
        original,
    };
    collect(app.client.read_stream(request).await?.into_inner(), |m| {
        m.event
    })
    .await
}

/// v1 -> v2 adds `currency`, v2 -> v3 renames `amount` to `total`.
async fn register_chain(admin: &mut AdminServiceClient<Channel>) {
    admin
        .register_upcaster(upcaster(
            "order_v1",
            "Order",
            Some("1"),
            None,
            Some("2"),
            "$data || '{\"currency\": \"EUR\"}'",
        ))
        .await
        .unwrap();
    admin
        .register_upcaster(upcaster(
            "order_v2",
            "Order",
            Some("2"),
            None,
            Some("3"),
            "($data - 'amount') || jsonb_build_object('total', $data->'amount')",
        ))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_chain_upcasts_every_read_path_and_the_stored_events_stay() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    register_chain(&mut admin).await;
    app.append(append_request(
        "order-1",
        None,
        vec![
            order(Some("1"), r#"{"amount": 5}"#),
            order(Some("2"), r#"{"amount": 6, "currency": "USD"}"#),
            order(Some("3"), r#"{"total": 7, "currency": "GBP"}"#),
            json_event("Other", r#"{"amount": 8}"#),
        ],
    ))
    .await
    .unwrap();

    let expected = [
        serde_json::json!({"total": 5, "currency": "EUR"}),
        serde_json::json!({"total": 6, "currency": "USD"}),
        serde_json::json!({"total": 7, "currency": "GBP"}),
        serde_json::json!({"amount": 8}),
    ];
    let upcast = read_stream_shaped(&mut app, "order-1", false)
        .await
        .unwrap();
    assert_eq!(upcast.iter().map(json).collect::<Vec<_>>(), expected);
    for event in &upcast[..3] {
        assert_eq!(
            event.metadata.get("schema_version").map(String::as_str),
            Some("3")
        );
    }
    let all = app.read_all().await;
    assert_eq!(all.iter().map(json).collect::<Vec<_>>(), expected);

    // As stored, byte for byte.
    let stored = read_stream_shaped(&mut app, "order-1", true).await.unwrap();
    assert_eq!(stored[0].data.as_ref(), br#"{"amount": 5}"#);
    assert_eq!(
        stored[0].metadata.get("schema_version").map(String::as_str),
        Some("1")
    );
    let mut connection = app.database.connect().await;
    let raw: Vec<u8> = sqlx::query_scalar("SELECT data FROM events WHERE position = 1")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(raw, br#"{"amount": 5}"#);

    // A subscription: the catch-up, then a live event (upcast once in the hub).
    let request = pb::SubscribeAllRequest {
        start: Some(pb::subscribe_all_request::Start::AfterPosition(0)),
        filter: None,
        checkpoint_interval: 0,
        original: false,
    };
    let mut subscription = app
        .client
        .subscribe_all(request)
        .await
        .unwrap()
        .into_inner();
    let mut received = Vec::new();
    let mut appended_live = false;
    while received.len() < 5 {
        let message = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("subscription delivers")
            .unwrap()
            .unwrap();
        match message.content {
            Some(pb::subscribe_all_response::Content::Event(event)) => received.push(event),
            Some(pb::subscribe_all_response::Content::CaughtUp(_)) if !appended_live => {
                appended_live = true;
                app.append(append_request(
                    "order-2",
                    None,
                    vec![order(Some("1"), r#"{"amount": 9}"#)],
                ))
                .await
                .unwrap();
            }
            _ => {}
        }
    }
    assert!(appended_live, "the live event came after the catch-up");
    assert_eq!(
        json(&received[4]),
        serde_json::json!({"total": 9, "currency": "EUR"})
    );
    assert_eq!(json(&received[0]), expected[0]);
}

/// Found by CI: a read sent after RegisterUpcaster (or DeleteUpcaster) replied could still see
/// the upcasters as they were, until the catalog notification came round.
#[tokio::test]
async fn a_read_after_a_change_replied_sees_the_change() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    const TYPES: usize = 40;
    app.append(append_request(
        "kinds-1",
        None,
        (0..TYPES)
            .map(|kind| json_event(&format!("Kind{kind}"), "{}"))
            .collect(),
    ))
    .await
    .unwrap();
    for kind in 0..TYPES {
        admin
            .register_upcaster(upcaster(
                &format!("kind_{kind}"),
                &format!("Kind{kind}"),
                None,
                Some(&format!("Kind{kind}Upcast")),
                None,
                "$data || '{\"upcast\": true}'",
            ))
            .await
            .unwrap();
        let events = read_stream_shaped(&mut app, "kinds-1", false)
            .await
            .unwrap();
        assert_eq!(
            json(&events[kind]),
            serde_json::json!({"upcast": true}),
            "read right after registering kind_{kind}"
        );
        admin
            .delete_upcaster(pb::DeleteUpcasterRequest {
                name: format!("kind_{kind}"),
            })
            .await
            .unwrap();
        let events = read_stream_shaped(&mut app, "kinds-1", false)
            .await
            .unwrap();
        assert_eq!(
            json(&events[kind]),
            serde_json::json!({}),
            "read right after deleting kind_{kind}"
        );
    }
}

#[tokio::test]
async fn an_upcaster_that_fails_is_an_error_naming_it_and_the_event() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_upcaster(upcaster(
            "strict",
            "Price",
            None,
            Some("PriceV2"),
            None,
            "jsonb_build_object('cents', (($data->>'amount')::numeric * 100)::bigint)",
        ))
        .await
        .unwrap();
    let mut bad = json_event("Price", r#"{"amount": "not a number"}"#);
    bad.metadata.insert("k".into(), "v".into());
    app.append(append_request(
        "price-1",
        None,
        vec![json_event("Price", r#"{"amount": 2.5}"#), bad],
    ))
    .await
    .unwrap();
    let status = read_stream_shaped(&mut app, "price-1", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("upcaster strict") && status.message().contains("position 2"),
        "{status:?}"
    );
    // The stored events are still there, as stored.
    let stored = read_stream_shaped(&mut app, "price-1", true).await.unwrap();
    assert_eq!(stored.len(), 2);

    // A non-JSON event of an upcast type fails too, rather than pass as stored.
    let mut binary = json_event("Price", "");
    binary.content_type = "application/octet-stream".into();
    binary.data = vec![1, 2, 3].into();
    app.append(append_request("price-2", None, vec![binary]))
        .await
        .unwrap();
    let status = read_stream_shaped(&mut app, "price-2", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("not JSON"), "{status:?}");

    // Deleted, the events are read as stored again; a second delete is NOT_FOUND.
    admin
        .delete_upcaster(pb::DeleteUpcasterRequest {
            name: "strict".into(),
        })
        .await
        .unwrap();
    // The reload follows the catalog notification.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match read_stream_shaped(&mut app, "price-1", false).await {
            Ok(events) => {
                assert_eq!(events[0].r#type, "Price");
                break;
            }
            Err(status) => assert!(std::time::Instant::now() < deadline, "{status:?}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = admin
        .delete_upcaster(pb::DeleteUpcasterRequest {
            name: "strict".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status:?}");
}

#[tokio::test]
async fn circles_and_second_upcasters_of_a_source_are_refused() {
    let app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    register_chain(&mut admin).await;
    for (request, field) in [
        (
            upcaster("back", "Order", Some("3"), None, Some("1"), "$data"),
            "circle",
        ),
        (
            upcaster("again", "Order", Some("1"), Some("Other"), None, "$data"),
            "already reads",
        ),
        (
            upcaster("same", "Order", Some("5"), None, Some("5"), "$data"),
            "change the version",
        ),
    ] {
        let status = admin.register_upcaster(request).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
        assert!(status.message().contains(field), "{field}: {status:?}");
    }
    let listed = admin
        .list_upcasters(pb::ListUpcastersRequest {})
        .await
        .unwrap()
        .into_inner()
        .upcasters;
    let names: Vec<_> = listed
        .iter()
        .map(|u| u.definition.as_ref().unwrap().name.as_str())
        .collect();
    assert_eq!(names, ["order_v1", "order_v2"]);
}

#[tokio::test]
async fn upcaster_sql_cannot_leave_its_sandbox() {
    // One pooled connection: whatever an expression left on its session would meet the next
    // append.
    let mut app = TestApp::spawn_configured(|config| config.database.pool_size = 1, &[]).await;
    let mut admin = admin(app.server.endpoint()).await;
    let program =
        std::env::temp_dir().join(format!("highwater-pwned-{}", uuid::Uuid::new_v4().simple()));
    let touch = format!(
        "(SELECT $data FROM (SELECT 1) x); COPY (SELECT 1) TO PROGRAM 'touch {}'; SELECT ($data",
        program.display()
    );
    let refused = [
        touch.as_str(),
        "$data); DELETE FROM public.events; SELECT ($data",
        "(SELECT to_jsonb(count(*)) FROM public.events)",
        "(SELECT to_jsonb(position) FROM public.log_head)",
        "to_jsonb(pg_read_file('/etc/hostname'))",
        "to_jsonb(lo_import('/etc/hostname'))",
        "to_jsonb(pg_advisory_lock(1))",
        "to_jsonb(pg_advisory_unlock_all())",
        "(SELECT to_jsonb(count(*)) FROM public.upcasters)",
        // Effects a rolled-back read cannot undo, or a projection's commit would keep (0021).
        "to_jsonb(lo_from_bytea(0, decode('00', 'hex')))",
        "to_jsonb(pg_logical_emit_message(false, 'p', 'x')::text)",
        "(SELECT $data FROM (SELECT pg_notify('highwater_appended', '1')) s)",
        "$data || '{\"x\": \"\\\\\"}'",
        "$data $highwater_upcaster$",
    ];
    for (index, data) in refused.iter().enumerate() {
        let status = admin
            .register_upcaster(upcaster(
                &format!("escape_{index}"),
                "Order",
                None,
                Some("Escaped"),
                None,
                data,
            ))
            .await
            .expect_err(data);
        assert_eq!(status.code(), Code::InvalidArgument, "{data}: {status:?}");
    }
    assert!(!program.exists(), "a program ran on the database host");

    // Session settings changed by an expression do not outlive the read that ran it.
    admin
        .register_upcaster(upcaster(
            "settings",
            "Order",
            None,
            Some("Settled"),
            None,
            "(SELECT $data FROM (SELECT set_config('default_transaction_read_only', 'on', false), \
              set_config('search_path', 'nowhere', false)) s)",
        ))
        .await
        .unwrap();
    app.append(append_request("order-1", None, vec![order(None, "{}")]))
        .await
        .unwrap();
    let events = read_stream_shaped(&mut app, "order-1", false)
        .await
        .unwrap();
    assert_eq!(events[0].r#type, "Settled");
    // The same (only) connection still writes, and finds the server's tables.
    let next = app
        .append(append_request("order-1", None, vec![order(None, "{}")]))
        .await
        .unwrap();
    assert_eq!(next.first_position, 2);
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events")
        .fetch_one(&mut app.database.connect().await)
        .await
        .unwrap();
    assert_eq!(stored, 2);
}

async fn totals(app: &TestApp, view: &str) -> Vec<(i64, Option<String>)> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT position, total FROM projections.{view} ORDER BY position"
    )))
    .fetch_all(&mut app.database.connect().await)
    .await
    .unwrap()
}

#[tokio::test]
async fn projections_see_upcast_events_and_a_rebuild_sees_a_new_upcaster() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    app.append(append_request(
        "order-1",
        None,
        vec![order(Some("1"), r#"{"amount": 5}"#)],
    ))
    .await
    .unwrap();
    for (name, mode) in [("inline_totals", "inline"), ("async_totals", "async")] {
        let toml = format!(
            "name = {name:?}\nmode = {mode:?}\nsetup = \"CREATE TABLE {{{{table}}}} (position bigint PRIMARY KEY, total text)\"\n\
             [handlers]\nOrder = \"INSERT INTO {{{{table}}}} VALUES ($position, $data->>'total')\"\n"
        );
        admin
            .register_projection(register_toml(&toml))
            .await
            .unwrap();
        wait_active(&mut admin, name, 1, Duration::from_secs(10)).await;
    }
    // Built before any upcaster: the stored shape has no `total`.
    assert_eq!(totals(&app, "inline_totals").await, [(1, None)]);

    register_chain(&mut admin).await;
    // A v1 event that an upcaster turns into a type no handler has: applied as nothing.
    admin
        .register_upcaster(upcaster(
            "legacy",
            "Legacy",
            None,
            Some("Unhandled"),
            None,
            "$data",
        ))
        .await
        .unwrap();
    app.append(append_request(
        "order-2",
        None,
        vec![
            order(Some("1"), r#"{"amount": 6}"#),
            json_event("Legacy", "{}"),
        ],
    ))
    .await
    .unwrap();
    assert_eq!(
        totals(&app, "inline_totals").await,
        [(1, None), (2, Some("6".into()))]
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while totals(&app, "async_totals").await.len() < 2 {
        assert!(
            std::time::Instant::now() < deadline,
            "async projection applied nothing"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        totals(&app, "async_totals").await,
        [(1, None), (2, Some("6".into()))]
    );

    // Rebuilt, the first event is read through the upcasters too.
    let progress = rebuild(&mut admin, "inline_totals", pb::RebuildStrategy::BlueGreen).await;
    assert_eq!(
        progress.last().map(|p| p.phase),
        Some(pb::rebuild_progress::Phase::Done as i32),
        "{progress:?}"
    );
    assert_eq!(
        totals(&app, "inline_totals").await,
        [(1, Some("5".into())), (2, Some("6".into()))]
    );
}

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples");

#[tokio::test]
async fn upcaster_files_are_registered_at_start_before_the_projections() {
    let projections = format!("{EXAMPLES}/projections");
    let upcasters = format!("{EXAMPLES}/upcasters");
    let mut app =
        TestApp::spawn_with(&["--upcasters", &upcasters, "--projections", &projections]).await;
    let mut admin = admin(app.server.endpoint()).await;
    wait_active(&mut admin, "cart_summary", 1, Duration::from_secs(10)).await;
    let mut old = json_event("ProductAdded", r#"{"sku": "apple", "qty": 3}"#);
    old.metadata.insert("schema_version".into(), "1".into());
    app.append(append_request(
        "cart-1",
        None,
        vec![
            old,
            json_event("ProductAdded", r#"{"sku": "pear", "quantity": 2}"#),
        ],
    ))
    .await
    .unwrap();
    let items: i32 = sqlx::query_scalar(
        "SELECT item_count FROM projections.cart_summary WHERE cart_id = 'cart-1'",
    )
    .fetch_one(&mut app.database.connect().await)
    .await
    .unwrap();
    assert_eq!(items, 5);
    let events = read_stream_shaped(&mut app, "cart-1", false).await.unwrap();
    assert_eq!(
        json(&events[0]),
        serde_json::json!({"sku": "apple", "quantity": 3})
    );
    let listed = admin
        .list_upcasters(pb::ListUpcastersRequest {})
        .await
        .unwrap()
        .into_inner()
        .upcasters;
    assert_eq!(listed.len(), 1);
    assert!(
        listed[0].origin.ends_with("product_added_v1.toml"),
        "{listed:?}"
    );
}

/// Found by review: an upcaster failing on one event used to fail the whole apply call outside
/// the per-event blocks, so a projection with on_error = "skip" lost the events around it.
#[tokio::test]
async fn an_upcaster_failing_on_one_event_is_one_dead_letter_for_a_skipping_projection() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_upcaster(upcaster(
            "counted",
            "Count",
            None,
            Some("CountV2"),
            None,
            "jsonb_build_object('n', ($data->>'n')::int)",
        ))
        .await
        .unwrap();
    for (name, mode) in [("inline_skipper", "inline"), ("async_skipper", "async")] {
        let toml = format!(
            "name = {name:?}\nmode = {mode:?}\non_error = \"skip\"\n\
             setup = \"CREATE TABLE {{{{table}}}} (position bigint PRIMARY KEY, n int)\"\n\
             [handlers]\nCountV2 = \"INSERT INTO {{{{table}}}} VALUES ($position, ($data->>'n')::int)\"\n"
        );
        admin
            .register_projection(register_toml(&toml))
            .await
            .unwrap();
        wait_active(&mut admin, name, 1, Duration::from_secs(10)).await;
    }
    let events = (0..5)
        .map(|i| {
            if i == 2 {
                json_event("Count", r#"{"n": "two"}"#)
            } else {
                json_event("Count", &format!(r#"{{"n": {i}}}"#))
            }
        })
        .collect();
    app.append(append_request("count-1", None, events))
        .await
        .unwrap();
    let expected: Vec<(i64, Option<i32>)> =
        vec![(1, Some(0)), (2, Some(1)), (4, Some(3)), (5, Some(4))];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    for name in ["inline_skipper", "async_skipper"] {
        loop {
            let rows: Vec<(i64, Option<i32>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
                "SELECT position, n FROM projections.{name} ORDER BY position"
            )))
            .fetch_all(&mut app.database.connect().await)
            .await
            .unwrap();
            if rows == expected {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "{name}: {rows:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let dead = admin
            .list_system_messages(pb::ListSystemMessagesRequest {
                projection: name.into(),
                kind: "dead_letter".into(),
                include_archived: false,
                limit: 10,
            })
            .await
            .unwrap()
            .into_inner()
            .messages;
        assert_eq!(dead.len(), 1, "{name}: {dead:?}");
        assert_eq!(dead[0].position, 3, "{name}: {dead:?}");
        assert!(
            dead[0].reason.contains("upcaster counted"),
            "{name}: {dead:?}"
        );
    }
}

/// The recommended layout (README, Security): the server's user owns its database and has
/// CREATEROLE, and is no superuser. Found by review: registering an upcaster failed there, as
/// handing a function to the upcaster role needs that role to have CREATE on the schema.
#[tokio::test]
async fn upcasters_work_when_the_server_is_not_a_superuser() {
    let database = TestDatabase::new();
    let owner = format!("hw_owner_{}", &database.name["hw_test_".len()..]);
    let mut superuser = sqlx::PgConnection::connect(&as_superuser(admin_url()))
        .await
        .unwrap();
    // From template0: the private cluster's template1 has the functions restricted already.
    for sql in [
        format!("CREATE ROLE \"{owner}\" LOGIN CREATEROLE"),
        format!(
            "CREATE DATABASE \"{}\" OWNER \"{owner}\" TEMPLATE template0",
            database.name
        ),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut superuser)
            .await
            .unwrap();
    }
    let url = url_for_user(&database.url, &owner);
    let server = RunningServer::start(config_for(&url, &[])).await;
    server
        .wait_for_health(ServingStatus::Serving, Duration::from_secs(30))
        .await;
    let mut admin = admin(server.endpoint()).await;
    let register = || {
        upcaster(
            "order_v1",
            "Order",
            Some("1"),
            None,
            Some("2"),
            "$data || '{\"v\": 2}'",
        )
    };

    // Migrated by a user that is no superuser: advisory locks are still everyone's.
    let status = admin.register_upcaster(register()).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("README, Security"), "{status:?}");
    let mut in_database = sqlx::PgConnection::connect(&as_superuser(&database.url))
        .await
        .unwrap();
    let restrict = highwater_core::store::database::restrict_sandbox_functions_sql(&owner).unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(restrict))
        .execute(&mut in_database)
        .await
        .unwrap();

    admin.register_upcaster(register()).await.unwrap();
    let mut client = server.client().await;
    client
        .append(append_request(
            "order-1",
            None,
            vec![order(Some("1"), "{}")],
        ))
        .await
        .unwrap();
    let request = pb::ReadStreamRequest {
        stream: "order-1".into(),
        from_revision: 0,
        direction: 0,
        max_count: 0,
        from_latest_snapshot: false,
        original: false,
    };
    let events = collect(
        client.read_stream(request).await.unwrap().into_inner(),
        |m| m.event,
    )
    .await
    .unwrap();
    assert_eq!(json(&events[0]), serde_json::json!({"v": 2}));
    admin
        .delete_upcaster(pb::DeleteUpcasterRequest {
            name: "order_v1".into(),
        })
        .await
        .unwrap();

    drop((admin, client, in_database));
    server.stop().await.unwrap();
    let name = database.name.clone();
    drop(database);
    for sql in [
        format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
        format!("DROP ROLE IF EXISTS \"{owner}\""),
    ] {
        let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut superuser)
            .await;
    }
}

#[tokio::test]
async fn a_metadata_expression_makes_the_metadata_which_must_stay_strings() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    let with_metadata =
        |name: &str, event_type: &str, metadata: &str| pb::RegisterUpcasterRequest {
            source: Some(pb::register_upcaster_request::Source::Definition(
                pb::UpcasterDefinition {
                    name: name.into(),
                    event_type: event_type.into(),
                    from_version: None,
                    to_type: Some(format!("{event_type}V2")),
                    to_version: Some("2".into()),
                    data: "$data".into(),
                    metadata: Some(metadata.into()),
                },
            )),
        };
    admin
        .register_upcaster(with_metadata(
            "tagged",
            "Tagged",
            "$metadata || jsonb_build_object('upcast_from', $data->>'from')",
        ))
        .await
        .unwrap();
    admin
        .register_upcaster(with_metadata("numbered", "Numbered", "'{\"n\": 1}'::jsonb"))
        .await
        .unwrap();
    let mut tagged = json_event("Tagged", r#"{"from": "v1"}"#);
    tagged.metadata.insert("kept".into(), "yes".into());
    app.append(append_request("tagged-1", None, vec![tagged]))
        .await
        .unwrap();
    let events = read_stream_shaped(&mut app, "tagged-1", false)
        .await
        .unwrap();
    let metadata: std::collections::BTreeMap<_, _> =
        events[0].metadata.clone().into_iter().collect();
    assert_eq!(
        metadata,
        [
            ("kept", "yes"),
            ("schema_version", "2"),
            ("upcast_from", "v1")
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .into()
    );
    assert_eq!(events[0].r#type, "TaggedV2");

    app.append(append_request(
        "numbered-1",
        None,
        vec![json_event("Numbered", "{}")],
    ))
    .await
    .unwrap();
    let status = read_stream_shaped(&mut app, "numbered-1", false)
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("upcaster numbered")
            && status.message().contains("object of strings"),
        "{status:?}"
    );
}

/// Found by review: every apply function was passed every source type's events, so an upcaster
/// failing on A -> B failed projections that handle neither A nor B.
#[tokio::test]
async fn a_failing_upcaster_leaves_projections_its_chain_never_reaches_alone() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    admin
        .register_upcaster(upcaster(
            "strict",
            "Alpha",
            None,
            Some("Beta"),
            None,
            "jsonb_build_object('n', ($data->>'n')::int)",
        ))
        .await
        .unwrap();
    for (name, mode, handled) in [
        ("zeds", "inline", "Zed"),
        ("async_zeds", "async", "Zed"),
        ("betas", "inline", "Beta"),
    ] {
        let toml = format!(
            "name = {name:?}\nmode = {mode:?}\n\
             setup = \"CREATE TABLE {{{{table}}}} (position bigint PRIMARY KEY)\"\n\
             [handlers]\n{handled} = \"INSERT INTO {{{{table}}}} VALUES ($position)\"\n"
        );
        admin
            .register_projection(register_toml(&toml))
            .await
            .unwrap();
        wait_active(&mut admin, name, 1, Duration::from_secs(10)).await;
    }
    // The inline projection of Beta, which the chain reaches, fails the append as a failing
    // handler would.
    let status = app
        .append(append_request(
            "a-1",
            None,
            vec![json_event("Alpha", r#"{"n": "x"}"#)],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("upcaster strict"), "{status:?}");
    // Without it, the append and the projections of Zed are untouched by the failing upcaster.
    admin
        .register_projection(register_toml(
            "name = \"betas\"\nmode = \"inline\"\nversion = 2\n\
             setup = \"CREATE TABLE {{table}} (position bigint PRIMARY KEY)\"\n\
             [handlers]\nGamma = \"INSERT INTO {{table}} VALUES ($position)\"\n",
        ))
        .await
        .unwrap();
    wait_active(&mut admin, "betas", 2, Duration::from_secs(10)).await;
    app.append(append_request(
        "a-1",
        None,
        vec![
            json_event("Alpha", r#"{"n": "x"}"#),
            json_event("Zed", "{}"),
        ],
    ))
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let info = crate::projection::projection(&mut admin, "async_zeds").await;
        assert_eq!(info.status, "active", "{info:?}");
        if info.lag_events == 0 && info.applied_position >= 2 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{info:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for view in ["zeds", "async_zeds"] {
        let rows: Vec<i64> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT position FROM projections.{view} ORDER BY position"
        )))
        .fetch_all(&mut app.database.connect().await)
        .await
        .unwrap();
        assert_eq!(rows, [2], "{view}");
    }
}
