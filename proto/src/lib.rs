//! gRPC API of confgate.
//!
//! The wire contract lives in `confgate/v1/confgate.proto` (package `confgate.v1`); this
//! crate only carries the code generated from it. Breaking changes go into a new package
//! version (`confgate.v2`), never into `v1`.

/// `confgate.v1`: the host daemon's local API (served over its Unix socket) and the approval
/// service's API (`approver.proto`).
pub mod v1 {
    tonic::include_proto!("confgate.v1");
}

/// Encoded `FileDescriptorSet` of every `.proto` in this crate, for gRPC server reflection
/// (`tonic_reflection::server::Builder::register_encoded_file_descriptor_set`).
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("confgate_descriptor");
