//! Code generated from `proto/` by this crate's `build.rs`: messages, server and client.

#![allow(clippy::all, missing_docs)]

pub mod highwater {
    pub mod v1 {
        tonic::include_proto!("highwater.v1");
    }
}

pub use self::highwater::v1::*;

/// The encoded descriptors of `proto/`, served by reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("highwater_descriptor");
