//! Reads of the event log in keyset pages: a page is bounded in rows and in bytes, so a stream of
//! a million events, or of large events, never sits in memory at once.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use sqlx::{AssertSqlSafe, PgPool, Row, postgres::PgRow};
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_stream::StreamExt;

use super::{
    columns::{micros_to_time, to_i64},
    model::{Direction, RecordedEvent},
    upcasting::Upcasting,
};
use crate::{
    error::{Error, Result},
    shutdown::Tasks,
};

/// Rows fetched per page at most.
pub const PAGE_ROWS: i64 = 1000;
/// Event bytes fetched per page at most, counting everything sent of an event: data, metadata
/// (as the JSON text it is sent as), stream, type and content type. A page always holds at
/// least one event; it stops at the first event that starts at or past this bound.
pub const PAGE_BYTES: i64 = 4 * 1024 * 1024;

/// The bytes of an event that a page counts, as a SQL expression over the page's columns.
pub const EVENT_BYTES_SQL: &str = "octet_length(limited.data) + octet_length(limited.metadata) \
     + octet_length(limited.stream) + octet_length(limited.type) + octet_length(limited.content_type)";

pub const COLUMNS: &str = "e.position, e.stream, e.revision, e.id, e.type, e.data, e.content_type, \
                       e.metadata::text AS metadata, \
                       (extract(epoch FROM e.recorded_at) * 1000000)::bigint AS recorded_us";

/// Which slice of the log a cursor walks.
#[derive(Debug, Clone)]
enum Scope {
    All,
    Stream(String),
}

/// Walks a stream or the whole log page by page, in one direction, up to a count.
pub struct ReadCursor {
    pool: PgPool,
    scope: Scope,
    direction: Direction,
    /// The next key to read: a position (whole log) or a revision (stream), inclusive.
    next_key: Option<i64>,
    /// Events still to return; `None` means no limit.
    remaining: Option<u64>,
    /// For a read that started from a snapshot: the stream's soft-delete point when the snapshot
    /// was read. A page that finds another fails the read, rather than return a snapshot of the
    /// deleted stream followed by the events of the recreated one.
    pinned: Option<PinnedDelete>,
    /// The upcasters every page passes through; `None` reads events as stored.
    upcasting: Option<Arc<Upcasting>>,
}

/// A stream's soft-delete point (`streams.deleted_through`) as a read saw it first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PinnedDelete {
    pub deleted_through: Option<i64>,
}

impl ReadCursor {
    /// Forwards: positions above `after_position`. Backwards: positions at or below it.
    pub fn all(pool: PgPool, after_position: u64, direction: Direction, max_count: u64) -> Self {
        let next_key = match direction {
            Direction::Forwards => after_position.checked_add(1).map(to_i64),
            Direction::Backwards => Some(to_i64(after_position)),
        };
        Self {
            pool,
            scope: Scope::All,
            direction,
            next_key,
            remaining: limit(max_count),
            pinned: None,
            upcasting: None,
        }
    }

    /// Forwards: revisions from `from_revision` up. Backwards: from `from_revision` down.
    pub fn stream(
        pool: PgPool,
        stream: String,
        from_revision: u64,
        direction: Direction,
        max_count: u64,
    ) -> Self {
        Self {
            pool,
            scope: Scope::Stream(stream),
            direction,
            next_key: Some(to_i64(from_revision)),
            remaining: limit(max_count),
            pinned: None,
            upcasting: None,
        }
    }

    /// A forwards stream cursor that fails (ABORTED) if the stream's soft-delete point moves from
    /// `pinned` while it reads: the read of a snapshot and the events after it.
    pub fn stream_pinned(
        pool: PgPool,
        stream: String,
        from_revision: u64,
        max_count: u64,
        pinned: PinnedDelete,
    ) -> Self {
        Self {
            pinned: Some(pinned),
            ..Self::stream(pool, stream, from_revision, Direction::Forwards, max_count)
        }
    }

    /// Pages pass through the upcasters (`None`: events as stored).
    pub fn upcast_with(self, upcasting: Option<Arc<Upcasting>>) -> Self {
        Self { upcasting, ..self }
    }

    /// The next page; empty when the read is complete.
    pub async fn next_page(&mut self) -> Result<Vec<RecordedEvent>> {
        let Some(key) = self.next_key else {
            return Ok(Vec::new());
        };
        let rows = match self.remaining {
            Some(0) => return Ok(Vec::new()),
            Some(remaining) => PAGE_ROWS.min(to_i64(remaining)),
            None => PAGE_ROWS,
        };
        let (key_column, filter) = match self.scope {
            Scope::All => ("position", ""),
            // Revisions up to a soft delete are hidden (all of them after a hard delete, which
            // erased them anyway).
            Scope::Stream(_) => (
                "revision",
                "AND e.stream = $4 AND e.revision > coalesce(
                     (SELECT s.deleted_through FROM streams s WHERE s.stream = $4), -1)",
            ),
        };
        let (comparison, order) = match self.direction {
            Direction::Forwards => (">=", "ASC"),
            Direction::Backwards => ("<=", "DESC"),
        };
        // The innermost query takes up to `rows` keys; the window runs over those rows only, and
        // the outer query keeps the prefix that starts within PAGE_BYTES (always the first row).
        // octet_length of data reads the size without detoasting; the metadata is counted as
        // the text that is sent.
        let sql = format!(
            "SELECT * FROM (
                 SELECT limited.*,
                        sum({EVENT_BYTES_SQL}) OVER (ORDER BY limited.{key_column} {order})
                            - ({EVENT_BYTES_SQL}) AS bytes_before
                   FROM (
                       SELECT {COLUMNS}
                         FROM events e
                        WHERE e.{key_column} {comparison} $1 {filter}
                        ORDER BY e.{key_column} {order}
                        LIMIT $2
                   ) limited
             ) page
             WHERE page.bytes_before < $3
             ORDER BY page.{key_column} {order}"
        );
        // Built only from the fixed fragments above: no input reaches the text.
        let mut query = sqlx::query(AssertSqlSafe(sql))
            .bind(key)
            .bind(rows)
            .bind(PAGE_BYTES);
        if let Scope::Stream(stream) = &self.scope {
            query = query.bind(stream.as_str());
        }
        // Decoded as the rows arrive, while PostgreSQL still sends the rest of the page.
        let mut rows = query.fetch(&self.pool);
        let mut page = Vec::new();
        while let Some(row) = rows.next().await {
            page.push(decode(&row?)?);
        }
        drop(rows);
        if let Some(upcasting) = &self.upcasting {
            upcasting.apply(&mut page).await?;
        }
        if let (Some(pinned), Scope::Stream(stream)) = (self.pinned, &self.scope) {
            let now: Option<i64> =
                sqlx::query_scalar("SELECT deleted_through FROM streams WHERE stream = $1")
                    .bind(stream)
                    .fetch_optional(&self.pool)
                    .await?
                    .flatten();
            if now != pinned.deleted_through {
                return Err(Error::Aborted(format!(
                    "stream {stream:?} was deleted during the read from its snapshot; read it again"
                )));
            }
        }

        if let Some(last) = page.last() {
            let last_key = match self.scope {
                Scope::All => last.position,
                Scope::Stream(_) => last.revision,
            } as i64;
            self.next_key = match self.direction {
                Direction::Forwards => last_key.checked_add(1),
                Direction::Backwards => last_key.checked_sub(1).filter(|k| *k >= 0),
            };
            if let Some(remaining) = self.remaining.as_mut() {
                *remaining -= page.len() as u64;
            }
        } else {
            self.next_key = None;
        }
        Ok(page)
    }
}

/// A cursor that reads its next page while the caller is busy with the current one, so that
/// PostgreSQL and the caller work at the same time instead of in turns. At most three pages are
/// in memory: the caller's, one waiting for it, and one being read; with upcasting, which runs
/// as a stage of its own (on another connection, while the next page is read), two more: one
/// waiting for it and one being upcast.
pub struct Prefetch {
    /// Pages in order; an empty page or an error is the last.
    pages: mpsc::Receiver<Result<Vec<RecordedEvent>>>,
    reader: JoinHandle<()>,
    upcaster: Option<JoinHandle<()>>,
}

impl Prefetch {
    /// Starts reading ahead, as tasks of `tasks`.
    pub fn new(mut cursor: ReadCursor, tasks: &Tasks) -> Self {
        let upcasting = cursor.upcasting.take();
        let (sender, read) = mpsc::channel(1);
        let reader = tasks.spawn("read-ahead", async move {
            loop {
                let page = cursor.next_page().await;
                let last = page.as_ref().map_or(true, Vec::is_empty);
                if sender.send(page).await.is_err() || last {
                    return;
                }
            }
        });
        let Some(upcasting) = upcasting else {
            return Self {
                pages: read,
                reader,
                upcaster: None,
            };
        };
        let (sender, pages) = mpsc::channel(1);
        let upcaster = tasks.spawn("read-ahead-upcast", async move {
            let mut read = read;
            while let Some(page) = read.recv().await {
                let page = match page {
                    Ok(mut page) => upcasting.apply(&mut page).await.map(|()| page),
                    Err(error) => Err(error),
                };
                let last = page.as_ref().map_or(true, Vec::is_empty);
                if sender.send(page).await.is_err() || last {
                    return;
                }
            }
        });
        Self {
            pages,
            reader,
            upcaster: Some(upcaster),
        }
    }

    /// The next page; empty when the read is complete. Cancel-safe.
    pub async fn next_page(&mut self) -> Result<Vec<RecordedEvent>> {
        self.pages.recv().await.unwrap_or_else(|| Ok(Vec::new()))
    }
}

impl Drop for Prefetch {
    /// A caller that stops early (a client went away) stops the read ahead too.
    fn drop(&mut self) {
        self.reader.abort();
        if let Some(upcaster) = &self.upcaster {
            upcaster.abort();
        }
    }
}

fn limit(max_count: u64) -> Option<u64> {
    (max_count > 0).then_some(max_count)
}

/// Whether a stream has any event that is not deleted.
pub async fn stream_exists(pool: &PgPool, stream: &str) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT revision FROM streams
          WHERE stream = $1 AND revision > coalesce(deleted_through, -1)",
    )
    .bind(stream)
    .fetch_optional(pool)
    .await?;
    Ok(found.is_some())
}

pub fn decode(row: &PgRow) -> Result<RecordedEvent> {
    let metadata: String = row.try_get("metadata")?;
    let metadata: HashMap<String, String> = serde_json::from_str(&metadata).map_err(|error| {
        Error::Internal(format!("stored metadata is not a string map: {error}"))
    })?;
    let recorded_at = micros_to_time(row.try_get("recorded_us")?);
    Ok(RecordedEvent {
        id: row.try_get("id")?,
        event_type: row.try_get("type")?,
        stream: row.try_get("stream")?,
        revision: row.try_get::<i64, _>("revision")? as u64,
        position: row.try_get::<i64, _>("position")? as u64,
        data: Bytes::from(row.try_get::<Vec<u8>, _>("data")?),
        content_type: row.try_get("content_type")?,
        metadata,
        recorded_at,
    })
}
