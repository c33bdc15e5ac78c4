//! The event log on PostgreSQL: the writer (appends), the reader (paged reads) and schema access.

pub mod codes;
pub mod columns;
pub mod database;
pub mod deletion;
pub mod head;
pub mod inline;
pub mod model;
pub mod reader;
pub mod snapshots;
pub mod upcasting;
pub mod validate;
pub mod writer;

use std::sync::Arc;

use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::{
    error::{Error, Result},
    metrics,
    shutdown::Tasks,
};
use deletion::Deletion;
use model::{AppendInput, AppendResult, DeleteResult, Direction, ExpectedRevision};
use reader::ReadCursor;
use validate::Limits;
use writer::Writer;

/// The core of the event store: what the gRPC adapters call. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    writer: Writer,
    limits: Limits,
    erases: deletion::Erases,
    /// What reads pass their pages through, unless they ask for events as stored.
    upcasting: Arc<upcasting::Upcasting>,
}

impl Store {
    /// Starts the writer task on `pool` (owned by `tasks`), applying `inline` projections in
    /// each append's transaction; the handle ends after [`Store::stop`].
    pub fn start(
        pool: PgPool,
        limits: Limits,
        inline: impl inline::InlineProjections,
        upcasting: Arc<upcasting::Upcasting>,
        tasks: &Tasks,
    ) -> (Self, JoinHandle<()>) {
        let (writer, task) = Writer::spawn(pool.clone(), inline, tasks);
        (
            Self {
                pool,
                writer,
                limits,
                erases: deletion::Erases::new(tasks.clone()),
                upcasting,
            },
            task,
        )
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The erases of hard deletes, whose sweep the server runs beside serving.
    pub fn erases(&self) -> deletion::Erases {
        self.erases.clone()
    }

    /// Validates and appends; see `proto/highwater/v1/event_store.proto` for the rules.
    pub async fn append(&self, input: AppendInput) -> Result<AppendResult> {
        let started = std::time::Instant::now();
        let events = input.events.len() as u64;
        let result = match validate::validate_append(input, &self.limits) {
            Ok(request) => self.writer.append(request).await,
            Err(error) => Err(error),
        };
        let recorded = &metrics::RECORDED;
        match &result {
            Ok(_) => {
                metrics::increment(&recorded.appends);
                recorded
                    .events_appended
                    .fetch_add(events, std::sync::atomic::Ordering::Relaxed);
            }
            Err(_) => metrics::increment(&recorded.append_errors),
        }
        recorded
            .append_seconds
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// Deletes a stream (see [`Deletion`]); `NOT_FOUND` when there is nothing to delete.
    pub async fn delete_stream(
        &self,
        stream: String,
        expected: ExpectedRevision,
        deletion: Deletion,
    ) -> Result<DeleteResult> {
        check_stream(&stream)?;
        let result =
            deletion::delete_stream(&self.pool, &self.erases, &stream, expected, deletion).await?;
        tracing::info!(
            %stream,
            ?deletion,
            revision = result.deleted_revision,
            erased = result.erased_events,
            "stream deleted"
        );
        Ok(result)
    }

    /// A cursor over one stream; `NOT_FOUND` when the stream has no events (or is deleted).
    pub async fn read_stream(
        &self,
        stream: String,
        from_revision: u64,
        direction: Direction,
        max_count: u64,
        shape: upcasting::Shape,
    ) -> Result<ReadCursor> {
        check_stream(&stream)?;
        if !reader::stream_exists(&self.pool, &stream).await? {
            return Err(Error::StreamNotFound(stream));
        }
        Ok(ReadCursor::stream(
            self.pool.clone(),
            stream,
            from_revision,
            direction,
            max_count,
        )
        .upcast_with(shape.upcasting(&self.upcasting)))
    }

    /// Saves a snapshot of a stream (see [`snapshots`]).
    pub async fn save_snapshot(
        &self,
        input: snapshots::SnapshotInput,
    ) -> Result<snapshots::Snapshot> {
        let saved = snapshots::save(&self.pool, input, &self.limits).await?;
        tracing::debug!(stream = %saved.stream, revision = saved.revision, "snapshot saved");
        Ok(saved)
    }

    /// A stream loaded from its latest snapshot: the snapshot, if any, and a forwards cursor
    /// over the events after it (from `from_revision` if that is higher). `NOT_FOUND` as for
    /// [`Store::read_stream`]; the cursor fails with `ABORTED` if the stream is deleted while it
    /// reads (docs/ARCHITECTURE.md, "Snapshots").
    pub async fn load_stream(
        &self,
        stream: String,
        from_revision: u64,
        max_count: u64,
        shape: upcasting::Shape,
    ) -> Result<(Option<snapshots::Snapshot>, ReadCursor)> {
        check_stream(&stream)?;
        let point = snapshots::load_point(&self.pool, &stream).await?;
        let after_snapshot = point
            .snapshot
            .as_ref()
            .map_or(0, |snapshot| snapshot.revision.saturating_add(1));
        let cursor = ReadCursor::stream_pinned(
            self.pool.clone(),
            stream,
            from_revision.max(after_snapshot),
            max_count,
            point.pinned,
        )
        .upcast_with(shape.upcasting(&self.upcasting));
        Ok((point.snapshot, cursor))
    }

    /// A cursor over the whole log.
    pub fn read_all(
        &self,
        after_position: u64,
        direction: Direction,
        max_count: u64,
        shape: upcasting::Shape,
    ) -> ReadCursor {
        ReadCursor::all(self.pool.clone(), after_position, direction, max_count)
            .upcast_with(shape.upcasting(&self.upcasting))
    }

    /// The upcasting of this store's reads.
    pub fn upcasting(&self) -> &Arc<upcasting::Upcasting> {
        &self.upcasting
    }

    /// Answers every append queued so far, then stops the writer.
    pub async fn stop(&self) {
        self.writer.stop().await;
    }
}

fn check_stream(stream: &str) -> Result<()> {
    let mut violations = Vec::new();
    validate::check_stream_name("stream", stream, &mut violations);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(Error::InvalidArgument(violations))
    }
}
