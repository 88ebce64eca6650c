//! Generates the warden.v1 gRPC code with a vendored protoc, so a fresh machine needs only cargo.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "warden/v1/common.proto",
        "warden/v1/agent.proto",
        "warden/v1/admin.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // No generated `connect(dst)` constructors: they would clash with the `Connect` rpc, and
    // clients build their channel from an `Endpoint` anyway (timeouts, TLS).
    tonic_prost_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("warden_descriptor.bin"))
        .compile_with_config(config, &protos, &["."])?;
    Ok(())
}
