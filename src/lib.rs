//! Highwater: a gRPC event store on PostgreSQL.

/// Bearer tokens and roles.
pub mod auth;
/// `highwater bench`: the load generator and its raw PostgreSQL baseline.
pub mod bench;
/// The command-line client: subcommands that talk to a server.
pub mod cli;
/// Command line and environment configuration.
pub mod config;
/// A private PostgreSQL from the machine's own binaries.
pub mod embedded_pg;
/// The one error type and its mapping to gRPC status codes.
pub mod error;
/// Thin gRPC adapters over the core.
pub mod grpc;
/// The HTTP adapter: Prometheus metrics.
pub mod http;
/// The metrics registry the core records into.
pub mod metrics;
/// Code generated from `proto/`.
pub mod pb;
/// Server-side projections and rebuilds.
pub mod projection;
/// TLS and the secure default for listening.
pub mod security;
/// Server assembly, health, reflection and graceful shutdown.
pub mod server;
/// The core services the adapters call, once ready.
pub mod services;
/// The shutdown signal shared by background tasks.
pub mod shutdown;
/// The event log on PostgreSQL.
pub mod store;
/// Subscriptions: the LISTEN/NOTIFY hub and catch-up-then-live subscribers.
pub mod subscribe;
/// Logging.
pub mod telemetry;
