//! Client side: connecting to the daemon's Unix socket.
use std::path::Path;
use std::sync::{Arc, Mutex};

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::service_fn;

use super::RpcError;
use super::pb::daemon_client::DaemonClient;

/// Connects to the daemon at `socket`.
///
/// The first connection is made here, so a daemon that is not running (or a socket this user
/// may not open) is reported as [`RpcError::Connect`] with the socket path and a hint, rather
/// than as an opaque transport error. Later reconnects of the channel dial the same path.
pub async fn connect(socket: &Path) -> Result<DaemonClient<Channel>, RpcError> {
    let channel = unix_channel(socket).await.map_err(|e| match e {
        DialError::Connect(source) => RpcError::Connect {
            socket: socket.to_owned(),
            source,
        },
        DialError::Transport(e) => RpcError::Transport(e),
    })?;
    Ok(DaemonClient::new(channel))
}

/// Why [`unix_channel`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The first connection to the socket failed (not there, refused, no permission).
    #[error("{0}")]
    Connect(std::io::Error),
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// A gRPC channel over the Unix socket `socket` (any service, not only the daemon's).
///
/// The first connection is made here, so a missing socket fails now with
/// [`DialError::Connect`]; later reconnects of the channel dial the same path.
pub async fn unix_channel(socket: &Path) -> Result<Channel, DialError> {
    let first = UnixStream::connect(socket)
        .await
        .map_err(DialError::Connect)?;
    let first = Arc::new(Mutex::new(Some(first)));
    let path = socket.to_owned();
    // The URI is required by the HTTP/2 layer but unused: the connector ignores it.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(service_fn(move |_: Uri| {
            let first = first.lock().ok().and_then(|mut f| f.take());
            let path = path.clone();
            async move {
                let stream = match first {
                    Some(s) => s,
                    None => UnixStream::connect(&path).await?,
                };
                Ok::<_, std::io::Error>(TokioIo::new(stream))
            }
        }))
        .await?;
    Ok(channel)
}

/// A one-line explanation of a failed call for people, with a hint for the usual causes.
pub fn explain(status: &tonic::Status) -> String {
    use tonic::Code;
    let msg = status.message();
    match status.code() {
        Code::PermissionDenied => format!("permission denied: {msg}"),
        Code::Unauthenticated => format!("the daemon could not identify this process: {msg}"),
        Code::AlreadyExists => format!(
            "{msg}; a process inside an agent session cannot start another one (it stays attributed \
             to its session)"
        ),
        Code::InvalidArgument => format!("invalid request: {msg}"),
        Code::Unavailable => format!("the daemon is unavailable: {msg}"),
        code => format!("the daemon answered {code:?}: {msg}"),
    }
}
