//! The append function's one-statement path (migration 0013) against the checked path it falls
//! back to: random groups, run through each on a database of its own, must give the same answers
//! and leave the same log; and simple groups must not fall back.

use highwater_core::store::database;
use sqlx::{Connection, PgConnection, postgres::PgConnectOptions};
use uuid::Uuid;

use crate::helpers::TestDatabase;

/// SplitMix64, seeded: the same seed gives the same groups.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

#[derive(Clone, PartialEq)]
struct Event {
    id: Uuid,
    event_type: String,
    data: Vec<u8>,
    metadata: String,
}

struct Request {
    stream: String,
    kind: i16,
    expected: Option<i64>,
    events: Vec<Event>,
}

/// What the function answered for one request, the commit time reduced to whether it was given.
type Answer = (
    i32,
    i16,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Uuid>,
    bool,
);

const STREAMS: [&str; 5] = ["a", "b", "c", "d", "e"];

async fn migrated_database() -> (TestDatabase, PgConnection) {
    let test_database = TestDatabase::new();
    let options: PgConnectOptions = test_database.url.parse().unwrap();
    let pool = database::connect(&options, 1).await.unwrap();
    database::migrate(&pool).await.unwrap();
    pool.close().await;
    let mut connection = test_database.connect().await;
    // Counts the calls of the checked path: a wrapper of the same name logs each call in a
    // table (track_functions would need a superuser, which tests do not have in CI).
    sqlx::raw_sql(
        "ALTER FUNCTION highwater_append_checked(text[], smallint[], bigint[], integer[], uuid[],
                                                 text[], bytea[], text[], jsonb[], bigint)
             RENAME TO highwater_append_checked_real;
         CREATE TABLE checked_calls (called_at timestamptz NOT NULL DEFAULT now());
         CREATE FUNCTION highwater_append_checked(a text[], b smallint[], c bigint[], d integer[],
                                                  e uuid[], f text[], g bytea[], h text[],
                                                  i jsonb[], j bigint)
         RETURNS TABLE (r_request integer, r_outcome smallint, r_first_revision bigint,
                        r_last_revision bigint, r_first_position bigint, r_last_position bigint,
                        r_actual_revision bigint, r_conflicting_id uuid, r_recorded_us bigint)
         LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO checked_calls DEFAULT VALUES;
             RETURN QUERY SELECT * FROM highwater_append_checked_real(a, b, c, d, e, f, g, h, i, j);
         END $$;",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    (test_database, connection)
}

fn random_group(rng: &mut Rng, proposed: &mut Vec<Event>) -> Vec<Request> {
    let mut group = Vec::new();
    for _ in 0..=rng.below(4) {
        let mut events = Vec::new();
        for _ in 0..=rng.below(3) {
            let event = match rng.below(10) {
                // An event proposed before (stored or refused), resent as it was.
                0 | 1 if !proposed.is_empty() => rng.pick(proposed).clone(),
                // An id proposed before, with other content.
                2 if !proposed.is_empty() => Event {
                    data: vec![9],
                    ..rng.pick(proposed).clone()
                },
                _ => Event {
                    id: Uuid::now_v7(),
                    event_type: rng.pick(&["A", "B"]).to_string(),
                    data: vec![rng.below(3) as u8],
                    metadata: rng.pick(&["{}", r#"{"k":1}"#]).to_string(),
                },
            };
            // The server refuses a request with an id twice (validate.rs) before any SQL.
            if events.iter().all(|e: &Event| e.id != event.id) {
                events.push(event);
            }
        }
        proposed.extend(events.iter().cloned());
        let kind = rng.below(4) as i16;
        group.push(Request {
            stream: rng.pick(&STREAMS).to_string(),
            kind,
            expected: (kind == 3).then(|| rng.below(6) as i64 - 1),
            events,
        });
    }
    group
}

/// Every stream of its own, no id twice, none stored: the one-statement path's case.
fn is_simple(group: &[Request], stored: &[Uuid]) -> bool {
    let mut streams: Vec<&str> = group.iter().map(|r| r.stream.as_str()).collect();
    let mut ids: Vec<Uuid> = group
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.id))
        .collect();
    let (stream_count, id_count) = (streams.len(), ids.len());
    streams.sort_unstable();
    streams.dedup();
    ids.sort_unstable();
    ids.dedup();
    streams.len() == stream_count
        && ids.len() == id_count
        && !ids.iter().any(|id| stored.contains(id))
}

/// Calls `function` for the group in a transaction of its own; its answers, and how often the
/// transaction called the checked path.
async fn append(
    connection: &mut PgConnection,
    function: &str,
    group: &[Request],
) -> (Vec<Answer>, i64) {
    let events: Vec<&Event> = group.iter().flat_map(|r| &r.events).collect();
    let mut transaction = connection.begin().await.unwrap();
    let checked_before = checked_calls(&mut transaction).await;
    let sql = format!(
        "SELECT r_request, r_outcome, r_first_revision, r_last_revision, r_first_position,
                r_last_position, r_actual_revision, r_conflicting_id, r_recorded_us IS NOT NULL
           FROM {function}($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::jsonb[], 0)"
    );
    let answers: Vec<Answer> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(group.iter().map(|r| r.stream.clone()).collect::<Vec<_>>())
        .bind(group.iter().map(|r| r.kind).collect::<Vec<_>>())
        .bind(group.iter().map(|r| r.expected).collect::<Vec<_>>())
        .bind(
            group
                .iter()
                .map(|r| r.events.len() as i32)
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.id).collect::<Vec<_>>())
        .bind(
            events
                .iter()
                .map(|e| e.event_type.clone())
                .collect::<Vec<_>>(),
        )
        .bind(events.iter().map(|e| e.data.clone()).collect::<Vec<_>>())
        .bind(vec!["application/json"; events.len()])
        .bind(
            events
                .iter()
                .map(|e| e.metadata.clone())
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *transaction)
        .await
        .unwrap();
    let checked_after = checked_calls(&mut transaction).await;
    transaction.commit().await.unwrap();
    (answers, checked_after - checked_before)
}

/// Calls of the checked path so far.
async fn checked_calls(connection: &mut PgConnection) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM checked_calls")
        .fetch_one(connection)
        .await
        .unwrap()
}

type LogRow = (i64, String, i64, Uuid, String, Vec<u8>, String);
type HeadRow = (String, i64, i64, Option<i64>, bool);

async fn log(connection: &mut PgConnection) -> (Vec<LogRow>, Vec<HeadRow>, i64) {
    let events = sqlx::query_as(
        "SELECT position, stream, revision, id, type, data, metadata::text FROM events ORDER BY position",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap();
    let heads = sqlx::query_as(
        "SELECT stream, revision, position, deleted_through, tombstoned FROM streams ORDER BY stream",
    )
    .fetch_all(&mut *connection)
    .await
    .unwrap();
    let head = sqlx::query_scalar("SELECT position FROM log_head")
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    (events, heads, head)
}

#[tokio::test]
async fn the_one_statement_path_answers_as_the_checked_path_does() {
    let (_fast_db, mut fast) = migrated_database().await;
    let (_checked_db, mut checked) = migrated_database().await;
    let mut rng = Rng(0x4857_0013);
    let mut proposed = Vec::new();
    let (mut simple_groups, mut other_groups) = (0, 0);
    for round in 0..400 {
        // Now and then a stream is deleted, softly or for good, in both logs alike.
        if round % 37 == 36 {
            let hard = rng.below(4) == 0;
            let stream = *rng.pick(&STREAMS);
            for connection in [&mut fast, &mut checked] {
                sqlx::query("SELECT * FROM highwater_delete_stream($1, 0::smallint, NULL, $2)")
                    .bind(stream)
                    .bind(hard)
                    .fetch_all(&mut *connection)
                    .await
                    .unwrap();
            }
        }
        let group = random_group(&mut rng, &mut proposed);
        let stored: Vec<Uuid> = sqlx::query_scalar("SELECT id FROM events")
            .fetch_all(&mut fast)
            .await
            .unwrap();
        let simple = is_simple(&group, &stored);
        let (fast_answers, fell_back) = append(&mut fast, "highwater_append", &group).await;
        let (checked_answers, _) = append(&mut checked, "highwater_append_checked", &group).await;
        assert_eq!(fast_answers, checked_answers, "round {round}");
        assert_eq!(
            fell_back,
            i64::from(!simple),
            "round {round}: simple {simple}"
        );
        if simple {
            simple_groups += 1;
        } else {
            other_groups += 1;
        }
    }
    assert_eq!(log(&mut fast).await, log(&mut checked).await);
    // Both paths were exercised, and the one-statement path wrote a good part of the log.
    assert!(
        simple_groups > 50 && other_groups > 50,
        "{simple_groups} simple, {other_groups} not"
    );
}

#[tokio::test]
async fn a_large_simple_group_is_written_in_order_by_the_one_statement_path() {
    let (_db, mut connection) = migrated_database().await;
    // 200 requests of 50 events each, one stream each: the writer's largest groups are of this
    // size (10,000 events).
    let group: Vec<Request> = (0..200)
        .map(|i| Request {
            stream: format!("s-{i}"),
            kind: 1,
            expected: None,
            events: (0..50)
                .map(|_| Event {
                    id: Uuid::now_v7(),
                    event_type: "E".into(),
                    data: vec![1; 100],
                    metadata: "{}".into(),
                })
                .collect(),
        })
        .collect();
    let (answers, fell_back) = append(&mut connection, "highwater_append", &group).await;
    assert_eq!(fell_back, 0);
    for (i, answer) in answers.iter().enumerate() {
        let first = i as i64 * 50 + 1;
        assert_eq!(
            answer,
            &(
                i as i32 + 1,
                0,
                Some(0),
                Some(49),
                Some(first),
                Some(first + 49),
                None,
                None,
                true
            )
        );
    }
    let (events, heads, head) = log(&mut connection).await;
    assert_eq!(head, 10_000);
    let ids: Vec<Uuid> = group
        .iter()
        .flat_map(|r| r.events.iter().map(|e| e.id))
        .collect();
    assert_eq!(events.iter().map(|e| e.3).collect::<Vec<_>>(), ids);
    assert!(events.iter().enumerate().all(|(i, e)| e.0 == i as i64 + 1
        && e.1 == format!("s-{}", i / 50)
        && e.2 == (i % 50) as i64));
    assert_eq!(heads.len(), 200);
    assert!(heads.iter().all(|h| h.1 == 49));
}

/// Both append functions run with generic plans: left to the default, PostgreSQL planned their
/// statements anew on every call once the tables held rows, which cost about two thirds of a
/// single-event append (migration 0015; the benchmark shows the time, this the setting).
#[tokio::test]
async fn the_append_functions_keep_generic_plans() {
    let test_database = TestDatabase::new();
    let options: PgConnectOptions = test_database.url.parse().unwrap();
    let pool = database::connect(&options, 1).await.unwrap();
    database::migrate(&pool).await.unwrap();
    let settings: Vec<(String, Vec<String>)> = sqlx::query_as(
        "SELECT proname::text, proconfig FROM pg_proc
          WHERE proname IN ('highwater_append', 'highwater_append_checked') ORDER BY proname",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(settings.len(), 2, "{settings:?}");
    for (function, config) in settings {
        for wanted in ["plan_cache_mode=force_generic_plan", "enable_seqscan=off"] {
            assert!(
                config.iter().any(|setting| setting == wanted),
                "{function} lacks {wanted}: {config:?}"
            );
        }
    }
    pool.close().await;
}

/// Entries read from the streams primary key index so far, as PostgreSQL's statistics count them
/// (this session's counts flushed first).
async fn streams_index_reads(connection: &mut PgConnection) -> i64 {
    sqlx::raw_sql("SELECT pg_stat_force_next_flush(); SELECT pg_stat_clear_snapshot()")
        .execute(&mut *connection)
        .await
        .unwrap();
    sqlx::query_scalar(
        "SELECT idx_tup_read FROM pg_stat_user_indexes WHERE indexrelname = 'streams_pkey'",
    )
    .fetch_one(&mut *connection)
    .await
    .unwrap()
}

/// The one-statement path probes the streams index per request however the planner saw the table
/// when the connection planned it: a plan made after `streams` was analyzed nearly empty used to
/// hash a full scan of its primary key index, and kept doing so as the table grew (migration
/// 0016). Counted in index entries read, from PostgreSQL's statistics.
#[tokio::test]
async fn the_one_statement_path_probes_streams_whatever_it_was_planned_against() {
    let test_database = TestDatabase::new();
    let options: PgConnectOptions = test_database.url.parse().unwrap();
    let pool = database::connect(&options, 1).await.unwrap();
    database::migrate(&pool).await.unwrap();
    pool.close().await;
    let mut connection = test_database.connect().await;
    let append = |stream: &str| {
        format!(
            "SELECT count(*) FROM highwater_append(ARRAY['{stream}'], '{{0}}'::smallint[],
                 '{{0}}'::bigint[], '{{1}}'::int[], ARRAY[gen_random_uuid()], '{{T}}'::text[],
                 ARRAY['\\x7b7d'::bytea], '{{application/json}}'::text[], '{{\"{{}}\"}}'::jsonb[], 0)"
        )
    };
    // Planned on this connection while streams is analyzed empty.
    sqlx::raw_sql("ANALYZE streams")
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(append("first")))
        .execute(&mut connection)
        .await
        .unwrap();
    sqlx::raw_sql(
        "INSERT INTO streams (stream, revision, position)
         SELECT 'bulk-' || g, 0, 0 FROM generate_series(1, 20000) g",
    )
    .execute(&mut connection)
    .await
    .unwrap();
    let before = streams_index_reads(&mut connection).await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(append("second")))
        .execute(&mut connection)
        .await
        .unwrap();
    let read = streams_index_reads(&mut connection).await - before;
    assert!(
        read < 100,
        "one single-event append read {read} entries of the streams index"
    );
}
