//! What the notification outbox and sinks need from the shared state: the sinks (Slack's
//! interactive endpoint verifies with their secrets) and the stop signal of the sender.
use super::*;
use crate::approver::sinks::Sinks;

impl Shared {
    /// The notification sinks, once the server has loaded them.
    pub(crate) fn sinks(&self) -> Option<Arc<Sinks>> {
        self.sinks.get().cloned()
    }

    /// Sets the notification sinks (once, at start-up).
    pub(crate) fn set_sinks(&self, sinks: Arc<Sinks>) {
        let _ = self.sinks.set(sinks);
    }

    /// Becomes true when the service stops (for the outbox's sender).
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }
}
