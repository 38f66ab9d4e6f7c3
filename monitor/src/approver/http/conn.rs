//! What handlers learn about their HTTP connection (axum extensions set by the listener).
use std::net::SocketAddr;

/// The peer of an HTTP connection.
#[derive(Clone, Copy, Debug)]
pub struct Peer(pub SocketAddr);

/// This end of an HTTP connection (the listener's address as the peer dialled it).
#[derive(Clone, Copy, Debug)]
pub struct LocalEnd(pub SocketAddr);
