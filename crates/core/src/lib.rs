//! Highwater's core: the event log on PostgreSQL (appends with optimistic concurrency and
//! idempotent retries, reads, deletes), subscriptions (the LISTEN/NOTIFY hub and
//! catch-up-then-live subscribers, durable checkpoints) and server-side projections (inline and
//! async application in a sandbox, blue/green and in-place rebuilds). It knows no protobuf, no
//! gRPC and no command line: the server's adapters translate to and from it, and a test keeps it
//! that way (`tests/layers.rs`). Its correctness model, lock order and rebuild protocol are
//! described in `docs/ARCHITECTURE.md`.

/// The one error type of the core.
pub mod error;
/// The metrics registry the core records into (the server renders it).
pub mod metrics;
/// Server-side projections and rebuilds.
pub mod projection;
/// The shutdown signal shared by background tasks.
pub mod shutdown;
/// The event log on PostgreSQL.
pub mod store;
/// Subscriptions: the LISTEN/NOTIFY hub and catch-up-then-live subscribers.
pub mod subscribe;
/// Upcasters: events read in a newer shape than stored.
pub mod upcast;
