//! Generates the gRPC code of `confgate.v1` with tonic-prost-build, plus the encoded file
//! descriptor set that the server hands to the gRPC reflection service.
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = ["confgate/v1/confgate.proto", "confgate/v1/approver.proto"];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("confgate_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
