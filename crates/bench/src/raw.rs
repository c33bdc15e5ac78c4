//! The raw PostgreSQL baseline: the same rows written and read straight through sqlx, with no
//! server in between, on a database of its own on the same PostgreSQL.

use std::time::{Duration, Instant};

use sqlx::{Connection, PgConnection, PgPool, Row, postgres::PgPoolOptions};
use tokio_stream::StreamExt;
use uuid::Uuid;

use super::stats::Samples;
use crate::error::Result;

/// The same shape as `events`, with a sequence instead of the log_head row.
const SCHEMA: &str = "CREATE TABLE raw_events (
    position     bigserial   PRIMARY KEY,
    stream       text        NOT NULL,
    revision     bigint      NOT NULL,
    id           uuid        NOT NULL UNIQUE,
    type         text        NOT NULL,
    data         bytea       NOT NULL,
    content_type text        NOT NULL,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, revision)
)";

pub async fn prepare(url: &str) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(40)
        .connect(url)
        .await?;
    sqlx::query(SCHEMA).execute(&pool).await?;
    // W3 scans a table of its own, exactly as large as the log it is compared with.
    sqlx::query("CREATE TABLE raw_scan (LIKE raw_events INCLUDING ALL)")
        .execute(&pool)
        .await?;
    Ok(pool)
}

/// `clients` connections, each inserting `batch`-row transactions into its own stream until the
/// deadline. Returns the events written and the latency of every transaction.
pub async fn append(
    url: &str,
    clients: usize,
    batch: usize,
    duration: Duration,
    data: &[u8],
) -> Result<(u64, Samples)> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for client in 0..clients {
        let url = url.to_string();
        let data = data.to_vec();
        tasks.push(tokio::spawn(async move {
            let mut connection = PgConnection::connect(&url).await?;
            let stream = format!("raw-{}-{client}", Uuid::new_v4().simple());
            let mut samples = Samples::default();
            let mut revision = 0i64;
            while Instant::now() < deadline {
                let ids: Vec<Uuid> = (0..batch).map(|_| Uuid::now_v7()).collect();
                let revisions: Vec<i64> = (revision..revision + batch as i64).collect();
                let payloads: Vec<&[u8]> = (0..batch).map(|_| data.as_slice()).collect();
                let started = Instant::now();
                sqlx::query(
                    "INSERT INTO raw_events (stream, revision, id, type, data, content_type)
                     SELECT $1, r, i, 'OrderPlaced', d, 'application/json' FROM unnest($2::bigint[], $3::uuid[], $4::bytea[]) AS u(r, i, d)",
                )
                .bind(&stream)
                .bind(&revisions)
                .bind(&ids)
                .bind(&payloads)
                .execute(&mut connection)
                .await?;
                samples.push(started.elapsed());
                revision += batch as i64;
            }
            Ok::<_, crate::error::Error>((revision as u64, samples))
        }));
    }
    let mut events = 0;
    let mut samples = Samples::default();
    for task in tasks {
        let (written, latencies) = task
            .await
            .map_err(|e| crate::error::Error::Internal(e.to_string()))??;
        events += written;
        samples.extend(latencies);
    }
    Ok((events, samples))
}

/// Fills the scan table with `events` rows of `data` in one statement.
pub async fn fill(pool: &PgPool, events: u64, data: &[u8]) -> Result<()> {
    sqlx::query(
        "INSERT INTO raw_scan (position, stream, revision, id, type, data, content_type)
         SELECT g, 'scan-' || (g % 100), g, gen_random_uuid(), 'OrderPlaced', $2, 'application/json'
           FROM generate_series(1, $1) AS g",
    )
    .bind(events as i64)
    .bind(data)
    .execute(pool)
    .await?;
    Ok(())
}

/// Adds rows to the append table until it holds `rows`, in streams of 100 with time-ordered
/// ids (the load generators' ids are UUIDv7, so the id index grows at its right edge alike), in
/// statements of at most 500,000 rows.
pub async fn grow(pool: &PgPool, rows: u64, data: &[u8]) -> Result<()> {
    const CHUNK: i64 = 500_000;
    let target = i64::try_from(rows).unwrap_or(i64::MAX);
    loop {
        let held: i64 = sqlx::query_scalar("SELECT count(*) FROM raw_events")
            .fetch_one(pool)
            .await?;
        let missing = (target - held).min(CHUNK);
        if missing <= 0 {
            return Ok(());
        }
        // A version-7 layout: 48 bits of milliseconds, the version nibble, random bits.
        sqlx::query(
            "INSERT INTO raw_events (stream, revision, id, type, data, content_type)
             SELECT 'grow-' || ($3 + g) / 100, ($3 + g) % 100,
                    (lpad(to_hex((extract(epoch FROM clock_timestamp()) * 1000)::bigint), 12, '0')
                     || '7' || substr(md5(g::text || random()::text), 1, 19))::uuid,
                    'OrderPlaced', $2, 'application/json'
               FROM generate_series(1, $1) AS g",
        )
        .bind(missing)
        .bind(data)
        .bind(held)
        .execute(pool)
        .await?;
    }
}

/// Reads every row in position order, decoding the same columns a read returns.
pub async fn scan(pool: &PgPool) -> Result<u64> {
    let mut rows = sqlx::query(
        "SELECT position, stream, revision, id, type, data, content_type, metadata::text AS metadata, recorded_at::text AS at
           FROM raw_scan ORDER BY position",
    )
    .fetch(pool);
    let mut count = 0u64;
    while let Some(row) = rows.next().await {
        let row = row?;
        let _: (
            i64,
            String,
            i64,
            Uuid,
            String,
            Vec<u8>,
            String,
            String,
            String,
        ) = (
            row.try_get(0)?,
            row.try_get(1)?,
            row.try_get(2)?,
            row.try_get(3)?,
            row.try_get(4)?,
            row.try_get(5)?,
            row.try_get(6)?,
            row.try_get(7)?,
            row.try_get(8)?,
        );
        count += 1;
    }
    Ok(count)
}
