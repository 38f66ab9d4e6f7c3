//! Webhook sink: each notification is a JSON POST of the [`Event`] plus its delivery id
//! and sink, signed so that the receiver can tell it came from this service and is fresh:
//!
//! ```text
//! X-Confgate-Timestamp: <Unix seconds>
//! X-Confgate-Signature: sha256=<hex HMAC-SHA256(secret, timestamp + "." + body)>
//! X-Confgate-Delivery: <delivery id>      (the same on every retry: deduplicate on it)
//! X-Confgate-Event: request.created
//! ```
//!
//! [`Event`]: crate::approver::outbox::Event
use serde_json::Value;

use super::http::HttpClient;
use super::{Delivered, SinkError, hmac_hex};
use crate::approver::outbox::OutboxEntry;
use crate::os::clock::now_ms;

/// Header with the signature.
pub const SIGNATURE_HEADER: &str = "x-confgate-signature";
/// Header with the timestamp the signature covers.
pub const TIMESTAMP_HEADER: &str = "x-confgate-timestamp";

/// One configured webhook.
#[derive(Debug)]
pub struct Webhook {
    id: String,
    url: String,
    secret: Vec<u8>,
    client: HttpClient,
}

impl Webhook {
    pub fn new(id: String, url: String, secret: Vec<u8>, client: HttpClient) -> Webhook {
        Webhook {
            id,
            url,
            secret,
            client,
        }
    }

    /// POSTs `entry`; any 2xx answer is a delivery.
    pub async fn deliver(&self, entry: &OutboxEntry) -> Result<Delivered, SinkError> {
        let body = body(entry);
        let ts = (now_ms() / 1000).to_string();
        let headers = [
            (SIGNATURE_HEADER, signature(&self.secret, &ts, &body)),
            (TIMESTAMP_HEADER, ts),
            ("x-confgate-delivery", entry.id.to_string()),
            ("x-confgate-event", entry.event.event.clone()),
        ];
        let resp = self
            .client
            .post(&self.url, &headers, "application/json", body)
            .await?;
        if !resp.is_success() {
            return Err(SinkError::Rejected {
                sink: self.id.clone(),
                status: resp.status,
                body: resp.excerpt(),
            });
        }
        Ok(Delivered::Done)
    }
}

/// The JSON body of `entry`: the event, with `delivery_id` and `sink`.
pub fn body(entry: &OutboxEntry) -> Vec<u8> {
    let mut v = serde_json::to_value(&entry.event).unwrap_or(Value::Null);
    if let Some(m) = v.as_object_mut() {
        m.insert("delivery_id".to_owned(), Value::from(entry.id));
        m.insert("sink".to_owned(), Value::from(entry.sink.clone()));
    }
    serde_json::to_vec(&v).unwrap_or_default()
}

/// `sha256=<hex HMAC-SHA256(secret, ts + "." + body)>`.
pub fn signature(secret: &[u8], ts: &str, body: &[u8]) -> String {
    let mut msg = Vec::with_capacity(ts.len() + 1 + body.len());
    msg.extend_from_slice(ts.as_bytes());
    msg.push(b'.');
    msg.extend_from_slice(body);
    format!("sha256={}", hmac_hex(secret, &msg))
}

/// What a receiver does (and the tests): whether `sig` is the signature of `body` at `ts`
/// and `ts` is within `window_secs` of `now_secs`. Constant-time.
pub fn verify(
    secret: &[u8],
    ts: &str,
    body: &[u8],
    sig: &str,
    now_secs: i64,
    window_secs: i64,
) -> bool {
    let Ok(t) = ts.parse::<i64>() else {
        return false;
    };
    if (now_secs - t).abs() > window_secs {
        return false;
    }
    let Some(given) = sig.strip_prefix("sha256=").and_then(super::unhex) else {
        return false;
    };
    let mut msg = ts.as_bytes().to_vec();
    msg.push(b'.');
    msg.extend_from_slice(body);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    ring::hmac::verify(&key, &msg, &given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_verifies_and_a_changed_body_or_old_timestamp_does_not() {
        let sig = signature(b"k", "1700000000", b"{\"a\":1}");
        assert!(sig.starts_with("sha256="));
        assert!(verify(
            b"k",
            "1700000000",
            b"{\"a\":1}",
            &sig,
            1700000100,
            300
        ));
        assert!(!verify(
            b"k",
            "1700000000",
            b"{\"a\":2}",
            &sig,
            1700000100,
            300
        ));
        assert!(!verify(
            b"x",
            "1700000000",
            b"{\"a\":1}",
            &sig,
            1700000100,
            300
        ));
        assert!(!verify(
            b"k",
            "1700000000",
            b"{\"a\":1}",
            &sig,
            1700000400,
            300
        ));
        assert!(!verify(
            b"k",
            "1700000000",
            b"{\"a\":1}",
            "sha256=zz",
            1700000000,
            300
        ));
    }

    #[test]
    fn the_signature_is_the_documented_hmac() {
        // RFC 4231 test case 2: key "Jefe", data "what do ya want for nothing?".
        let sig = signature(b"Jefe", "what do ya want", b" for nothing?");
        // "what do ya want" + "." + " for nothing?" is not the RFC data, so check the
        // construction against a direct HMAC of the joined message instead.
        assert_eq!(
            sig,
            format!(
                "sha256={}",
                super::super::hmac_hex(b"Jefe", b"what do ya want. for nothing?")
            )
        );
        assert_eq!(
            super::super::hmac_hex(b"Jefe", b"what do ya want for nothing?"),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}
