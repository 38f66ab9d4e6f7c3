//! The service's ledger: every submit, decision, expiry, grant, revocation and host
//! report, hash-chained ([`crate::ledger`]).
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::ledger::{LedgerError, SharedLedger};
use crate::os::clock::from_unix_ms;

/// The service ledger at one path.
#[derive(Clone, Debug)]
pub struct Audit {
    ledger: SharedLedger,
    path: PathBuf,
    /// `[nats]`: where each record is published too, once started.
    nats: Arc<OnceLock<Publisher>>,
}

/// The NATS sink and the subject prefix and message-id prefix of this service's records.
struct Publisher {
    sink: crate::nats::Sink,
    prefix: String,
    id_prefix: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.prefix)
    }
}

impl Audit {
    /// Opens (or creates) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Audit, LedgerError> {
        Ok(Audit {
            ledger: SharedLedger::open(path)?,
            path: path.to_owned(),
            nats: Arc::new(OnceLock::new()),
        })
    }

    /// Publishes every record appended from now on to NATS JetStream (`[nats]`), on
    /// `<subject_prefix>.<kind>` with message id `<host>:<ledger file>:<seq>-<hash>`.
    /// Drops are recorded in this ledger (`nats_events_dropped`).
    pub fn publish_to_nats(&self, cfg: &crate::nats::NatsConfig) -> anyhow::Result<()> {
        if !cfg.enabled() {
            return Ok(());
        }
        let me = self.clone();
        let report: crate::nats::DropReport = Arc::new(move |body| {
            let me = me.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = me.append("nats_events_dropped", body) {
                    tracing::warn!(error = %e, "cannot record dropped NATS messages in the ledger");
                }
            });
        });
        let dir = self
            .path
            .parent()
            .unwrap_or(Path::new("/"))
            .join("nats-buffer");
        let sink = crate::nats::Sink::start(cfg, &dir, report)?;
        let host = crate::event::origin::origin().host.as_str();
        let _ = self.nats.set(Publisher {
            sink,
            prefix: format!("{}.", cfg.subject_prefix),
            id_prefix: format!("{}:{}", host, self.path.display()),
        });
        tracing::info!(servers = ?cfg.servers, stream = %cfg.stream, "publishing approval records to NATS JetStream");
        Ok(())
    }

    /// Appends one record, durably (blocking).
    pub fn append(&self, kind: &str, body: serde_json::Value) -> Result<(), String> {
        let record = self.ledger.append(kind, body).map_err(|e| e.to_string())?;
        if let Some(p) = self.nats.get() {
            p.sink.send(crate::nats::Record {
                subject: format!("{}{}", p.prefix, crate::nats::token(&record.kind)),
                id: format!(
                    "{}:{}-{}",
                    p.id_prefix,
                    record.seq,
                    record.hash.get(..16).unwrap_or(&record.hash)
                ),
                payload: record.to_line().into_bytes(),
            });
        }
        Ok(())
    }

    /// Every record at or after `since_unix_ms` (0: all), oldest first, as JSON lines.
    pub fn read(&self, since_unix_ms: i64) -> Result<Vec<String>, String> {
        let since = from_unix_ms(since_unix_ms);
        crate::ledger::read(&self.path, since)
            .map(|records| records.iter().map(|r| r.to_line()).collect())
            .map_err(|e| e.to_string())
    }

    /// The ledger's counters.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        self.ledger.counters()
    }

    /// The NATS publisher's counters (`nats_*`), when `[nats]` is on.
    pub fn nats_counters(&self) -> Vec<(&'static str, u64)> {
        self.nats
            .get()
            .map(|p| p.sink.counters().snapshot())
            .unwrap_or_default()
    }
}
