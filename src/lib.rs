//! The Highwater server: the gRPC adapters (`EventStoreService`, `AdminService`, health,
//! reflection) and the HTTP adapter (Prometheus metrics) over `highwater-core`, the settings made
//! from the command line, the private PostgreSQL of the embedded mode, and the application that
//! wires them together, owns every background task and stops them at shutdown. The binary
//! (`src/main.rs`) adds the client commands of `highwater-cli` and the load generator of
//! `highwater-bench`. The design as built: `docs/ARCHITECTURE.md`.

/// Bearer tokens and roles: the auth file and the per-method check.
pub mod auth;
/// Command line and environment configuration of the server.
pub mod config;
/// A private PostgreSQL from the machine's own binaries.
pub mod embedded_pg;
/// The server's own errors: starting and stopping, apart from the core's.
pub mod error;
/// Thin gRPC adapters over the core.
pub mod grpc;
/// The HTTP adapter: Prometheus metrics.
pub mod http;
/// TLS and the secure default for listening.
pub mod security;
/// Server assembly, health, reflection and graceful shutdown.
pub mod server;
/// The core services the adapters call, once ready.
pub mod services;
/// The server's settings as plain data, made from the command line.
pub mod settings;
/// Logging.
pub mod telemetry;

pub use highwater_api::pb;
