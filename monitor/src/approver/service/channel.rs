//! Decisions that come through another channel than the gRPC API (Slack's interactive
//! callbacks): the channel has established who the person is (a verified callback from an
//! allow-listed user); the decision then takes the same path as `Decide`: input checks,
//! [`Shared::check_decision`] (no self-approval), one store resolution, [`Shared::resolved`].
use super::*;
use crate::approver::sinks::Sinks;

impl Shared {
    /// Decides `r` as approver `who`; `how` (how the channel identified them) is ledgered
    /// as the decision's `decider`.
    pub(crate) async fn decide_as(
        self: &Arc<Self>,
        who: &str,
        r: pb::DecideRequest,
        how: serde_json::Value,
    ) -> Result<RequestRec, Status> {
        check_decide(&r).inspect_err(|e| self.refused("Decide", e))?;
        // Neither a local caller nor a credential: the channel vouched for the person,
        // outside any agent session (it is a person's click in a chat client).
        let who = ApproverId {
            name: who.to_owned(),
            local: None,
            unix: false,
            workstation: true,
        };
        let id = r.id;
        let me = Arc::clone(self);
        let resolved = self
            .db("decide", move |st| {
                let Some(req) = st.request(id)? else {
                    return Ok(Err(Status::not_found(format!("no request {id}"))));
                };
                let now = now_ms();
                let (how, _) = match me.check_decision(&who, &r, &req, now) {
                    Ok(v) => v,
                    Err(status) => return Ok(Err(status)),
                };
                Ok(match st.resolve(id, how, now)? {
                    Ok(res) => Ok(res),
                    Err(Refusal::NotPending(state)) => Err(not_pending(id, state)),
                    Err(_) => Err(Status::not_found(format!("no request {id}"))),
                })
            })
            .await??;
        self.resolved(&resolved, json!({ "decider": how })).await;
        Ok(resolved.request)
    }

    /// The notification sinks, once the server has loaded them.
    pub(crate) fn sinks(&self) -> Option<Arc<Sinks>> {
        self.sinks.get().cloned()
    }

    /// Becomes true when the service stops (for the outbox's sender).
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stopping.subscribe()
    }

    /// Sets the notification sinks (once, at start-up).
    pub(crate) fn set_sinks(&self, sinks: Arc<Sinks>) {
        let _ = self.sinks.set(sinks);
    }
}
