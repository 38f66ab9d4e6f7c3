//! What else sees each record once it is durable: a function the ledger calls after every
//! successful append, under its lock (so in chain order). It must not block: the audit
//! events' queue ([`crate::event::audit`]) only offers the record to a bounded queue.
use std::sync::Arc;

use super::LedgerRecord;

/// A function called with each record appended (after its `fdatasync`).
#[derive(Clone)]
pub struct Tap(Arc<dyn Fn(&LedgerRecord) + Send + Sync>);

impl Tap {
    pub fn new(f: impl Fn(&LedgerRecord) + Send + Sync + 'static) -> Tap {
        Tap(Arc::new(f))
    }

    pub(super) fn call(&self, record: &LedgerRecord) {
        (self.0)(record)
    }
}

impl std::fmt::Debug for Tap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tap")
    }
}
