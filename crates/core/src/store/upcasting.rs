//! Events read through the upcasters (docs/ARCHITECTURE.md, "Upcasting"): a page whose events
//! no upcaster reads costs nothing more; one with such events sends those (and only those) to
//! `highwater_upcasters.upcast_fast` in one statement. The statement runs in a read-only transaction
//! that is rolled back, under a statement timeout: whatever an expression changes in the session
//! (`set_config(..., false)`) goes with the rollback, and a slow expression ends.

use std::{
    collections::{BTreeSet, HashMap},
    sync::{Arc, RwLock},
    time::Duration,
};

use bytes::Bytes;
use sqlx::{AssertSqlSafe, Connection, PgPool, Row};

use super::model::RecordedEvent;
use crate::error::{Error, Result};

/// SQLSTATE the dispatcher raises for an upcaster that fails on an event.
const UPCASTER_FAILED: &str = "HWU01";
/// SQLSTATE of a statement cancelled by `statement_timeout`.
const QUERY_CANCELED: &str = "57014";
/// The dispatchers the registration generates (`upcast::definition::Dispatcher`).
const FAST_DISPATCHER: &str = "highwater_upcasters.upcast_fast";
const CHECKED_DISPATCHER: &str = "highwater_upcasters.upcast";

/// Whether an error of the fast dispatcher needs the checked one to name the upcaster and the
/// event: an error an expression raised, not one the dispatcher named, a timeout, or one of a
/// connection or a server going away (classes 08, 53, 57).
fn needs_naming(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(db) => {
            let code = db.code();
            let code = code.as_deref().unwrap_or("");
            code != UPCASTER_FAILED
                && !["08", "53", "57"]
                    .iter()
                    .any(|class| code.starts_with(class))
        }
        _ => false,
    }
}

fn is_upcaster_failure(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(UPCASTER_FAILED))
}

/// The events of a page that some upcaster reads, as the arrays the statement takes.
struct Batch<'a> {
    positions: Vec<i64>,
    streams: Vec<&'a str>,
    revisions: Vec<i64>,
    types: Vec<&'a str>,
    data: Vec<&'a [u8]>,
    content_types: Vec<&'a str>,
    metadata: Vec<serde_json::Value>,
}

/// How a read returns events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Shape {
    /// Through the upcasters (the default).
    #[default]
    Upcast,
    /// As stored, byte for byte (a request's `original` flag).
    Stored,
}

impl Shape {
    pub fn from_original(original: bool) -> Self {
        if original { Self::Stored } else { Self::Upcast }
    }

    /// The upcasting a read of this shape passes its pages through.
    pub fn upcasting(self, upcasting: &Arc<Upcasting>) -> Option<Arc<Upcasting>> {
        match self {
            Self::Upcast => Some(upcasting.clone()),
            Self::Stored => None,
        }
    }
}

/// The event types the database's upcasters read, kept current by [`Upcasting::reload`] (on
/// every catalog notification, and by `upcast::Upcasters` before a change replies); the upcasting
/// itself is done by the database's dispatcher, so a set a moment old only delays when another
/// server's new upcaster applies here.
pub struct Upcasting {
    pool: PgPool,
    /// Read on every page, replaced on reload: a lock held for a copy of an `Arc` only.
    sources: RwLock<Arc<BTreeSet<String>>>,
    /// Held across a reload's query and its store, so that reloads store their sets in the order
    /// they read them: without it a reload that read before a registration committed could store
    /// its older set after the registration's own reload.
    reloading: tokio::sync::Mutex<()>,
    /// The longest the upcasters of one page may run.
    timeout: Duration,
}

impl Upcasting {
    pub async fn load(pool: PgPool, timeout: Duration) -> Result<Arc<Self>> {
        let upcasting = Arc::new(Self {
            pool,
            sources: RwLock::new(Arc::default()),
            reloading: tokio::sync::Mutex::new(()),
            timeout,
        });
        upcasting.reload().await?;
        Ok(upcasting)
    }

    /// Reads the set of upcast types again.
    pub async fn reload(&self) -> Result<()> {
        let _in_order = self.reloading.lock().await;
        let types: Vec<String> = sqlx::query_scalar("SELECT unnest(highwater_upcasters.sources())")
            .fetch_all(&self.pool)
            .await?;
        let types: BTreeSet<String> = types.into_iter().collect();
        *self.sources.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(types);
        Ok(())
    }

    fn sources(&self) -> Arc<BTreeSet<String>> {
        self.sources
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Whether some upcaster reads events of this type.
    pub fn reads(&self, event_type: &str) -> bool {
        self.sources().contains(event_type)
    }

    /// Upcasts the page's events in place. FAILED_PRECONDITION names the upcaster and the event
    /// when one fails: an event is never dropped or passed on as stored instead.
    pub async fn apply(&self, page: &mut [RecordedEvent]) -> Result<()> {
        let sources = self.sources();
        if sources.is_empty() {
            return Ok(());
        }
        let chosen: Vec<usize> = page
            .iter()
            .enumerate()
            .filter(|(_, event)| sources.contains(&event.event_type))
            .map(|(index, _)| index)
            .collect();
        if chosen.is_empty() {
            return Ok(());
        }
        let events = || chosen.iter().map(|&index| &page[index]);
        let batch = Batch {
            positions: events().map(|e| e.position as i64).collect(),
            streams: events().map(|e| e.stream.as_str()).collect(),
            revisions: events().map(|e| e.revision as i64).collect(),
            types: events().map(|e| e.event_type.as_str()).collect(),
            data: events().map(|e| e.data.as_ref()).collect(),
            content_types: events().map(|e| e.content_type.as_str()).collect(),
            metadata: events()
                .map(|e| serde_json::to_value(&e.metadata).unwrap_or_default())
                .collect(),
        };
        let rows = match self.run(&batch, FAST_DISPATCHER).await {
            Ok(rows) => rows,
            // The fast dispatcher does not say which upcaster failed on which event: the checked
            // one, on the same events, does (and costs more only on this path). Not for its own
            // named errors, a timeout, or a database that is going away.
            Err(error) if needs_naming(&error) => {
                match self.run(&batch, CHECKED_DISPATCHER).await {
                    Ok(rows) => rows,
                    Err(checked) if is_upcaster_failure(&checked) => {
                        return Err(self.failure(checked));
                    }
                    Err(_) => return Err(self.failure(error)),
                }
            }
            Err(error) => return Err(self.failure(error)),
        };
        if rows.len() != chosen.len() {
            return Err(Error::Internal(format!(
                "upcasting returned {} events for {}",
                rows.len(),
                chosen.len()
            )));
        }
        for (row, &index) in rows.iter().zip(&chosen) {
            let event = &mut page[index];
            event.event_type = row.try_get("type")?;
            event.data = Bytes::from(row.try_get::<Vec<u8>, _>("data")?);
            let metadata: String = row.try_get("metadata")?;
            event.metadata = serde_json::from_str::<HashMap<String, String>>(&metadata)
                .map_err(|error| Error::Internal(format!("upcast metadata: {error}")))?;
        }
        Ok(())
    }

    /// One statement over the batch, through `dispatcher`, in a read-only transaction rolled
    /// back whatever happens: nothing of the expressions stays on the connection.
    async fn run(
        &self,
        batch: &Batch<'_>,
        dispatcher: &str,
    ) -> std::result::Result<Vec<sqlx::postgres::PgRow>, sqlx::Error> {
        let mut connection = self.pool.acquire().await?;
        // A tracked transaction: if this call is cancelled (a client that goes away drops its
        // read), sqlx rolls it back before the connection serves anyone else (found by review:
        // a plain BEGIN went back to the pool read-only and inside the transaction).
        let mut transaction = connection.begin_with("BEGIN READ ONLY").await?;
        // A number of milliseconds: no input reaches the text.
        sqlx::query(AssertSqlSafe(format!(
            "SET LOCAL statement_timeout = {}",
            self.timeout.as_millis().max(1)
        )))
        .execute(&mut *transaction)
        .await?;
        // The dispatcher is one of two constant names.
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT u.type, u.data, u.metadata::text AS metadata
               FROM unnest($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bytea[],
                           $6::text[], $7::jsonb[])
                    WITH ORDINALITY AS e(position, stream, revision, type, data,
                                         content_type, metadata, n),
                    LATERAL {dispatcher}(e.position, e.stream, e.revision, e.type, e.data,
                                         e.content_type, e.metadata) u
              ORDER BY e.n"
        )))
        .bind(&batch.positions)
        .bind(&batch.streams)
        .bind(&batch.revisions)
        .bind(&batch.types)
        .bind(&batch.data)
        .bind(&batch.content_types)
        .bind(&batch.metadata)
        .fetch_all(&mut *transaction)
        .await;
        // Rolled back whatever happened: nothing of the expressions stays on the connection.
        transaction.rollback().await?;
        rows
    }

    fn failure(&self, error: sqlx::Error) -> Error {
        match &error {
            sqlx::Error::Database(db) if db.code().as_deref() == Some(UPCASTER_FAILED) => {
                Error::FailedPrecondition(db.message().to_string())
            }
            sqlx::Error::Database(db) if db.code().as_deref() == Some(QUERY_CANCELED) => {
                Error::FailedPrecondition(format!(
                    "the upcasters of a page took longer than {} ms",
                    self.timeout.as_millis()
                ))
            }
            _ => Error::from(error),
        }
    }
}
