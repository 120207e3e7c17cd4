//! Generates the peer chunk protocol's messages from `proto/dfagent/peer/v1/chunks.proto`
//! (protoc from Debian's protobuf-compiler, which scripts/setup.sh installs).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time: `env!` would bake in the path of the checkout that first built this
    // script, and a cached script would then look for the proto file there.
    let root = std::path::PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../proto");
    let file = root.join("dfagent/peer/v1/chunks.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    prost_build::Config::new()
        .bytes(["."])
        .compile_protos(&[file], &[root])?;
    Ok(())
}
