//! gRPC API (being written)
