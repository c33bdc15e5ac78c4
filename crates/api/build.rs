//! Generates the gRPC server and client code from the repository's `proto/` with a vendored `protoc`, and the file
//! descriptor set that server reflection serves.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // prost emits no rerun directives of its own.
    println!("cargo:rerun-if-changed=../../proto");

    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    unsafe { env::set_var("PROTOC", protoc) };

    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let protos = [
        PathBuf::from("../../proto/highwater/v1/event_store.proto"),
        PathBuf::from("../../proto/highwater/v1/admin.proto"),
    ];
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("highwater_descriptor.bin"))
        .bytes(".highwater.v1")
        // Malformed request bytes are INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::codec::Codec")
        .compile_protos(&protos, &[PathBuf::from("../../proto"), well_known])?;
    Ok(())
}
