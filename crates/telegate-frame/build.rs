//! Generates the prost types and their proto3-JSON (pbjson) serde impls from `proto/`.
use prost::Message;
use std::{env, error::Error, path::PathBuf};

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let protos = [
        root.join("telegate/v1/frame.proto"),
        root.join("telegate/v1/records.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=PROTOC");
    // An explicit PROTOC wins; otherwise the pinned vendored binary keeps builds offline.
    let protoc = match env::var_os("PROTOC") {
        Some(p) => PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let out = PathBuf::from(env::var("OUT_DIR")?);
    let descriptors = out.join("telegate_descriptor.bin");

    let mut config = prost_build::Config::new();
    config
        .protoc_executable(protoc)
        .file_descriptor_set_path(&descriptors)
        .compile_protos(&protos, &[root])?;

    let set = std::fs::read(&descriptors)?;
    // frame.proto alone, as the FileDescriptorProto a schema registry takes (`schema`
    // module): without the source positions prost-build asks protoc for.
    let mut frame = prost_types::FileDescriptorSet::decode(set.as_slice())?
        .file
        .into_iter()
        .find(|f| f.name() == "telegate/v1/frame.proto")
        .ok_or("frame.proto is missing from the descriptor set")?;
    frame.source_code_info = None;
    std::fs::write(out.join("frame_descriptor.bin"), frame.encode_to_vec())?;
    pbjson_build::Builder::new()
        .register_descriptors(&set)?
        // Newer vehicle firmware may send fields this build does not know; binary protobuf
        // skips them, so JSON does too. They are dropped on re-encoding, never forwarded.
        .ignore_unknown_fields()
        .build(&[".telegate"])?;
    Ok(())
}
