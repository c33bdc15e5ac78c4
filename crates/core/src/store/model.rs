//! Domain types of the event log, free of protobuf and of SQL.

use std::{collections::HashMap, time::SystemTime};

use bytes::Bytes;
use uuid::Uuid;

/// The content type assumed when a writer gives none.
pub const DEFAULT_CONTENT_TYPE: &str = "application/json";

/// What an append expects of its stream, checked atomically with the write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedRevision {
    Any,
    NoStream,
    StreamExists,
    /// The stream's last event has exactly this revision.
    Exact(u64),
}

impl std::fmt::Display for ExpectedRevision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Any => f.write_str("any"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("stream exists"),
            Self::Exact(revision) => write!(f, "{revision}"),
        }
    }
}

/// An append as received, before validation.
#[derive(Debug, Clone)]
pub struct AppendInput {
    pub stream: String,
    pub expected: ExpectedRevision,
    pub events: Vec<EventInput>,
}

/// An event as received, before validation: the id is still text, possibly empty.
#[derive(Debug, Clone)]
pub struct EventInput {
    pub id: String,
    pub event_type: String,
    pub data: Bytes,
    pub content_type: String,
    pub metadata: HashMap<String, String>,
}

/// A validated append, ready for the writer.
#[derive(Debug, Clone)]
pub struct AppendRequest {
    pub stream: String,
    pub expected: ExpectedRevision,
    pub events: Vec<NewEvent>,
}

/// A validated event: its id is assigned, its metadata serialised as a JSON object.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub id: Uuid,
    pub event_type: String,
    pub data: Bytes,
    pub content_type: String,
    pub metadata_json: String,
}

/// Where an append landed (or, for an idempotent retry, where the original landed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    pub first_revision: u64,
    pub last_revision: u64,
    pub first_position: u64,
    pub last_position: u64,
}

/// What a stream delete did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeleteResult {
    /// The stream's last revision at the delete.
    pub deleted_revision: u64,
    /// Events erased from the log (hard deletes only).
    pub erased_events: u64,
}

/// An event as stored.
#[derive(Debug, Clone)]
pub struct RecordedEvent {
    pub id: Uuid,
    pub event_type: String,
    pub stream: String,
    pub revision: u64,
    pub position: u64,
    pub data: Bytes,
    pub content_type: String,
    pub metadata: HashMap<String, String>,
    pub recorded_at: SystemTime,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    Forwards,
    Backwards,
}
