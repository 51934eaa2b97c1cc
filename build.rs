//! Compiles `proto/syncnode.proto` into the tonic service and prost messages (`crate::net::proto`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/syncnode.proto");
    // Our codec checks what a control message holds before prost decodes it (`src/net/codec.rs`).
    tonic_prost_build::configure()
        .codec_path("crate::net::codec::BoundedCodec")
        .compile_protos(&["proto/syncnode.proto"], &["proto"])?;
    Ok(())
}
