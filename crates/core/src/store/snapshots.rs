//! Snapshots (README "Snapshots", docs/ARCHITECTURE.md "Snapshots"): a stream's state at a
//! revision, saved by a client, so that loading an aggregate reads the latest snapshot and only
//! the events after it. Saved by `highwater_save_snapshot`, which keeps the latest few per stream;
//! a stream's delete removes its snapshots in the same transaction (a trigger of migration 0017).

use std::time::SystemTime;

use bytes::Bytes;
use sqlx::{PgPool, Row};

use super::{
    codes::{SaveSnapshotOutcome, SaveSnapshotRow},
    columns::{micros_to_time, to_i64},
    model::DEFAULT_CONTENT_TYPE,
    reader::PinnedDelete,
    validate::{Limits, check_content_type, check_stream_name, check_type_name},
    writer::hard_deleted,
};
use crate::error::{Error, FieldViolation, Result};

/// A snapshot to save: the state of `stream` as of `revision` (its last event included).
#[derive(Debug, Clone)]
pub struct SnapshotInput {
    pub stream: String,
    pub revision: u64,
    pub snapshot_type: String,
    pub data: Bytes,
    /// Empty means the events' default, `application/json`.
    pub content_type: String,
}

/// A stored snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub stream: String,
    pub revision: u64,
    pub snapshot_type: String,
    pub data: Bytes,
    pub content_type: String,
    pub saved_at: SystemTime,
}

/// Checks a snapshot to save; the stream's state is checked by the database.
fn validate(input: SnapshotInput, limits: &Limits) -> Result<SnapshotInput> {
    let mut violations = Vec::new();
    check_stream_name("stream", &input.stream, &mut violations);
    check_type_name("type", &input.snapshot_type, &mut violations);
    let content_type = if input.content_type.is_empty() {
        DEFAULT_CONTENT_TYPE.to_string()
    } else {
        input.content_type
    };
    check_content_type("content_type", &content_type, &mut violations);
    let size = input.data.len() + input.snapshot_type.len();
    if size > limits.max_event_bytes {
        violations.push(FieldViolation::new(
            "data",
            format!(
                "snapshot is {size} bytes, over the limit of {} bytes (--max-event-bytes)",
                limits.max_event_bytes
            ),
        ));
    }
    if violations.is_empty() {
        Ok(SnapshotInput {
            content_type,
            ..input
        })
    } else {
        Err(Error::InvalidArgument(violations))
    }
}

/// Saves a snapshot and keeps the stream's `limits.snapshots_kept` latest.
pub async fn save(pool: &PgPool, input: SnapshotInput, limits: &Limits) -> Result<Snapshot> {
    let input = validate(input, limits)?;
    let keep = i32::try_from(limits.snapshots_kept.max(1)).unwrap_or(i32::MAX);
    let row: SaveSnapshotRow =
        sqlx::query_as("SELECT * FROM highwater_save_snapshot($1, $2, $3, $4, $5, $6)")
            .bind(&input.stream)
            .bind(to_i64(input.revision))
            .bind(&input.snapshot_type)
            .bind(input.data.as_ref())
            .bind(&input.content_type)
            .bind(keep)
            .fetch_one(pool)
            .await?;
    match row.outcome {
        SaveSnapshotOutcome::Saved => Ok(Snapshot {
            saved_at: micros_to_time(row.saved_us.unwrap_or_default()),
            stream: input.stream,
            revision: input.revision,
            snapshot_type: input.snapshot_type,
            data: input.data,
            content_type: input.content_type,
        }),
        SaveSnapshotOutcome::HardDeleted => Err(hard_deleted(&input.stream)),
        SaveSnapshotOutcome::NotFound => Err(Error::StreamNotFound(input.stream)),
        SaveSnapshotOutcome::RevisionOutOfRange => {
            let last = row.revision.unwrap_or_default();
            let description = match row.floor {
                Some(floor) if to_i64(input.revision) <= floor => format!(
                    "revision {} is deleted (the stream was deleted through revision {floor})",
                    input.revision
                ),
                _ => format!(
                    "revision {} is beyond the stream's last revision, {last}",
                    input.revision
                ),
            };
            Err(Error::InvalidArgument(vec![FieldViolation::new(
                "revision",
                description,
            )]))
        }
    }
}

/// Where a load from the latest snapshot starts: the snapshot, if any, and the stream's
/// soft-delete point, read together.
pub struct LoadPoint {
    pub snapshot: Option<Snapshot>,
    pub pinned: PinnedDelete,
}

/// The stream's latest snapshot and its delete point, in one statement; `NOT_FOUND` if the stream
/// does not exist or is deleted.
pub async fn load_point(pool: &PgPool, stream: &str) -> Result<LoadPoint> {
    let row = sqlx::query(
        "SELECT st.deleted_through, snap.stream, snap.revision, snap.type, snap.data,
                snap.content_type, (extract(epoch FROM snap.saved_at) * 1000000)::bigint AS saved_us
           FROM streams st
           LEFT JOIN LATERAL (
               SELECT s.* FROM snapshots s WHERE s.stream = st.stream
                ORDER BY s.revision DESC LIMIT 1
           ) snap ON true
          WHERE st.stream = $1
            AND NOT st.tombstoned
            AND st.revision > coalesce(st.deleted_through, -1)",
    )
    .bind(stream)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| Error::StreamNotFound(stream.to_string()))?;
    let pinned = PinnedDelete {
        deleted_through: row.try_get("deleted_through")?,
    };
    let snapshot = match row.try_get::<Option<i64>, _>("revision")? {
        None => None,
        Some(revision) => Some(Snapshot {
            stream: row.try_get("stream")?,
            revision: revision as u64,
            snapshot_type: row.try_get("type")?,
            data: Bytes::from(row.try_get::<Vec<u8>, _>("data")?),
            content_type: row.try_get("content_type")?,
            saved_at: micros_to_time(row.try_get("saved_us")?),
        }),
    };
    Ok(LoadPoint { snapshot, pinned })
}
