//! What the daemon does with what the pipeline observes: each consumer (the metrics, the
//! gate, the events output) is handed every fanotify event before the pipeline takes it
//! and every attributed event, in the order they were registered (the listeners of
//! Tetragon's `pkg/observer` are the model).
use std::sync::Arc;

use tracing::warn;

use super::GateRuntime;
use crate::{
    baseline::events::DaemonEvent, event::Event, metrics::Metrics, notify::FanEvent,
    observe::sink::Sink,
};

/// One consumer of the pipeline's output.
pub(super) trait Consumer {
    /// A fanotify event, before the pipeline takes it; `session`: its process's session
    /// as the process table knows it (0 if none or unknown).
    fn on_fanotify(&mut self, _ev: &FanEvent, _session: u64) {}

    /// An attributed event.
    fn on_event(&mut self, event: &Event);

    /// The flush that emitted the events before it is over.
    fn flushed(&mut self) {}

    /// An event emitted at shutdown (what is still buffered): only writing it out
    /// matters now (the gate is stopping, no stats line follows).
    fn on_final_event(&mut self, _event: &Event) {}

    /// The daemon is stopping: nothing follows the final events.
    fn close(&mut self) {}

    /// A reload: the events output takes `file` (opened at `path`) from now on.
    fn reopen(&mut self, _file: &mut Option<(std::path::PathBuf, std::fs::File)>) {}
}

/// The consumers, in the order each event is handed to them.
#[derive(Default)]
pub(super) struct Consumers(Vec<Box<dyn Consumer>>);

impl Consumers {
    pub(super) fn add(&mut self, c: impl Consumer + 'static) {
        self.0.push(Box::new(c));
    }

    pub(super) fn on_fanotify(&mut self, ev: &FanEvent, session: u64) {
        for c in &mut self.0 {
            c.on_fanotify(ev, session);
        }
    }

    pub(super) fn on_event(&mut self, event: &Event) {
        for c in &mut self.0 {
            c.on_event(event);
        }
    }

    pub(super) fn flushed(&mut self) {
        for c in &mut self.0 {
            c.flushed();
        }
    }

    pub(super) fn on_final_event(&mut self, event: &Event) {
        for c in &mut self.0 {
            c.on_final_event(event);
        }
    }

    pub(super) fn close(&mut self) {
        for c in &mut self.0 {
            c.close();
        }
    }

    /// The events output writes `file`, opened at `path`, from now on.
    pub(super) fn reopen(&mut self, path: std::path::PathBuf, file: std::fs::File) {
        let mut file = Some((path, file));
        for c in &mut self.0 {
            c.reopen(&mut file);
        }
    }
}

/// Counts the events emitted, and observes their delay since the operation.
pub(super) struct Counted(pub(super) Arc<Metrics>);

impl Consumer for Counted {
    fn on_event(&mut self, event: &Event) {
        Metrics::inc(&self.0.events_emitted);
        crate::prom::histograms::observe_event_delay(event.time_ns);
    }
}

/// The gate: marks new directories in gated trees and learns of closes after writing
/// (from fanotify), and of renames by sessions onto gated paths (from events).
pub(super) struct Gated(pub(super) Arc<GateRuntime>);

impl Consumer for Gated {
    fn on_fanotify(&mut self, ev: &FanEvent, session: u64) {
        self.0.on_fanotify(ev, session);
    }

    fn on_event(&mut self, event: &Event) {
        self.0.on_event(event);
    }
}

/// The events output (NDJSON file, terminal, subscribers); a failed write is counted
/// and logged.
pub(super) struct Output {
    pub(super) sink: Sink,
    pub(super) metrics: Arc<Metrics>,
    /// Events the daemon makes itself (`drift_detected`), written at each flush.
    pub(super) daemon_events: Option<std::sync::mpsc::Receiver<DaemonEvent>>,
}

impl Output {
    fn daemon_events(&mut self) {
        let Some(rx) = &self.daemon_events else {
            return;
        };
        while let Ok(ev) = rx.try_recv() {
            Metrics::inc(&self.metrics.events_emitted);
            if let Err(e) = self.sink.emit_line(&ev.json, &ev.human) {
                Metrics::inc(&self.metrics.sink_errors);
                warn!(error = %e, "event not written to the events file");
            }
        }
    }
}

impl Consumer for Output {
    fn on_event(&mut self, event: &Event) {
        if let Err(e) = self.sink.emit(event) {
            Metrics::inc(&self.metrics.sink_errors);
            warn!(error = %e, "event not written to the events file");
        }
    }

    fn flushed(&mut self) {
        self.daemon_events();
        if let Err(e) = self.sink.flush() {
            Metrics::inc(&self.metrics.sink_errors);
            warn!(error = %e, "flushing the events file");
        }
    }

    fn on_final_event(&mut self, event: &Event) {
        let _ = self.sink.emit(event);
    }

    fn close(&mut self) {
        self.daemon_events();
        let _ = self.sink.flush();
    }

    fn reopen(&mut self, file: &mut Option<(std::path::PathBuf, std::fs::File)>) {
        if let Some((path, file)) = file.take()
            && let Err(e) = self.sink.reopen(&path, file)
        {
            Metrics::inc(&self.metrics.sink_errors);
            warn!(error = %e, "flushing the events file before reopening it");
        }
    }
}
