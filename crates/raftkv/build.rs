//! Generates the gRPC code from `proto/` with protox: no system `protoc`
//! needed. `internal.proto` is raftkv's own service; `etcd_kv.proto` is the
//! slice of etcd's API that `raftkv bench --system etcd` speaks.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let descriptors = protox::compile(["proto/internal.proto", "proto/etcd_kv.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").build_server(true).compile_fds(descriptors)?;
    Ok(())
}
