//! `[output.nats]`: every event the events file gets (file operations and ledger records,
//! in the file's format) is also handed to the NATS sink ([`crate::nats`]), on subject
//! `<subject_prefix>.<host>.<kind>` with message id `<host>:<boot_id>:<event id>`.
use std::sync::Arc;

use tracing::warn;

use super::{consumers::Consumer, shared::Shared};
use crate::{
    config::{Config, OutputFormat},
    event::{Event, audit::AuditEvent, ocsf},
    nats::{Record, Sink, token},
};

/// The ledger kind of a drop report.
pub(super) const DROPPED: &str = "nats_events_dropped";

/// The sink, started, when `[output.nats]` names servers.
pub(super) fn start(cfg: &Config, shared: &Arc<Shared>) -> anyhow::Result<Option<Sink>> {
    let n = &cfg.output.nats;
    if !n.enabled() {
        return Ok(None);
    }
    let weak = Arc::downgrade(shared);
    let report: crate::nats::DropReport = Arc::new(move |body| {
        let Some(shared) = weak.upgrade() else {
            return;
        };
        match shared.gate.get() {
            Some(g) => g.record(DROPPED, body),
            None => {
                // No gate, no ledger writer: append to the ledger file directly.
                let path = crate::ledger::default_path(&shared.state_dir);
                tokio::task::spawn_blocking(move || {
                    if let Err(e) =
                        crate::ledger::Ledger::open(&path).and_then(|mut l| l.append(DROPPED, body))
                    {
                        warn!(error = %e, "cannot record dropped NATS events in the ledger");
                    }
                });
            }
        }
    });
    let sink = Sink::start(n, &cfg.daemon.state_dir.join("nats-buffer"), report)?;
    let _ = shared.nats.set(sink.counters().clone());
    tracing::info!(servers = ?n.servers, stream = %n.stream, subjects = %format!("{}.>", n.subject_prefix), "publishing events to NATS JetStream");
    Ok(Some(sink))
}

/// The consumer that hands each event to the sink.
pub(super) struct Published {
    sink: Option<Sink>,
    format: OutputFormat,
    /// `<subject_prefix>.<host>.`
    prefix: String,
}

impl Published {
    pub(super) fn new(sink: Sink, cfg: &Config) -> Published {
        let host = crate::event::origin::origin().host.as_str();
        Published {
            sink: Some(sink),
            format: cfg.output.format,
            prefix: format!("{}.{}.", cfg.output.nats.subject_prefix, token(host)),
        }
    }

    fn send<T: serde::Serialize>(
        &self,
        event: &T,
        ids: (&str, &str, &str),
        kind: &str,
        as_ocsf: impl FnOnce() -> serde_json::Value,
    ) {
        let Some(sink) = &self.sink else {
            return;
        };
        let payload = match self.format {
            OutputFormat::Confgate => serde_json::to_vec(event),
            OutputFormat::Ocsf => serde_json::to_vec(&as_ocsf()),
        };
        let Ok(payload) = payload else {
            // Serializing our own types does not fail; were it to, it is a drop.
            sink.send_failed();
            return;
        };
        let (host, boot, id) = ids;
        sink.send(Record {
            subject: format!("{}{}", self.prefix, token(kind)),
            id: format!("{host}:{boot}:{id}"),
            payload,
        });
    }
}

impl Consumer for Published {
    fn on_event(&mut self, e: &Event) {
        self.send(e, (e.host, e.boot_id, &e.id), e.kind.as_str(), || {
            ocsf::file_activity(e)
        });
    }

    fn on_audit(&mut self, a: &AuditEvent) {
        self.send(a, (a.host, a.boot_id, &a.id), &a.kind, || {
            ocsf::audit_event(a)
        });
    }

    fn on_final_event(&mut self, e: &Event) {
        self.on_event(e);
    }

    /// Everything handed over is in the on-disk buffer before the daemon exits.
    fn close(&mut self) {
        if let Some(s) = self.sink.take() {
            s.close();
        }
    }
}
