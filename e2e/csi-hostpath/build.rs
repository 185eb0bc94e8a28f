//! Generates the CSI gRPC code from the trimmed `proto/csi.proto` with the
//! pure-Rust `protox` compiler (no system `protoc`), into `OUT_DIR` only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    println!("cargo:rerun-if-env-changed=HOSTPATH_VERSION");
    let fds = protox::compile(["csi.proto"], ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // No `connect(dst)` helpers: they need tonic's `channel` feature, which
        // the binary does not use (tests build their own unix-socket Channel).
        .build_transport(false)
        .compile_fds(fds)?;
    Ok(())
}
