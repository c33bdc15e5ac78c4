//! The HTTP adapter: the Prometheus endpoint (the server's series, per-RPC series, process series).

pub mod metrics;
pub mod process;
