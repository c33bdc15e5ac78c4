//! Server-side projections (ARCHITECTURE section 4): definitions, inline and async application,
//! rebuilds with advisory locks, blue/green versions, heartbeats and skip replay.

pub mod apply;
pub mod catalog;
pub mod definition;
pub mod keys;
