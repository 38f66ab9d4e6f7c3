//! The publisher task: connects (and reconnects) to NATS, makes sure of the stream, and
//! sends the buffer's records in order with `Nats-Msg-Id`, keeping up to [`WINDOW`]
//! acknowledgements outstanding. A record leaves the buffer when its acknowledgement
//! (and every earlier one) has come; on any error the unacknowledged records are sent
//! again from the first of them after a pause.
use std::{
    collections::VecDeque,
    sync::{Arc, atomic::Ordering::Relaxed},
    time::Duration,
};

use async_nats::jetstream::{self, context::PublishAckFuture, message::PublishMessage};

use super::{
    Counters, NatsConfig,
    buffer::{Buffer, Decoded, MAX_BODY, Pos, decode, read_at},
};

/// Acknowledgements awaited at once.
const WINDOW: usize = 512;
/// Bytes read from a segment at a time.
const READ: u64 = 1 << 20;
/// How long an acknowledgement may take before the record is sent again.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after an error before sending again (doubling up to [`MAX_PAUSE`]).
const PAUSE: Duration = Duration::from_millis(250);
const MAX_PAUSE: Duration = Duration::from_secs(2);
/// Longest wait between two attempts to reach a server.
const MAX_RECONNECT: Duration = Duration::from_secs(2);

pub(super) async fn run(
    cfg: NatsConfig,
    buffer: Arc<Buffer>,
    wake: Arc<tokio::sync::Notify>,
    counters: Arc<Counters>,
) {
    let client = match connect(&cfg).await {
        Ok(c) => c,
        Err(e) => {
            // Only bad local settings (unreadable files) get here: the server being down
            // is retried by the client itself.
            tracing::error!(error = %e, "NATS: cannot set up the client; events stay in the buffer, not published");
            return;
        }
    };
    let js = jetstream::ContextBuilder::new()
        .timeout(ACK_TIMEOUT)
        .ack_timeout(ACK_TIMEOUT)
        .max_ack_inflight(WINDOW * 2)
        .build(client.clone());
    let mut stream_ready = false;
    let mut pause = PAUSE;
    // Next record to send, and first record not yet acknowledged.
    let mut acked = Pos::default();
    loop {
        counters.connected.store(
            u64::from(client.connection_state() == async_nats::connection::State::Connected),
            Relaxed,
        );
        if !stream_ready {
            match ensure_stream(&js, &cfg).await {
                Ok(()) => stream_ready = true,
                Err(e) => {
                    counters.publish_errors.fetch_add(1, Relaxed);
                    tracing::warn!(stream = %cfg.stream, error = %e, "NATS: stream not available yet; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(MAX_PAUSE);
                    continue;
                }
            }
        }
        let max_payload = client.server_info().max_payload;
        match send_from(&js, max_payload, &buffer, &counters, &mut acked).await {
            Ok(true) => pause = PAUSE,
            Ok(false) => {
                // All sent and acknowledged: wait for more (or re-check the connection).
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
            Err(e) => {
                counters.publish_errors.fetch_add(1, Relaxed);
                // The server may have come back without the stream: check it again.
                stream_ready = false;
                tracing::warn!(error = %e, "NATS: publishing failed; unacknowledged events stay buffered and are sent again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
            }
        }
    }
}

async fn connect(cfg: &NatsConfig) -> anyhow::Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("confgate")
        .retry_on_initial_connect()
        .max_reconnects(None)
        // Back at most 2 s after the server is (the default waits up to several seconds).
        .reconnect_delay_callback(|attempts| {
            Duration::from_millis(100u64.saturating_mul(1 << attempts.min(5))).min(MAX_RECONNECT)
        })
        .event_callback(|e| async move {
            tracing::info!(event = %e, "NATS connection");
        });
    if let Some(ca) = &cfg.ca {
        opts = opts.add_root_certificates(ca.clone()).require_tls(true);
    }
    if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
        opts = opts
            .add_client_certificate(cert.clone(), key.clone())
            .require_tls(true);
    }
    if let Some(creds) = &cfg.creds {
        opts = opts
            .credentials_file(creds)
            .await
            .map_err(|e| anyhow::anyhow!("NATS creds file {}: {e}", creds.display()))?;
    }
    Ok(opts.connect(cfg.servers.clone()).await?)
}

async fn ensure_stream(js: &jetstream::Context, cfg: &NatsConfig) -> anyhow::Result<()> {
    if cfg.create_stream {
        js.get_or_create_stream(jetstream::stream::Config {
            name: cfg.stream.clone(),
            subjects: vec![format!("{}.>", cfg.subject_prefix)],
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await?;
    } else {
        js.get_stream(&cfg.stream).await?;
    }
    Ok(())
}

/// A record read from the buffer, ready to send.
struct Pending {
    msg: PublishMessage,
    subject: String,
    /// Position after it, and its size in the buffer.
    end: Pos,
    len: u64,
    payload_len: usize,
}

/// Sends everything readable from `acked` on and awaits the acknowledgements, advancing
/// `acked` (and freeing the buffer) as they come in order. `Ok(false)`: nothing to send.
/// A record larger than the server's `max_payload` can never be accepted: it is dropped
/// (counted, logged) instead of blocking every record after it.
async fn send_from(
    js: &jetstream::Context,
    max_payload: usize,
    buffer: &Buffer,
    counters: &Counters,
    acked: &mut Pos,
) -> anyhow::Result<bool> {
    let mut next = *acked;
    // `None`: dropped as too large, nothing to await.
    let mut inflight: VecDeque<(Option<PublishAckFuture>, Pos, u64)> = VecDeque::new();
    let mut chunk: VecDeque<Pending> = VecDeque::new();
    let mut any = false;
    loop {
        while inflight.len() < WINDOW {
            if chunk.is_empty() {
                next = read_chunk(buffer, next, &mut chunk);
                if chunk.is_empty() {
                    if inflight.is_empty() && next > *acked {
                        // Skipped damage moves the acknowledged position too.
                        *acked = next;
                        buffer.acked(next, 0, 0);
                    }
                    break;
                }
            }
            let Some(p) = chunk.pop_front() else {
                break;
            };
            any = true;
            if max_payload > 0 && p.payload_len > max_payload {
                counters.dropped.fetch_add(1, Relaxed);
                tracing::warn!(subject = %p.subject, bytes = p.payload_len, max_payload,
                    "NATS: event larger than the server's max_payload dropped (counted in nats_events_dropped)");
                inflight.push_back((None, p.end, p.len));
                continue;
            }
            let fut = js.send_publish(p.subject, p.msg).await?;
            counters.published.fetch_add(1, Relaxed);
            inflight.push_back((Some(fut), p.end, p.len));
        }
        let Some((fut, end, len)) = inflight.pop_front() else {
            return Ok(any);
        };
        if let Some(fut) = fut {
            fut.await?;
            counters.acked.fetch_add(1, Relaxed);
            counters.connected.store(1, Relaxed);
        }
        *acked = end;
        buffer.acked(end, len, 1);
    }
}

/// Reads the records after `from` into `out` (up to [`READ`] bytes); returns the position
/// after them. Damage is skipped (counted by the buffer).
fn read_chunk(buffer: &Buffer, from: Pos, out: &mut VecDeque<Pending>) -> Pos {
    let Some((mut pos, avail)) = buffer.readable(from) else {
        return from;
    };
    // A record larger than one read is read again whole (at most its maximum size).
    for size in [avail.min(READ), avail.min(MAX_BODY as u64 + 9)] {
        let data = match read_at(buffer, pos, size) {
            Ok(d) => d,
            Err(e) => return buffer.skip_damaged(pos, &format!("reading: {e}")),
        };
        let mut at = 0usize;
        while at < data.len() {
            match decode(&data[at..]) {
                Decoded::Record(r, n) => {
                    at += n;
                    pos.offset += n as u64;
                    let payload_len = r.payload.len();
                    let msg = PublishMessage::build()
                        .payload(r.payload.into())
                        .message_id(&r.id);
                    out.push_back(Pending {
                        msg,
                        subject: r.subject,
                        end: pos,
                        len: n as u64,
                        payload_len,
                    });
                }
                Decoded::Short if at == 0 && (data.len() as u64) < avail => break,
                Decoded::Short if at == 0 => {
                    return buffer.skip_damaged(pos, "record runs past the written length");
                }
                Decoded::Short => return pos,
                // Send what came before it first; the damage is met on the next read.
                Decoded::Damaged(_) if !out.is_empty() => return pos,
                Decoded::Damaged(why) => return buffer.skip_damaged(pos, &why),
            }
        }
        if at > 0 {
            return pos;
        }
    }
    pos
}
