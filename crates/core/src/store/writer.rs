//! The writer: one task per process that owns every append (docs/ARCHITECTURE.md, "The writer").
//!
//! Appends queue on a channel. The task takes whatever has queued while the previous group was
//! committing (group commit: no timer, so a lone append is written at once) and writes the group
//! with one call of the `highwater_append` SQL function: one round trip, one transaction, one
//! `log_head` update, one notification. Each request is checked on its own inside that call, so
//! a conflicting request fails alone and its neighbours commit.

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use std::time::SystemTime;

use super::{
    codes::{AppendOutcome, AppendOutcomeRow, expected_in_sql},
    columns::micros_to_time,
    inline::{InlineCatalog, InlineProjections},
    model::{AppendRequest, AppendResult, RecordedEvent},
};
use crate::{
    error::{Error, Result},
    shutdown::Tasks,
};

/// The most requests written in one group.
const MAX_GROUP_REQUESTS: usize = 512;
/// The most event bytes written in one group (a group always takes at least one request).
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
/// The most events written in one group (a group always takes at least one request). With the
/// per-request cap (`--max-append-events`), it bounds how long one group holds `log_head`
/// (docs/ARCHITECTURE.md, "Bounds").
const MAX_GROUP_EVENTS: usize = 10_000;
/// Appends that may wait for the writer before callers are held back.
const QUEUE_CAPACITY: usize = 4096;

enum Command {
    Append {
        request: AppendRequest,
        reply: oneshot::Sender<Result<AppendResult>>,
    },
    /// Write everything queued before this command, then stop.
    Stop { done: oneshot::Sender<()> },
}

/// Hands appends to the writer task. Cheap to clone.
#[derive(Clone)]
pub struct Writer {
    /// Pending appends and the stop command, in arrival order; bounded so that a flood of
    /// appends waits at the door instead of growing memory without limit.
    commands: mpsc::Sender<Command>,
}

impl Writer {
    /// Starts the writer task on `pool`, applying the inline projections of `inline`.
    pub fn spawn(
        pool: PgPool,
        inline: impl InlineProjections,
        tasks: &Tasks,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, queue) = mpsc::channel(QUEUE_CAPACITY);
        let task = tasks.spawn("writer", run(pool, queue, inline));
        (Self { commands }, task)
    }

    /// Appends through the writer and waits for the commit (or the failure).
    pub async fn append(&self, request: AppendRequest) -> Result<AppendResult> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Append { request, reply })
            .await
            .map_err(|_| stopping())?;
        answer.await.map_err(|_| stopping())?
    }

    /// Writes every append queued so far, answers their callers, and stops the task.
    pub async fn stop(&self) {
        let (done, stopped) = oneshot::channel();
        if self.commands.send(Command::Stop { done }).await.is_ok() {
            let _ = stopped.await;
        }
    }
}

fn stopping() -> Error {
    Error::Unavailable("server is shutting down".into())
}

struct Pending {
    request: AppendRequest,
    reply: oneshot::Sender<Result<AppendResult>>,
}

async fn run<P: InlineProjections>(pool: PgPool, mut queue: mpsc::Receiver<Command>, inline: P) {
    let mut stop_ack = None;
    // Loaded before the first group, reloaded whenever the append function says it is stale.
    let mut catalog: Option<P::Catalog> = None;
    // An append taken from the queue that did not fit in the previous group: it starts the next.
    let mut carried: Option<Pending> = None;
    while stop_ack.is_none() {
        let first = match carried.take() {
            Some(pending) => Command::Append {
                request: pending.request,
                reply: pending.reply,
            },
            None => match queue.recv().await {
                Some(command) => command,
                None => break,
            },
        };
        let mut group: Vec<Pending> = Vec::new();
        let mut group_bytes = 0;
        let mut group_events = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { request, reply } => {
                    let bytes = request_bytes(&request);
                    let events = request.events.len();
                    if !group.is_empty()
                        && (group_bytes + bytes > MAX_GROUP_BYTES
                            || group_events + events > MAX_GROUP_EVENTS)
                    {
                        carried = Some(Pending { request, reply });
                        break;
                    }
                    group_bytes += bytes;
                    group_events += events;
                    group.push(Pending { request, reply });
                }
                Command::Stop { done } => {
                    stop_ack = Some(done);
                    break;
                }
            }
            if group.len() >= MAX_GROUP_REQUESTS {
                break;
            }
            next = queue.try_recv().ok();
        }
        if !group.is_empty() {
            debug!(
                requests = group.len(),
                events = group_events,
                bytes = group_bytes,
                "writing a group"
            );
            crate::metrics::RECORDED
                .group_requests
                .observe(group.len() as f64);
            write_group(&pool, &inline, &mut catalog, group).await;
        }
    }
    if let Some(done) = stop_ack {
        let _ = done.send(());
    }
    debug!("writer stopped");
}

fn request_bytes(request: &AppendRequest) -> usize {
    request
        .events
        .iter()
        .map(|e| e.data.len() + e.metadata_json.len())
        .sum()
}

/// How often a group is retried after the projection catalog changed under it.
const CATALOG_RETRIES: usize = 5;

async fn write_group<P: InlineProjections>(
    pool: &PgPool,
    inline: &P,
    catalog: &mut Option<P::Catalog>,
    group: Vec<Pending>,
) {
    let mut attempt = 0;
    let outcome = loop {
        let current = match catalog {
            Some(current) => current,
            None => match inline.load(pool).await {
                Ok(loaded) => catalog.insert(loaded),
                Err(error) => break Err(error),
            },
        };
        let requests: Vec<&AppendRequest> = group.iter().map(|p| &p.request).collect();
        let written = if current.has_inline() {
            write_with_projections(pool, current, &requests).await
        } else {
            call_append(pool, &requests, current.version())
                .await
                .map(|rows| rows.into_iter().map(|(result, _)| result).collect())
                .map_err(GroupFailure::Database)
        };
        match written {
            Err(GroupFailure::Database(error))
                if is_stale_catalog(&error) && attempt < CATALOG_RETRIES =>
            {
                debug!("projection catalog changed; reloading");
                *catalog = None;
                attempt += 1;
            }
            Err(GroupFailure::Database(error)) => break Err(Error::from(error)),
            Err(GroupFailure::Group(error)) => break Err(error),
            Ok(results) => break Ok(results),
        }
    };
    match outcome {
        Ok(results) => {
            for (pending, result) in group.into_iter().zip(results) {
                let _ = pending.reply.send(result);
            }
        }
        // The connection failed: whether the group committed is unknown. Callers retry with the
        // same event ids, which the idempotency check turns into the original answer.
        Err(error) if error.is_unavailable() || group.len() == 1 => {
            let message = error.to_string();
            let mut group = group.into_iter();
            if let Some(first) = group.next() {
                let _ = first.reply.send(Err(error));
            }
            for pending in group {
                let _ = pending.reply.send(Err(Error::Unavailable(message.clone())));
            }
        }
        // An unexpected error in a group: write each request alone so that only the request that
        // causes it fails.
        Err(error) => {
            warn!(%error, requests = group.len(), "group append failed, retrying one by one");
            for pending in group {
                let result = Box::pin(write_alone(pool, inline, catalog, pending.request)).await;
                let _ = pending.reply.send(result);
            }
        }
    }
}

async fn write_alone<P: InlineProjections>(
    pool: &PgPool,
    inline: &P,
    catalog: &mut Option<P::Catalog>,
    request: AppendRequest,
) -> Result<AppendResult> {
    let (reply, answer) = oneshot::channel();
    let pending = Pending { request, reply };
    // A group of one reports its own error instead of splitting further.
    Box::pin(write_group(pool, inline, catalog, vec![pending])).await;
    answer
        .await
        .unwrap_or_else(|_| Err(Error::Internal("append lost its answer".into())))
}

fn is_stale_catalog(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some(STALE_CATALOG))
}

/// SQLSTATE raised by `highwater_append` when the caller's projection catalog is stale.
const STALE_CATALOG: &str = "HW001";

/// Why a whole group failed (as opposed to one of its requests).
enum GroupFailure {
    /// A statement of the group failed: classified by `Error::from` (a lost connection is
    /// UNAVAILABLE), or retried when it says the projection catalog is stale.
    Database(sqlx::Error),
    /// Applying projections failed for a reason that is not the request's own, already
    /// classified (UNAVAILABLE stays UNAVAILABLE, so clients retry).
    Group(Error),
}

impl From<sqlx::Error> for GroupFailure {
    fn from(error: sqlx::Error) -> Self {
        Self::Database(error)
    }
}

/// With inline projections: one transaction for the group, a savepoint per request, so that a
/// failing handler fails its own request only.
async fn write_with_projections(
    pool: &PgPool,
    catalog: &impl InlineCatalog,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<AppendResult>>, GroupFailure> {
    let mut transaction = pool.begin().await?;
    match write_requests(&mut transaction, catalog, requests).await {
        Ok(results) => {
            transaction.commit().await?;
            Ok(results)
        }
        Err(error) => {
            // At once: the transaction holds the log_head lock every appender waits for.
            let _ = transaction.rollback().await;
            Err(error)
        }
    }
}

async fn write_requests(
    transaction: &mut sqlx::PgConnection,
    catalog: &impl InlineCatalog,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<AppendResult>>, GroupFailure> {
    let mut results = Vec::with_capacity(requests.len());
    for request in requests {
        sqlx::query("SAVEPOINT highwater_request")
            .execute(&mut *transaction)
            .await?;
        let mut rows = call_append(&mut *transaction, &[request], catalog.version()).await?;
        let (result, recorded_at) = rows
            .pop()
            .unwrap_or((Err(Error::Internal("no outcome".into())), None));
        let outcome = match (&result, recorded_at) {
            (Ok(appended), Some(recorded_at)) => {
                let events = recorded_events(request, appended, recorded_at);
                catalog
                    .apply(&mut *transaction, &events)
                    .await
                    .map(|()| *appended)
            }
            _ => result,
        };
        match outcome {
            // Not a property of this request: let the group fail (and split) as a whole.
            Err(
                error @ (Error::Unavailable(_)
                | Error::DatabaseUnavailable(_)
                | Error::Internal(_)
                | Error::Database(_)),
            ) => {
                return Err(GroupFailure::Group(error));
            }
            Err(refused) => {
                sqlx::query("ROLLBACK TO SAVEPOINT highwater_request")
                    .execute(&mut *transaction)
                    .await?;
                results.push(Err(refused));
            }
            Ok(appended) => {
                sqlx::query("RELEASE SAVEPOINT highwater_request")
                    .execute(&mut *transaction)
                    .await?;
                results.push(Ok(appended));
            }
        }
    }
    Ok(results)
}

/// The events of an append as stored, for the projections applied in its transaction.
fn recorded_events(
    request: &AppendRequest,
    result: &AppendResult,
    recorded_at: SystemTime,
) -> Vec<RecordedEvent> {
    request
        .events
        .iter()
        .enumerate()
        .map(|(i, event)| RecordedEvent {
            id: event.id,
            event_type: event.event_type.clone(),
            stream: request.stream.clone(),
            revision: result.first_revision + i as u64,
            position: result.first_position + i as u64,
            data: event.data.clone(),
            content_type: event.content_type.clone(),
            metadata: serde_json::from_str(&event.metadata_json).unwrap_or_default(),
            recorded_at,
        })
        .collect()
}

/// Calls `highwater_append` for a group; one outcome per request, in order, with the commit
/// time of newly written events.
async fn call_append<'c>(
    executor: impl sqlx::PgExecutor<'c>,
    requests: &[&AppendRequest],
    expected_catalog: i64,
) -> Result<Vec<(Result<AppendResult>, Option<SystemTime>)>, sqlx::Error> {
    let event_count: usize = requests.iter().map(|r| r.events.len()).sum();
    let mut streams = Vec::with_capacity(requests.len());
    let mut kinds = Vec::with_capacity(requests.len());
    let mut expected_revisions = Vec::with_capacity(requests.len());
    let mut counts = Vec::with_capacity(requests.len());
    let mut ids = Vec::with_capacity(event_count);
    let mut types = Vec::with_capacity(event_count);
    let mut data = Vec::with_capacity(event_count);
    let mut content_types = Vec::with_capacity(event_count);
    let mut metadata = Vec::with_capacity(event_count);
    for request in requests {
        let (kind, revision) = expected_in_sql(request.expected);
        streams.push(request.stream.as_str());
        kinds.push(kind);
        expected_revisions.push(revision);
        counts.push(i32::try_from(request.events.len()).unwrap_or(i32::MAX));
        for event in &request.events {
            ids.push(event.id);
            types.push(event.event_type.as_str());
            data.push(event.data.as_ref());
            content_types.push(event.content_type.as_str());
            metadata.push(event.metadata_json.as_str());
        }
    }

    let rows: Vec<AppendOutcomeRow> = sqlx::query_as(
        "SELECT * FROM highwater_append($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::jsonb[], $10)",
    )
    .bind(streams)
    .bind(kinds)
    .bind(expected_revisions)
    .bind(counts)
    .bind(ids)
    .bind(types)
    .bind(data)
    .bind(content_types)
    .bind(metadata)
    .bind(expected_catalog)
    .fetch_all(executor)
    .await?;

    if rows.len() != requests.len() {
        return Err(sqlx::Error::Protocol(format!(
            "append returned {} outcomes for {} requests",
            rows.len(),
            requests.len()
        )));
    }
    Ok(rows
        .into_iter()
        .zip(requests)
        .map(|(row, request)| outcome(row, request))
        .collect())
}

fn outcome(
    row: AppendOutcomeRow,
    request: &AppendRequest,
) -> (Result<AppendResult>, Option<SystemTime>) {
    // Only a fresh write has events for projections to apply.
    let recorded_at = (row.outcome == AppendOutcome::Written)
        .then(|| row.recorded_us.map(micros_to_time))
        .flatten();
    let result = match row.outcome {
        AppendOutcome::Written | AppendOutcome::AlreadyWritten => match (
            row.first_revision,
            row.last_revision,
            row.first_position,
            row.last_position,
        ) {
            (Some(fr), Some(lr), Some(fp), Some(lp)) => Ok(AppendResult {
                first_revision: fr as u64,
                last_revision: lr as u64,
                first_position: fp as u64,
                last_position: lp as u64,
            }),
            _ => Err(Error::Internal("append outcome without coordinates".into())),
        },
        AppendOutcome::WrongExpectedRevision => Err(Error::WrongExpectedRevision {
            stream: request.stream.clone(),
            expected: request.expected.to_string(),
            actual: row
                .actual_revision
                .map_or_else(|| "no stream".to_string(), |revision| revision.to_string()),
        }),
        AppendOutcome::DuplicateEventId => Err(Error::DuplicateEventId {
            id: row
                .conflicting_id
                .map(|id| id.to_string())
                .unwrap_or_default(),
        }),
        AppendOutcome::HardDeleted => Err(hard_deleted(&request.stream)),
    };
    (result, recorded_at)
}

/// The refusal of any write to a hard-deleted stream.
pub fn hard_deleted(stream: &str) -> Error {
    Error::FailedPrecondition(format!(
        "stream {stream:?} is hard-deleted and cannot be written again"
    ))
}
