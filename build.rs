//! Compiles `proto/syncnode.proto` into the tonic service and prost messages (`crate::net::proto`).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/syncnode.proto");
    tonic_prost_build::configure().compile_protos(&["proto/syncnode.proto"], &["proto"])?;
    Ok(())
}
