//! Integration tests: the real server against real PostgreSQL, one database per test.

mod append;
mod append_group;
mod bench;
mod bounds;
mod catalog_races;
mod cli;
mod delete;
mod embedded;
mod faults;
mod fuzz;
mod half_open;
mod helpers;
mod metrics;
mod migrations;
mod projection;
mod randomized;
mod read;
mod restart;
mod sandbox;
mod security;
mod server;
mod shutdown;
mod snapshots;
mod sockets;
mod subscribe;
mod writer;
