//! `LISTEN` on [`super::CHANNEL`]: the changes other replicas commit, for this replica's
//! streams. One dedicated connection (not from the pool), reconnected after a loss; after
//! every (re)connection a [`Fanout::Resync`] says that notifications may have been missed
//! meanwhile, so the service reads again what it would have been told.
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use super::CHANNEL;

/// Pause between attempts to (re)connect the listening connection.
const RETRY: Duration = Duration::from_millis(500);

/// A committed change, as announced by the replica that made it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "k")]
pub enum Fanout {
    /// A new request (its id and deadline).
    #[serde(rename = "c")]
    Created { id: u64, deadline: i64 },
    /// A request was decided, expired or released: `host`'s log got `seq`.
    #[serde(rename = "r")]
    Resolved { id: u64, host: String, seq: u64 },
    /// A grant was revoked: `host`'s log got `seq`.
    #[serde(rename = "v")]
    Revoked { host: String, seq: u64 },
    /// The listening connection was (re)established: anything may have been missed.
    #[serde(rename = "sync")]
    Resync,
}

/// The notification's payload: the change and the replica that made it.
#[derive(Serialize, Deserialize)]
pub(super) struct Payload {
    #[serde(rename = "o")]
    pub origin: u64,
    #[serde(flatten)]
    pub change: Fanout,
}

/// The connection's messages on a channel, read by a task (`Some(error)` when it ends
/// with one).
#[allow(clippy::type_complexity)]
fn drive<S, T>(
    client: tokio_postgres::Client,
    mut conn: tokio_postgres::Connection<S, T>,
) -> (
    tokio_postgres::Client,
    mpsc::UnboundedReceiver<AsyncMessage>,
    tokio::task::JoinHandle<Option<String>>,
)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (msgs_tx, msgs) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| conn.poll_message(cx)).await {
                Some(Ok(m)) => {
                    if msgs_tx.send(m).is_err() {
                        return None;
                    }
                }
                Some(Err(e)) => return Some(e.to_string()),
                None => return None,
            }
        }
    });
    (client, msgs, driver)
}

/// Listens until `tx` is closed; skips the changes of `origin` (0: skips none).
pub(super) async fn run(
    config: tokio_postgres::Config,
    tls: Option<tokio_rustls::rustls::ClientConfig>,
    origin: u64,
    tx: mpsc::Sender<Fanout>,
    url: String,
) {
    let mut logged_down = false;
    while !tx.is_closed() {
        let connected = match &tls {
            Some(c) => config
                .connect(tokio_postgres_rustls::MakeRustlsConnect::new(c.clone()))
                .await
                .map(|(client, conn)| drive(client, conn)),
            None => config
                .connect(NoTls)
                .await
                .map(|(client, conn)| drive(client, conn)),
        };
        match connected {
            Ok((client, mut msgs, driver)) => {
                match client.batch_execute(&format!("LISTEN {CHANNEL}")).await {
                    Ok(()) => {
                        if logged_down {
                            tracing::info!(url = %url, "approver store: listening for other replicas' changes again");
                        }
                        if tx.send(Fanout::Resync).await.is_err() {
                            return;
                        }
                        while let Some(m) = msgs.recv().await {
                            let AsyncMessage::Notification(n) = m else {
                                continue;
                            };
                            match serde_json::from_str::<Payload>(n.payload()) {
                                Ok(p) if p.origin == origin && origin != 0 => {}
                                Ok(p) => {
                                    if tx.send(p.change).await.is_err() {
                                        return;
                                    }
                                }
                                Err(e) => {
                                    tracing::warn!(error = %e, payload = n.payload(), "approver store: a notification that does not parse was ignored")
                                }
                            }
                        }
                    }
                    Err(e) => {
                        tracing::warn!(url = %url, error = %e, "approver store: LISTEN failed");
                    }
                }
                drop(client);
                let why = match driver.await {
                    Ok(Some(e)) => e,
                    _ => "closed".to_owned(),
                };
                tracing::warn!(url = %url, error = %why, "approver store: the listening connection was lost; reconnecting");
                logged_down = true;
            }
            Err(e) => {
                if !logged_down {
                    tracing::warn!(url = %url, error = %e, "approver store: cannot connect to listen for other replicas' changes; retrying");
                }
                logged_down = true;
            }
        }
        tokio::time::sleep(RETRY).await;
    }
}
