//! Generates the gRPC code of the raft transport from `proto/raft.proto` with
//! protox (a protobuf compiler in Rust): no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/raft.proto");
    let descriptors = protox::compile(["proto/raft.proto"], ["proto"])?;
    // `bytes` fields as `Bytes`: commands and snapshot chunks are not copied.
    tonic_prost_build::configure().build_client(true).build_server(true).bytes(".").compile_fds(descriptors)?;
    Ok(())
}
