//! Compiles proto/standin.proto into the gRPC client and server code (cargo feature `grpc`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    #[cfg(feature = "grpc")]
    {
        println!("cargo:rerun-if-changed=proto/standin.proto");
        tonic_prost_build::configure().compile_protos(&["proto/standin.proto"], &["proto"])?;
    }
    Ok(())
}
