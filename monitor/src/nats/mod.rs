//! Publishing to NATS JetStream with acknowledgements, from a bounded on-disk buffer
//! (`[output.nats]` of the daemon, `[nats]` of the approval service).
//!
//! The caller hands messages to a [`Sink`] (never blocks: a bounded channel; a full one is
//! a counted drop). A writer thread appends them to the buffer ([`buffer`]); past
//! `buffer_max_bytes` new messages are dropped and counted. A publisher task
//! ([`publish`]) sends what the buffer holds, in order, each with a `Nats-Msg-Id` header
//! (stable across restarts, for deduplication), and removes it from the buffer only once
//! JetStream has acknowledged it. Drops are logged (rate-limited) and handed to a report
//! callback (the daemon records them in its ledger).
pub mod buffer;
mod publish;

use std::{
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use buffer::Record;

/// `[output.nats]` / `[nats]`: where and how to publish.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:4222`, `tls://host:4222`). Empty: publishing is off.
    pub servers: Vec<String>,
    /// CA certificate (PEM) that signs the servers' certificates; setting it requires TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS: both or neither.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// A NATS credentials file (JWT and NKey seed).
    pub creds: Option<PathBuf>,
    /// Subjects are `<subject_prefix>.<host>.<kind>` (the approval service's
    /// `<subject_prefix>.<kind>`).
    pub subject_prefix: String,
    /// The JetStream stream that takes the subjects.
    pub stream: String,
    /// Create the stream (subjects `<subject_prefix>.>`, file storage) when it is missing.
    pub create_stream: bool,
    /// The on-disk buffer; default `<state_dir>/nats-buffer`.
    pub buffer_dir: Option<PathBuf>,
    /// Bytes the buffer may hold unacknowledged; past it new messages are dropped (counted).
    pub buffer_max_bytes: u64,
}

impl Default for NatsConfig {
    /// The daemon's: `confgate.events`, stream `CONFGATE_EVENTS`, 256 MiB of buffer.
    fn default() -> Self {
        NatsConfig::with_names("confgate.events", "CONFGATE_EVENTS")
    }
}

impl NatsConfig {
    /// The defaults, with `prefix` and `stream` as given.
    pub fn with_names(prefix: &str, stream: &str) -> NatsConfig {
        NatsConfig {
            servers: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            creds: None,
            subject_prefix: prefix.to_owned(),
            stream: stream.to_owned(),
            create_stream: true,
            buffer_dir: None,
            buffer_max_bytes: 256 << 20,
        }
    }

    /// The approval service's defaults.
    pub fn approvals() -> NatsConfig {
        NatsConfig::with_names("confgate.approvals", "CONFGATE_APPROVALS")
    }

    pub fn enabled(&self) -> bool {
        !self.servers.is_empty()
    }

    /// What is wrong with these settings: (field, message), `at` the section's name.
    pub fn problems(&self, at: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !self.enabled() {
            return out;
        }
        let mut fail = |field: &str, message: String| out.push((format!("{at}{field}"), message));
        for s in &self.servers {
            if let Err(e) = s.parse::<async_nats::ServerAddr>() {
                fail(".servers", format!("{s:?} is not a NATS server URL: {e}"));
            }
        }
        if !is_subject(&self.subject_prefix) {
            fail(
                ".subject_prefix",
                format!(
                    "{:?} is not a NATS subject (dot-separated tokens of printable ASCII, \
                     no spaces, `*` or `>`)",
                    self.subject_prefix
                ),
            );
        }
        if self.stream.is_empty()
            || self.stream.len() > 64
            || !self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            fail(
                ".stream",
                format!(
                    "{:?} is not a stream name (1 to 64 of A-Z a-z 0-9 - _)",
                    self.stream
                ),
            );
        }
        if self.cert.is_some() != self.key.is_some() {
            fail("", "`cert` and `key` go together (mutual TLS)".into());
        }
        for (name, p) in [
            (".ca", &self.ca),
            (".cert", &self.cert),
            (".key", &self.key),
            (".creds", &self.creds),
            (".buffer_dir", &self.buffer_dir),
        ] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                fail(name, format!("{} must be an absolute path", p.display()));
            }
        }
        if self.buffer_max_bytes < 4096 {
            fail(
                ".buffer_max_bytes",
                format!("{} is below the minimum of 4096", self.buffer_max_bytes),
            );
        }
        out
    }
}

/// Deserializes the approval service's `[nats]`: the same keys, with `subject_prefix`
/// `confgate.approvals` and `stream` `CONFGATE_APPROVALS` when not given.
pub fn approvals_section<'de, D: serde::Deserializer<'de>>(d: D) -> Result<NatsConfig, D::Error> {
    use serde::de::Error as _;
    let mut t = toml::Table::deserialize(d)?;
    let defaults = NatsConfig::approvals();
    t.entry("subject_prefix")
        .or_insert_with(|| defaults.subject_prefix.clone().into());
    t.entry("stream")
        .or_insert_with(|| defaults.stream.clone().into());
    toml::Value::Table(t).try_into().map_err(D::Error::custom)
}

/// Whether `s` is a valid literal subject: tokens of printable ASCII without `*`, `>`.
fn is_subject(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|t| {
            !t.is_empty()
                && t.bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        })
}

/// `s` as one subject token: bytes other than ASCII letters, digits, `-` and `_` become
/// `_` (so no `.`, `*`, `>`, white space, control or non-ASCII byte); empty becomes `_`;
/// at most 64 bytes.
pub fn token(s: &str) -> String {
    let t: String = s
        .chars()
        .take(64)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if t.is_empty() { "_".into() } else { t }
}

/// The publisher's counters (`nats_*` in `confgate stats` and the metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub acked: AtomicU64,
    pub publish_errors: AtomicU64,
    pub dropped: AtomicU64,
    pub buffer_damaged: AtomicU64,
    pub buffer_errors: AtomicU64,
    pub buffered_bytes: AtomicU64,
    pub buffered_events: AtomicU64,
    pub connected: AtomicU64,
}

impl Counters {
    /// Name and value of each, as `confgate stats` lists them.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("nats_events_published", self.published.load(Relaxed)),
            ("nats_events_acked", self.acked.load(Relaxed)),
            ("nats_publish_errors", self.publish_errors.load(Relaxed)),
            ("nats_events_dropped", self.dropped.load(Relaxed)),
            ("nats_buffer_damaged", self.buffer_damaged.load(Relaxed)),
            ("nats_buffer_errors", self.buffer_errors.load(Relaxed)),
            ("nats_buffered_bytes", self.buffered_bytes.load(Relaxed)),
            ("nats_buffered_events", self.buffered_events.load(Relaxed)),
            ("nats_connected", self.connected.load(Relaxed)),
        ]
    }

    fn damaged(&self, path: &Path, offset: u64, why: &str) {
        self.buffer_damaged.fetch_add(1, Relaxed);
        tracing::error!(segment = %path.display(), offset, error = why,
            "NATS buffer: damaged segment; the rest of it is skipped (counted in nats_buffer_damaged)");
    }
}

/// The gauges among [`Counters::snapshot`]'s names.
pub const GAUGES: &[(&str, &str)] = &[
    (
        "nats_buffered_bytes",
        "bytes in the NATS buffer not yet acknowledged by JetStream",
    ),
    (
        "nats_buffered_events",
        "events in the NATS buffer not yet acknowledged by JetStream",
    ),
    (
        "nats_connected",
        "1 while connected to a NATS server, else 0",
    ),
];

/// Help texts of the counters among [`Counters::snapshot`]'s names.
pub const DOCS: &[(&str, &str)] = &[
    (
        "nats_events_published",
        "messages sent to NATS JetStream (re-sends included)",
    ),
    (
        "nats_events_acked",
        "messages acknowledged by JetStream (and removed from the buffer)",
    ),
    (
        "nats_publish_errors",
        "failed NATS publishes, acknowledgement timeouts and stream checks (then retried)",
    ),
    (
        "nats_events_dropped",
        "events not published to NATS: buffer full, channel full or buffer write failed",
    ),
    (
        "nats_buffer_damaged",
        "damaged NATS buffer segments (the rest of each skipped)",
    ),
    ("nats_buffer_errors", "failed writes to the NATS buffer"),
];

/// Messages waiting in the channel to the buffer's writer.
const CHANNEL: usize = 16384;

/// Called with each drop report (`{dropped, total, ...}`): the daemon ledgers it.
pub type DropReport = Arc<dyn Fn(serde_json::Value) + Send + Sync>;

/// The caller's end: hands messages to the buffer without ever waiting.
#[derive(Clone)]
pub struct Sink {
    tx: tokio::sync::mpsc::Sender<Record>,
    counters: Arc<Counters>,
    writer: Arc<std::sync::Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl Sink {
    /// Opens the buffer (`buffer_dir`, else `default_dir`), starts its writer thread and
    /// the publisher task (on the current Tokio runtime). Stops when every `Sink` clone is
    /// dropped (the publisher when the runtime ends).
    pub fn start(cfg: &NatsConfig, default_dir: &Path, report: DropReport) -> anyhow::Result<Sink> {
        let counters = Arc::new(Counters::default());
        let dir = cfg
            .buffer_dir
            .clone()
            .unwrap_or_else(|| default_dir.to_owned());
        let (buffer, writer) = buffer::Buffer::open(&dir, cfg.buffer_max_bytes, counters.clone())?;
        let (tx, rx) = tokio::sync::mpsc::channel(CHANNEL);
        let wake = Arc::new(tokio::sync::Notify::new());
        let w = wake.clone();
        let c = counters.clone();
        let writer = std::thread::Builder::new()
            .name("nats-buffer".into())
            .spawn(move || write_loop(rx, writer, w, c))?;
        tokio::spawn(publish::run(cfg.clone(), buffer, wake, counters.clone()));
        tokio::spawn(report_drops(counters.clone(), report, cfg.buffer_max_bytes));
        Ok(Sink {
            tx,
            counters,
            writer: Arc::new(std::sync::Mutex::new(Some(writer))),
        })
    }

    /// At shutdown: closes the channel and waits until the writer has put everything it
    /// held into the buffer (sent after the next start if not acknowledged before).
    pub fn close(self) {
        let Sink { tx, writer, .. } = self;
        drop(tx);
        let handle = writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(h) = handle {
            // Other clones keep the channel open; then there is nothing to wait for.
            if Arc::strong_count(&writer) == 1 && h.join().is_err() {
                tracing::error!("NATS buffer writer panicked");
            }
        }
    }

    /// Queues one message; a full channel (the writer behind) is a counted drop. Bytes of
    /// the id that cannot be in a header value (controls, space, non-ASCII) become `_`.
    pub fn send(&self, mut record: Record) {
        if !record.id.bytes().all(|b| b.is_ascii_graphic()) {
            record.id = record
                .id
                .chars()
                .map(|c| if c.is_ascii_graphic() { c } else { '_' })
                .collect();
        }
        if self.tx.try_send(record).is_err() {
            self.counters.dropped.fetch_add(1, Relaxed);
        }
    }

    /// A message that could not be made (counted as dropped).
    pub fn send_failed(&self) {
        self.counters.dropped.fetch_add(1, Relaxed);
    }

    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
}

/// The writer thread: batches from the channel into the buffer, one sync per batch.
fn write_loop(
    mut rx: tokio::sync::mpsc::Receiver<Record>,
    mut writer: buffer::Writer,
    wake: Arc<tokio::sync::Notify>,
    counters: Arc<Counters>,
) {
    let mut batch = Vec::with_capacity(1024);
    while let Some(first) = rx.blocking_recv() {
        batch.clear();
        batch.push(first);
        while batch.len() < 4096 {
            match rx.try_recv() {
                Ok(r) => batch.push(r),
                Err(_) => break,
            }
        }
        match writer.append(&batch) {
            Ok(dropped) => {
                counters.dropped.fetch_add(dropped, Relaxed);
            }
            Err(e) => {
                counters.buffer_errors.fetch_add(1, Relaxed);
                counters.dropped.fetch_add(batch.len() as u64, Relaxed);
                tracing::error!(error = %e, events = batch.len(), "NATS buffer: cannot write; these events are dropped (counted in nats_events_dropped)");
            }
        }
        wake.notify_one();
    }
}

/// Drop reports at most every [`REPORT_EVERY`] (the first at once): a warning and the
/// report callback with the drops since the previous one.
const REPORT_EVERY: Duration = Duration::from_secs(10);

async fn report_drops(counters: Arc<Counters>, report: DropReport, max_bytes: u64) {
    let mut reported = 0u64;
    let mut last: Option<tokio::time::Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tick.tick().await;
        let total = counters.dropped.load(Relaxed);
        if total == reported || last.is_some_and(|t| t.elapsed() < REPORT_EVERY) {
            continue;
        }
        let dropped = total - reported;
        tracing::warn!(
            dropped,
            total,
            buffer_max_bytes = max_bytes,
            "NATS: events dropped (buffer full or writer behind); they are in the events file but not on the bus"
        );
        report(serde_json::json!({
            "dropped": dropped,
            "total": total,
            "buffer_max_bytes": max_bytes,
            "buffered_bytes": counters.buffered_bytes.load(Relaxed),
        }));
        reported = total;
        last = Some(tokio::time::Instant::now());
    }
}

#[cfg(test)]
mod tests;
