//! The gRPC service of the SPIFFE Workload API, for the fake agent in
//! `tests/workload_api.rs`. The service is declared here by its wire names (the SPIFFE Workload
//! API standard's `SpiffeWorkloadAPI` with no package) and its messages are written by hand in
//! that test, so building the tests needs no `protoc` and no copy of the standard's `.proto`.

fn main() {
    let method = |name: &str, route: &str, input: &str, output: &str| {
        tonic_build::manual::Method::builder()
            .name(name)
            .route_name(route)
            .input_type(format!("crate::wire::{input}"))
            .output_type(format!("crate::wire::{output}"))
            .codec_path("tonic_prost::ProstCodec")
            .server_streaming()
            .build()
    };
    let service = tonic_build::manual::Service::builder()
        .name("SpiffeWorkloadAPI")
        .package("")
        .method(method(
            "fetch_x509_svid",
            "FetchX509SVID",
            "X509SvidRequest",
            "X509SvidResponse",
        ))
        .method(method(
            "fetch_x509_bundles",
            "FetchX509Bundles",
            "X509BundlesRequest",
            "X509BundlesResponse",
        ))
        .build();
    tonic_build::manual::Builder::new()
        .build_client(false)
        .build_transport(false)
        .compile(&[service]);
}
