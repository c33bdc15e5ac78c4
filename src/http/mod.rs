//! The HTTP adapter: the Prometheus endpoint.

pub mod metrics;
