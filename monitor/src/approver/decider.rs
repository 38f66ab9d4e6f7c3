//! Who may decide, beyond holding an approver identity: no decision comes from inside an
//! agent session, and the service does not take the client's word for that.
//!
//! | approver identity                         | accepted when                                   |
//! |-------------------------------------------|-------------------------------------------------|
//! | Unix caller of a daemon's local service   | the kernel's session map puts it in no session  |
//! | Unix caller of a standalone service       | always (the service host is trusted: run no agents there) |
//! | certificate or token                      | with a valid attestation from a host's daemon   |
//! | certificate or token in `workstation_approvers` | always (never place such a credential on a host) |
//!
//! An attestation ([`super::attest`]) is verified with the key its host presented on the
//! mTLS host channel ([`Deciders::set_host_key`]); it must name this request and decision,
//! be unexpired, and be used once. `DecideRequest.decider_host`/`decider_session` are the
//! client's claims: recorded, never trusted.
use std::collections::HashMap;
use std::sync::Mutex;

use serde_json::{Value, json};
use tonic::Status;

use super::attest::{self, NonceCache, PUBLIC_KEY_LEN};
use super::identity::ApproverId;
use super::store::RequestRec;
use super::wire::invalid;
use confgate_proto::v1 as pb;

/// Ed25519 signature length.
const SIGNATURE_LEN: usize = 64;

/// Why a decision was refused: the counter it goes to.
#[derive(Debug)]
pub enum Refused {
    /// The decider is inside an agent session.
    InSession(Status),
    /// No (valid) attestation.
    Unattested(Status),
}

impl Refused {
    pub fn status(&self) -> &Status {
        match self {
            Refused::InSession(s) | Refused::Unattested(s) => s,
        }
    }
}

/// The hosts' attestation keys and the nonces already used.
#[derive(Default)]
pub struct Deciders {
    keys: Mutex<HashMap<String, Vec<u8>>>,
    nonces: Mutex<NonceCache>,
}

impl Deciders {
    /// Records `key` as `host`'s attestation key (from that host's own identity). An empty
    /// key changes nothing; a key of the wrong length is refused.
    pub fn set_host_key(&self, host: &str, key: &[u8]) -> Result<(), Status> {
        if key.is_empty() {
            return Ok(());
        }
        if key.len() != PUBLIC_KEY_LEN {
            return Err(invalid(
                "attestation_key",
                format!(
                    "an Ed25519 public key is {PUBLIC_KEY_LEN} bytes, not {}",
                    key.len()
                ),
            ));
        }
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.get(host).is_none_or(|k| k != key) {
            tracing::info!(host, "host attestation key registered");
        }
        keys.insert(host.to_owned(), key.to_vec());
        Ok(())
    }

    /// Whether `who` may decide `req` as `r` asks at `now`; on success, how the decider was
    /// established (for the ledger).
    pub fn check(
        &self,
        who: &ApproverId,
        r: &pb::DecideRequest,
        req: &RequestRec,
        now: i64,
    ) -> Result<Value, Refused> {
        let ctx = &req.context;
        if let Some((host, session)) = &who.local {
            // The real session of the calling process, from the kernel.
            if *session != 0 {
                let same = *host == ctx.host && *session == ctx.session_id;
                return Err(Refused::InSession(Status::permission_denied(format!(
                    "{} calls from inside agent session {session} on {host}{}; approvals must \
                     come from outside any agent session",
                    who.name,
                    if same {
                        ", the session that asked (self-approval)"
                    } else {
                        ""
                    }
                ))));
            }
            return Ok(json!({ "by": "kernel_session_map", "host": host, "session": 0 }));
        }
        if !r.attestation.is_empty() {
            return self.attested(who, r, now);
        }
        if who.unix {
            // A Unix caller of a service that has no session map: root or the admin group on
            // the service's own host.
            return Ok(json!({ "by": "service_host_unix_socket" }));
        }
        if who.workstation {
            return Ok(json!({ "by": "workstation_credential" }));
        }
        Err(Refused::Unattested(Status::permission_denied(format!(
            "{} needs an attestation from the deciding host's confgate daemon that the decision \
             does not come from an agent session (the approvals CLI gets one from the local \
             daemon); only credentials listed in the service's workstation_approvers decide \
             without one",
            who.name
        ))))
    }

    fn attested(
        &self,
        who: &ApproverId,
        r: &pb::DecideRequest,
        now: i64,
    ) -> Result<Value, Refused> {
        let refuse = |m: String| Refused::Unattested(Status::permission_denied(m));
        let host = attest::claimed_host(&r.attestation)
            .ok_or_else(|| refuse("the attestation is not a decider statement".into()))?;
        let key = self
            .keys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&host)
            .cloned()
            .ok_or_else(|| {
                refuse(format!(
                    "the attestation names host {host:?}, which has not presented an \
                     attestation key to this service since it started (its daemon must be \
                     connected to this service with its host certificate); retry once it is"
                ))
            })?;
        let st = attest::verify(&key, &r.attestation, &r.attestation_signature, now)
            .map_err(|e| refuse(e.to_string()))?;
        if st.request_id != r.id || st.approve != r.approve {
            return Err(refuse(format!(
                "the attestation is for {} request {}, not for {} request {}",
                if st.approve { "approving" } else { "denying" },
                st.request_id,
                if r.approve { "approving" } else { "denying" },
                r.id
            )));
        }
        if !self
            .nonces
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .first_use(&st, now)
        {
            return Err(refuse("the attestation was used before".into()));
        }
        tracing::debug!(approver = %who.name, host = %st.host, pid = st.pid, "decision attested");
        Ok(json!({
            "by": "host_attestation",
            "host": st.host,
            "session": 0,
            "pid": st.pid,
            "uid": st.uid,
            "nonce": st.nonce,
            "expires_unix_ms": st.expires_unix_ms,
        }))
    }
}

/// Shape checks of the attestation fields of a Decide call.
pub fn check_fields(r: &pb::DecideRequest) -> Result<(), Status> {
    if r.attestation.len() > attest::MAX_STATEMENT {
        return Err(invalid(
            "attestation",
            format!("longer than {} bytes", attest::MAX_STATEMENT),
        ));
    }
    match (r.attestation.is_empty(), r.attestation_signature.len()) {
        (true, 0) => Ok(()),
        (false, SIGNATURE_LEN) => Ok(()),
        (true, _) => Err(invalid(
            "attestation_signature",
            "given without an attestation",
        )),
        (false, n) => Err(invalid(
            "attestation_signature",
            format!("an Ed25519 signature is {SIGNATURE_LEN} bytes, not {n}"),
        )),
    }
}
