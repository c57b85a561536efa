//! Compiles `ramkv.proto` with a vendored protoc, so that a machine with only
//! the Rust toolchain can build ramkv.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=ramkv.proto");
    prost_build::Config::new()
        .protoc_executable(protoc_bin_vendored::protoc_bin_path()?)
        // Decoded `bytes` fields become `bytes::Bytes` slices of the read buffer: no copy.
        .bytes(["."])
        .compile_protos(&["ramkv.proto"], &["."])?;
    Ok(())
}
