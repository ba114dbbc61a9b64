//! Compiles the .proto files with protox (a protobuf compiler in Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/shoal/v1/peer.proto", "proto/shoal/v1/tracker.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    // Piece bytes stay `bytes::Bytes` from the decoder to the store: no copy per chunk.
    tonic_prost_build::configure()
        .bytes(".shoal.v1.PieceChunk.data")
        .compile_fds(descriptors)?;
    Ok(())
}
