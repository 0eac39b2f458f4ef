//! Generates the internal gRPC code from `proto/internal.proto` with protox:
//! no system `protoc` needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/internal.proto");
    let descriptors = protox::compile(["proto/internal.proto"], ["proto"])?;
    tonic_prost_build::configure().bytes(".").compile_fds(descriptors)?;
    Ok(())
}
