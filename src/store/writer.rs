//! The writer: one task per process that owns every append (ARCHITECTURE section 1).
//!
//! Appends queue on a channel. The task takes whatever has queued while the previous group was
//! committing (group commit: no timer, so a lone append is written at once) and writes the group
//! with one call of the `highwater_append` SQL function: one round trip, one transaction, one
//! `log_head` update, one notification. Each request is checked on its own inside that call, so
//! a conflicting request fails alone and its neighbours commit.

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};
use uuid::Uuid;

use super::model::{AppendRequest, AppendResult, ExpectedRevision};
use crate::error::{Error, Result};

/// The most requests written in one group.
const MAX_GROUP_REQUESTS: usize = 512;
/// The most event bytes written in one group (a group always takes at least one request).
const MAX_GROUP_BYTES: usize = 32 * 1024 * 1024;
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
    /// Starts the writer task on `pool`.
    pub fn spawn(pool: PgPool) -> (Self, tokio::task::JoinHandle<()>) {
        let (commands, queue) = mpsc::channel(QUEUE_CAPACITY);
        let task = tokio::spawn(run(pool, queue));
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

async fn run(pool: PgPool, mut queue: mpsc::Receiver<Command>) {
    let mut stop_ack = None;
    while stop_ack.is_none() {
        let Some(first) = queue.recv().await else {
            break;
        };
        let mut group = Vec::new();
        let mut group_bytes = 0;
        let mut next = Some(first);
        while let Some(command) = next.take() {
            match command {
                Command::Append { request, reply } => {
                    group_bytes += request_bytes(&request);
                    group.push(Pending { request, reply });
                }
                Command::Stop { done } => {
                    stop_ack = Some(done);
                    break;
                }
            }
            if group.len() >= MAX_GROUP_REQUESTS || group_bytes >= MAX_GROUP_BYTES {
                break;
            }
            next = queue.try_recv().ok();
        }
        if !group.is_empty() {
            write_group(&pool, group).await;
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

async fn write_group(pool: &PgPool, group: Vec<Pending>) {
    let requests: Vec<&AppendRequest> = group.iter().map(|p| &p.request).collect();
    match call_append(pool, &requests).await {
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
                let result = match call_append(pool, &[&pending.request]).await {
                    Ok(mut results) => results.pop().unwrap_or_else(|| {
                        Err(Error::Internal("append returned no outcome".into()))
                    }),
                    Err(error) => Err(error),
                };
                let _ = pending.reply.send(result);
            }
        }
    }
}

/// The columns of one outcome row of `highwater_append`.
type OutcomeRow = (
    i32,
    i16,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<i64>,
    Option<Uuid>,
);

/// Calls `highwater_append` for a group; one outcome per request, in order.
async fn call_append(
    pool: &PgPool,
    requests: &[&AppendRequest],
) -> Result<Vec<Result<AppendResult>>> {
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
        let (kind, revision) = match request.expected {
            ExpectedRevision::Any => (0i16, None),
            ExpectedRevision::NoStream => (1, None),
            ExpectedRevision::StreamExists => (2, None),
            ExpectedRevision::Exact(revision) => (3, Some(to_i64(revision))),
        };
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

    let rows: Vec<OutcomeRow> = sqlx::query_as(
        "SELECT * FROM highwater_append($1, $2, $3, $4, $5, $6, $7, $8, $9::text[]::jsonb[])",
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
    .fetch_all(pool)
    .await?;

    if rows.len() != requests.len() {
        return Err(Error::Internal(format!(
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

fn outcome(row: OutcomeRow, request: &AppendRequest) -> Result<AppendResult> {
    let (_, kind, first_revision, last_revision, first_position, last_position, actual, conflict) =
        row;
    match kind {
        0 | 1 => match (first_revision, last_revision, first_position, last_position) {
            (Some(fr), Some(lr), Some(fp), Some(lp)) => Ok(AppendResult {
                first_revision: fr as u64,
                last_revision: lr as u64,
                first_position: fp as u64,
                last_position: lp as u64,
            }),
            _ => Err(Error::Internal("append outcome without coordinates".into())),
        },
        2 => Err(Error::WrongExpectedRevision {
            stream: request.stream.clone(),
            expected: request.expected.to_string(),
            actual: actual.map_or_else(|| "no stream".to_string(), |revision| revision.to_string()),
        }),
        3 => Err(Error::DuplicateEventId {
            id: conflict.map(|id| id.to_string()).unwrap_or_default(),
        }),
        other => Err(Error::Internal(format!("unknown append outcome {other}"))),
    }
}

/// Revisions and positions are `bigint` in the database; anything above `i64::MAX` cannot match
/// a stored value, and saturating keeps it so.
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}
