//! The projection sandbox: setup and handler SQL, whether registered through the API or read
//! from `--projections` files, cannot take the server's rights back, reach the log beyond reading
//! it, run programs or read files on the database host, reach another projection, or leave
//! anything behind that runs later with somebody else's rights. Every attempt ends with the log
//! intact: positions 1..head dense, every event there, the next append at head + 1.

use std::time::Duration;

use highwater::pb::admin_service_client::AdminServiceClient;
use sqlx::Connection;
use tonic::{Code, transport::Channel};

use crate::{
    helpers::*,
    projection::{admin, register_toml, wait_active},
};

/// A definition with `setup` and one harmless handler.
fn with_setup(name: &str, setup: &str) -> String {
    format!(
        "name = {name:?}\nmode = \"inline\"\nsetup = {setup:?}\n[handlers]\nSeen = \"INSERT INTO {{{{table}}}} VALUES ($stream) ON CONFLICT DO NOTHING\"\n"
    )
}

/// A definition with a plain table and the given handlers.
fn with_handlers(name: &str, handlers: &[(&str, &str)]) -> String {
    let mut toml = format!(
        "name = {name:?}\nmode = \"inline\"\nsetup = \"CREATE TABLE {{{{table}}}} (k text PRIMARY KEY)\"\n[handlers]\n"
    );
    for (event_type, sql) in handlers {
        toml.push_str(&format!("{event_type} = {sql:?}\n"));
    }
    toml
}

/// Positions 1..head are dense and `expected` events are stored, and the next append lands at
/// head + 1 (then counted in the expectation of the next check).
async fn assert_log_intact(app: &mut TestApp, expected: &mut usize, context: &str) {
    let mut connection = app.database.connect().await;
    let head: i64 = sqlx::query_scalar("SELECT position FROM public.log_head")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    let positions: Vec<i64> =
        sqlx::query_scalar("SELECT position FROM public.events ORDER BY position")
            .fetch_all(&mut connection)
            .await
            .unwrap();
    assert_eq!(positions, (1..=head).collect::<Vec<_>>(), "{context}");
    assert_eq!(positions.len(), *expected, "{context}");
    let next = app
        .append(append_request(
            "probe",
            None,
            vec![json_event("Probe", "{}")],
        ))
        .await
        .unwrap_or_else(|status| panic!("{context}: probe append failed: {status:?}"));
    assert_eq!(next.first_position, head as u64 + 1, "{context}");
    *expected += 1;
}

async fn refused(admin: &mut AdminServiceClient<Channel>, toml: &str) -> tonic::Status {
    admin
        .register_projection(register_toml(toml))
        .await
        .expect_err("the sandbox must refuse this definition")
}

/// A file the database host would get if a program ran there.
fn marker() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("highwater-pwned-{}", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn setup_sql_cannot_leave_its_sandbox() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    let mut expected = 0;
    assert_log_intact(&mut app, &mut expected, "at start").await;
    let program = marker();
    let escapes = [
        // The review's reproduction: a DO block that resets the role, moves the head and erases
        // the log.
        "DO $x$ BEGIN EXECUTE 'CREATE TABLE {{table}} (k text PRIMARY KEY)'; RESET ROLE; \
         UPDATE public.log_head SET position = position + 100; DELETE FROM public.events; END $x$"
            .to_string(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); RESET ROLE; DELETE FROM public.events".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SET ROLE postgres; DELETE FROM public.events"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SET SESSION AUTHORIZATION DEFAULT; \
         DELETE FROM public.events"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SELECT set_config('role', 'none', false); \
         DELETE FROM public.events"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         SELECT set_config('session_authorization', 'postgres', false); DELETE FROM public.events"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); DELETE FROM public.events".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); UPDATE public.log_head SET position = 0"
            .into(),
        format!(
            "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY); COPY (SELECT 1) TO PROGRAM 'touch {}'",
            program.display()
        ),
        format!(
            "CREATE TABLE {{{{table}}}} (k text PRIMARY KEY); COPY (SELECT 1) TO '{}'",
            program.display()
        ),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); COPY {{table}} FROM '/etc/hostname'".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         INSERT INTO {{table}} SELECT pg_read_file('/etc/hostname')"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         INSERT INTO {{table}} SELECT lo_import('/etc/hostname')::text"
            .into(),
        // Snapshots (migrations 0017, 0018): neither their table nor their lock.
        "CREATE TABLE {{table}} (k text PRIMARY KEY); DELETE FROM public.snapshots".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         INSERT INTO {{table}} SELECT stream FROM public.snapshots"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SELECT public.highwater_snapshot_lock('x')"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         INSERT INTO public.snapshot_locks VALUES ('x')"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         SELECT public.highwater_save_snapshot('x', 0, 'T', '\\x00', 'x', 1)"
            .into(),
        // Advisory locks, the server's coordination (migration 0019): a session lock taken in the
        // setup would stay on the pooled connection.
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SELECT pg_advisory_lock(1)".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SELECT pg_advisory_unlock_all()".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); SELECT pg_try_advisory_xact_lock(1, 2)"
            .into(),
        // Left behind to run later with another role's rights: refused by the audit.
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         CREATE FUNCTION projection_p.f() RETURNS void SECURITY DEFINER LANGUAGE sql \
         AS 'DELETE FROM public.events'"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         CREATE FUNCTION projection_p.t() RETURNS trigger LANGUAGE plpgsql \
         AS $b$ BEGIN DELETE FROM public.events; RETURN NULL; END $b$; \
         CREATE TRIGGER t BEFORE TRUNCATE ON {{table}} EXECUTE FUNCTION projection_p.t()"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         CREATE TRIGGER t BEFORE INSERT ON {{table}} FOR EACH ROW \
         EXECUTE FUNCTION suppress_redundant_updates_trigger()"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         CREATE RULE r AS ON INSERT TO {{table}} DO ALSO DELETE FROM public.events"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); ALTER TABLE {{table}} ENABLE ROW LEVEL SECURITY; \
         CREATE POLICY p ON {{table}} USING (query_to_xml('SELECT 1', true, false, '') IS NOT NULL)"
            .into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); GRANT ALL ON {{table}} TO PUBLIC".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); CREATE VIEW projection_p.w AS SELECT 1".into(),
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         ALTER DEFAULT PRIVILEGES GRANT ALL ON TABLES TO PUBLIC"
            .into(),
        // The setup's own run-any-SQL wrapper, kept under an apply function's name.
        "CREATE TABLE {{table}} (k text PRIMARY KEY); \
         ALTER FUNCTION projection_p.highwater_setup(text) RENAME TO highwater_apply_v99"
            .into(),
    ];
    for setup in &escapes {
        let status = refused(&mut admin, &with_setup("p", setup)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{setup}: {status:?}");
        assert_log_intact(&mut app, &mut expected, setup).await;
        assert!(
            !program.exists(),
            "{setup}: a program ran on the database host"
        );
    }
    // Nothing of the refused registrations stayed.
    let mut connection = app.database.connect().await;
    let versions: i64 = sqlx::query_scalar("SELECT count(*) FROM projection_versions")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(versions, 0);
}

#[tokio::test]
async fn a_projection_cannot_reach_another_projection_or_the_views() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    let mut expected = 0;
    admin
        .register_projection(register_toml(&with_handlers(
            "a",
            &[(
                "Seen",
                "INSERT INTO {{table}} VALUES ($stream) ON CONFLICT DO NOTHING",
            )],
        )))
        .await
        .unwrap();
    wait_active(&mut admin, "a", 1, Duration::from_secs(10)).await;
    app.append(append_request("s-1", None, vec![json_event("Seen", "{}")]))
        .await
        .unwrap();
    expected += 1;
    for setup in [
        "CREATE TABLE {{table}} (k text PRIMARY KEY); INSERT INTO projection_a.v1 VALUES ('x')",
        "CREATE TABLE {{table}} (k text PRIMARY KEY); DELETE FROM projection_a.v1",
        "CREATE TABLE {{table}} (k text PRIMARY KEY); CREATE TABLE {{table}}_copy AS SELECT * FROM projections.a",
        "CREATE TABLE {{table}} (k text PRIMARY KEY); ALTER VIEW projections.a RENAME TO b",
        "CREATE TABLE {{table}} (k text PRIMARY KEY); CREATE OR REPLACE VIEW projections.a AS SELECT 'x'::text AS k",
        "CREATE TABLE {{table}} (k text PRIMARY KEY); CREATE TABLE projection_a.v2 (k text)",
    ] {
        let status = refused(&mut admin, &with_setup("b", setup)).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{setup}: {status:?}");
        assert_log_intact(&mut app, &mut expected, setup).await;
    }
    for handler in [
        "INSERT INTO projection_a.v1 VALUES ($stream)",
        "DELETE FROM projection_a.v1",
        "INSERT INTO {{table}} SELECT k FROM projections.a",
    ] {
        let name = format!("h{}", expected);
        admin
            .register_projection(register_toml(&with_handlers(&name, &[("Poke", handler)])))
            .await
            .unwrap_or_else(|status| panic!("{handler}: {status:?}"));
        wait_active(&mut admin, &name, 1, Duration::from_secs(10)).await;
        let status = app
            .append(append_request("s-2", None, vec![json_event("Poke", "{}")]))
            .await
            .expect_err(handler);
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{handler}: {status:?}"
        );
        assert!(status.message().contains("permission denied"), "{status:?}");
        assert_log_intact(&mut app, &mut expected, handler).await;
    }
    // A projection named like another's version table has a table of its own.
    admin
        .register_projection(register_toml(&with_handlers(
            "a_v1",
            &[(
                "Seen",
                "INSERT INTO {{table}} VALUES ('other') ON CONFLICT DO NOTHING",
            )],
        )))
        .await
        .unwrap();
    wait_active(&mut admin, "a_v1", 1, Duration::from_secs(10)).await;
    let mut connection = app.database.connect().await;
    let a: Vec<String> = sqlx::query_scalar("SELECT k FROM projections.a ORDER BY k")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(a, ["s-1"]);
    let a_v1: Vec<String> = sqlx::query_scalar("SELECT k FROM projections.a_v1 ORDER BY k")
        .fetch_all(&mut connection)
        .await
        .unwrap();
    assert_eq!(a_v1, ["other"]);
}

#[tokio::test]
async fn handler_sql_cannot_leave_its_sandbox() {
    // One pooled connection: whatever a handler left on its session would meet the next append.
    let mut app = TestApp::spawn_configured(|config| config.database.pool_size = 1, &[]).await;
    let mut admin = admin(app.server.endpoint()).await;
    let mut expected = 0;
    let program = marker();

    // Not one SELECT, INSERT, UPDATE, DELETE or MERGE statement: refused at registration.
    let touch = format!("COPY (SELECT 1) TO PROGRAM 'touch {}'", program.display());
    for handler in [
        "RESET ROLE",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION DEFAULT",
        touch.as_str(),
        "DO $x$ BEGIN DELETE FROM public.events; END $x$",
        "INSERT INTO {{table}} VALUES ($stream); DELETE FROM public.events",
        "CREATE FUNCTION projection_r.f() RETURNS void LANGUAGE sql AS 'SELECT 1'",
        "CREATE TRIGGER t BEFORE TRUNCATE ON {{table}} EXECUTE FUNCTION suppress_redundant_updates_trigger()",
        "CREATE RULE r AS ON INSERT TO {{table}} DO ALSO NOTHING",
        "ALTER TABLE {{table}} ENABLE ROW LEVEL SECURITY",
        "ALTER VIEW projections.r RENAME TO s",
        "CREATE TEMP TABLE log_head (position bigint)",
        "SELECT 1 INTO TEMP log_head",
        "TRUNCATE public.events",
        // One statement with standard_conforming_strings on, several with it off (which an
        // earlier handler of the same call can set): backslashes are refused.
        "INSERT INTO {{table}} (k) SELECT 'X\\' || '; CREATE FUNCTION projection_r.t() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$; DELETE FROM {{table}} WHERE '' = '' --'",
    ] {
        let status = refused(&mut admin, &with_handlers("r", &[("Go", handler)])).await;
        assert_eq!(
            status.code(),
            Code::InvalidArgument,
            "{handler}: {status:?}"
        );
        assert_log_intact(&mut app, &mut expected, handler).await;
    }

    // Statements that register, and fail when they run: the append fails, the log is intact.
    let handlers = [
        (
            "Escape",
            "WITH x AS (SELECT set_config('role', 'none', true)) INSERT INTO {{table}} SELECT 'e' FROM x",
        ),
        (
            "Authorize",
            "WITH x AS (SELECT set_config('session_authorization', 'postgres', true)) INSERT INTO {{table}} SELECT 'a' FROM x",
        ),
        ("Forget", "DELETE FROM public.events"),
        ("Rewind", "UPDATE public.log_head SET position = 0"),
        ("Tombstone", "UPDATE public.streams SET tombstoned = true"),
        (
            "Peek",
            "INSERT INTO {{table}} SELECT pg_read_file('/etc/hostname')",
        ),
        (
            "Import",
            "INSERT INTO {{table}} SELECT lo_import('/etc/hostname')::text",
        ),
        (
            "Lock",
            "INSERT INTO {{table}} SELECT position::text FROM public.events FOR UPDATE",
        ),
        (
            "Catalog",
            "UPDATE public.projection_versions SET applied_position = 0",
        ),
        // Advisory locks (migration 0019): another projection's leadership or apply lock, or
        // the locks the connection's own server holds.
        (
            "Lead",
            "INSERT INTO {{table}} SELECT pg_advisory_lock(7)::text",
        ),
        (
            "Share",
            "INSERT INTO {{table}} SELECT pg_try_advisory_xact_lock_shared(7)::text",
        ),
        (
            "Release",
            "INSERT INTO {{table}} SELECT pg_advisory_unlock_all()::text",
        ),
        (
            "Unlock",
            "INSERT INTO {{table}} SELECT pg_advisory_unlock(1, 2)::text",
        ),
        // What a commit keeps or a rollback cannot undo (migration 0021).
        (
            "LargeObject",
            "INSERT INTO {{table}} SELECT lo_from_bytea(0, decode('00', 'hex'))::text",
        ),
        (
            "Wal",
            "INSERT INTO {{table}} SELECT pg_logical_emit_message(false, 'p', 'x')::text",
        ),
        (
            "Notify",
            "INSERT INTO {{table}} SELECT 'n' FROM (SELECT pg_notify('highwater_appended', '1')) s",
        ),
    ];
    admin
        .register_projection(register_toml(&with_handlers("q", &handlers)))
        .await
        .unwrap();
    wait_active(&mut admin, "q", 1, Duration::from_secs(10)).await;
    for (event_type, handler) in handlers {
        let status = app
            .append(append_request(
                "s-1",
                None,
                vec![json_event(event_type, "{}")],
            ))
            .await
            .expect_err(handler);
        assert_eq!(
            status.code(),
            Code::FailedPrecondition,
            "{handler}: {status:?}"
        );
        assert_log_intact(&mut app, &mut expected, handler).await;
    }
    // The review's two-handler escape, in one append: the first is refused, so nothing of the
    // append stays.
    let status = app
        .append(append_request(
            "s-1",
            None,
            vec![json_event("Escape", "{}"), json_event("Forget", "{}")],
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_log_intact(&mut app, &mut expected, "escape then forget").await;
    assert!(!program.exists(), "a program ran on the database host");
}

#[tokio::test]
async fn session_settings_a_handler_changes_do_not_outlive_it() {
    // One pooled connection, so that the next append runs on the session the handler changed.
    let mut app = TestApp::spawn_configured(|config| config.database.pool_size = 1, &[]).await;
    let mut admin = admin(app.server.endpoint()).await;
    let mut expected = 0;
    // A table of the projection's own named like the log's head, and a handler that puts the
    // projection's schema first on the session's search path: if the setting outlived the
    // handler, the next append would lock and move this table instead of the log's head.
    let toml = r#"
name = "shadow"
mode = "inline"
setup = """
CREATE TABLE {{table}} (k text PRIMARY KEY);
CREATE TABLE projection_shadow.log_head (singleton boolean PRIMARY KEY, position bigint, catalog_version bigint);
INSERT INTO projection_shadow.log_head VALUES (true, 1000, 0);
SELECT set_config('search_path', 'projection_shadow, public', false)
"""
[handlers]
Seen = "WITH x AS (SELECT set_config('search_path', 'projection_shadow, public', false)) INSERT INTO {{table}} SELECT $stream FROM x ON CONFLICT DO NOTHING"
Slow = "INSERT INTO {{table}} SELECT 'slow' FROM pg_sleep(0.2)"
"#;
    admin
        .register_projection(register_toml(toml))
        .await
        .unwrap();
    wait_active(&mut admin, "shadow", 1, Duration::from_secs(10)).await;
    for round in 0..3 {
        app.append(append_request("s-1", None, vec![json_event("Seen", "{}")]))
            .await
            .unwrap();
        expected += 1;
        assert_log_intact(&mut app, &mut expected, &format!("round {round}")).await;
    }
}

#[tokio::test]
async fn an_escape_in_a_projections_file_stops_the_server_from_starting() {
    let database = TestDatabase::new();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("evil.toml"),
        with_setup(
            "evil",
            "DO $x$ BEGIN EXECUTE 'CREATE TABLE {{table}} (k text PRIMARY KEY)'; RESET ROLE; \
             DELETE FROM public.events; END $x$",
        ),
    )
    .unwrap();
    let app = highwater::server::Application::build(config_for(
        &database.url,
        &["--projections", dir.path().to_str().unwrap()],
    ))
    .await
    .unwrap();
    let ran = tokio::time::timeout(
        Duration::from_secs(60),
        app.run_until_stopped(std::future::pending()),
    )
    .await
    .expect("the server must stop by itself");
    let error = ran
        .expect_err("the server must refuse the file")
        .to_string();
    assert!(
        error.contains("evil.toml") && error.contains("security-definer"),
        "{error}"
    );
}

/// Projection names that look like another projection's version (`a_v1` beside `a`, version 1)
/// get tables of their own: each projection's tables live in its own schema
/// (`projection_<name>.v<N>`), so no name can land on another's table.
#[tokio::test]
async fn a_projection_named_like_another_ones_version_keeps_its_own_table() {
    let mut app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    for name in ["a", "a_v1"] {
        admin
            .register_projection(register_toml(&with_setup(
                name,
                "CREATE TABLE {{table}} (k text PRIMARY KEY)",
            )))
            .await
            .unwrap();
        wait_active(&mut admin, name, 1, Duration::from_secs(10)).await;
    }
    for stream in ["one", "two"] {
        app.append(append_request(stream, None, vec![json_event("Seen", "{}")]))
            .await
            .unwrap();
    }
    let mut connection = app.database.connect().await;
    for view in ["projections.a", "projections.a_v1"] {
        let keys: Vec<String> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT k FROM {view} ORDER BY k"
        )))
        .fetch_all(&mut connection)
        .await
        .unwrap();
        assert_eq!(keys, ["one", "two"], "{view}");
    }
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT schemaname || '.' || tablename FROM pg_tables
          WHERE schemaname LIKE 'projection\\_%' ORDER BY 1",
    )
    .fetch_all(&mut connection)
    .await
    .unwrap();
    assert_eq!(tables, ["projection_a.v1", "projection_a_v1.v1"]);
}

#[tokio::test]
async fn projections_are_refused_while_every_role_may_take_advisory_locks() {
    let app = TestApp::spawn().await;
    let mut admin = admin(app.server.endpoint()).await;
    let mut connection = sqlx::PgConnection::connect(&as_superuser(&app.database.url))
        .await
        .unwrap();
    // As in a database migrated by a user that is not a superuser (migration 0019).
    sqlx::query("GRANT EXECUTE ON FUNCTION pg_try_advisory_lock(bigint) TO PUBLIC")
        .execute(&mut connection)
        .await
        .unwrap();
    let status = refused(
        &mut admin,
        &with_handlers(
            "locks",
            &[("Seen", "INSERT INTO {{table}} VALUES ($stream)")],
        ),
    )
    .await;
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(
        status.message().contains("pg_try_advisory_lock(bigint)")
            && status.message().contains("README, Security"),
        "{status:?}"
    );
    // What the README tells a superuser to run.
    let restrict = highwater_core::store::database::restrict_sandbox_functions_sql(&user_of(
        &app.database.url,
    ))
    .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(restrict))
        .execute(&mut connection)
        .await
        .unwrap();
    admin
        .register_projection(register_toml(&with_handlers(
            "locks",
            &[("Seen", "INSERT INTO {{table}} VALUES ($stream)")],
        )))
        .await
        .unwrap();
    wait_active(&mut admin, "locks", 1, Duration::from_secs(10)).await;
}

/// The statement README, Security tells a superuser to run is the one the private PostgreSQL
/// runs (and the tests above run): no copy of it can drift.
#[test]
fn the_readme_gives_the_statement_the_server_runs() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let expected =
        highwater_core::store::database::restrict_sandbox_functions_sql("highwater").unwrap();
    let start = readme
        .find("  SET search_path = pg_catalog;\n")
        .expect("the statement in the README");
    let block: Vec<&str> = readme[start..]
        .lines()
        .take_while(|line| line.trim() != "```")
        .map(|line| line.strip_prefix("  ").unwrap_or(line))
        .collect();
    assert_eq!(block.join("\n"), expected);
}
