//! Generates the server half of containerd's snapshots service (`containerd.services.snapshots.v1.
//! Snapshots`) with the project's tonic, over the message types `containerd-client` already
//! generates: containerd-client builds clients only, and `containerd-snapshots` would bring a
//! second gRPC stack (tonic 0.9, prost 0.11).

fn main() {
    if std::env::var_os("CARGO_FEATURE_SERVER").is_none() {
        return;
    }
    let ty = |name: &str| format!("containerd_client::services::v1::snapshots::{name}");
    let unary = |name: &str, route: &str, input: &str, output: String| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(ty(input))
            .output_type(output)
            .codec_path("tonic_prost::ProstCodec")
            .build()
    };
    let empty = || "crate::service::Empty".to_string();
    let list = tonic_build::manual::Method::builder()
        .name("list")
        .route_name("List")
        .input_type(ty("ListSnapshotsRequest"))
        .output_type(ty("ListSnapshotsResponse"))
        .codec_path("tonic_prost::ProstCodec")
        .server_streaming()
        .build();
    let service = tonic_build::manual::Service::builder()
        .name("Snapshots")
        .package("containerd.services.snapshots.v1")
        .method(unary(
            "prepare",
            "Prepare",
            "PrepareSnapshotRequest",
            ty("PrepareSnapshotResponse"),
        ))
        .method(unary(
            "view",
            "View",
            "ViewSnapshotRequest",
            ty("ViewSnapshotResponse"),
        ))
        .method(unary(
            "mounts",
            "Mounts",
            "MountsRequest",
            ty("MountsResponse"),
        ))
        .method(unary("commit", "Commit", "CommitSnapshotRequest", empty()))
        .method(unary("remove", "Remove", "RemoveSnapshotRequest", empty()))
        .method(unary(
            "stat",
            "Stat",
            "StatSnapshotRequest",
            ty("StatSnapshotResponse"),
        ))
        .method(unary(
            "update",
            "Update",
            "UpdateSnapshotRequest",
            ty("UpdateSnapshotResponse"),
        ))
        .method(list)
        .method(unary("usage", "Usage", "UsageRequest", ty("UsageResponse")))
        .method(unary("cleanup", "Cleanup", "CleanupRequest", empty()))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}
