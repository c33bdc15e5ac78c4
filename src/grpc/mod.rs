//! Thin gRPC adapters: protobuf in, core call, protobuf out; errors mapped in `status`.

pub mod admin;
pub mod auth;
pub mod convert;
pub mod event_store;
pub mod idle;
pub mod message_limit;
pub mod middleware;
pub mod request_id;
pub mod rpc_metrics;
pub mod status;
