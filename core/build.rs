//! Generates the CRIU RPC message types from the vendored `proto/rpc.proto`.
//!
//! Uses `protox` (a pure-Rust protobuf compiler) so no `protoc` binary is
//! needed, then `prost-build` to emit Rust into `OUT_DIR`. `rpc.proto` has no
//! `package` statement, so prost names the output file `_.rs`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto/rpc.proto");

    let descriptors = protox::compile(["rpc.proto"], ["proto"])?;
    prost_build::Config::new().compile_fds(descriptors)?;
    Ok(())
}
