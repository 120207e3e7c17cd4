//! Generates the control API's gRPC code from `proto/dfagent/control/v1/control.proto` (protoc
//! from Debian's protobuf-compiler, which scripts/setup.sh installs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let file = root.join("dfagent/control/v1/control.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    tonic_prost_build::configure().compile_protos(&[file], &[root])?;
    Ok(())
}
