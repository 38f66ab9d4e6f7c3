//! The service's update stream: each decision or revocation newer than the cursor is
//! handed to the receiver, then the cursor is stored (at-least-once delivery).
use confgate_proto::v1::{HostUpdate, host_update};

use super::UplinkUpdate;
use super::status::bump;
use super::task::{End, Task};

impl Task {
    /// Hands one update to the receiver, then stores the cursor.
    pub(super) async fn deliver(&mut self, u: HostUpdate, cursor: &mut u64) -> Result<(), End> {
        let c = &self.shared.counters;
        if u.seq <= *cursor {
            bump(&c.updates_skipped);
            tracing::warn!(
                seq = u.seq,
                cursor = *cursor,
                "uplink: update not newer than the cursor; skipped"
            );
            return Ok(());
        }
        let update = match u.update {
            Some(host_update::Update::Decision(decision)) => {
                self.awaiting.remove(&u.host_request_id);
                Some(UplinkUpdate::Decision {
                    seq: u.seq,
                    host_request_id: u.host_request_id,
                    decision,
                })
            }
            Some(host_update::Update::Revoked(grant)) => {
                Some(UplinkUpdate::Revoked { seq: u.seq, grant })
            }
            None => {
                bump(&c.updates_skipped);
                tracing::warn!(seq = u.seq, "uplink: update without content; skipped");
                None
            }
        };
        if let Some(update) = update {
            if self.updates.send(update).await.is_err() {
                return Err(End::Stop);
            }
            bump(&c.updates_applied);
        }
        *cursor = u.seq;
        let spool = self.spool.clone();
        let seq = u.seq;
        match tokio::task::spawn_blocking(move || spool.set_cursor(seq)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(seq, error = %e, "uplink: cannot store the update cursor; updates will be replayed");
            }
            Err(e) => {
                bump(&self.shared.counters.store_errors);
                tracing::error!(seq, error = %e, "uplink: cursor write did not complete");
            }
        }
        Ok(())
    }
}
