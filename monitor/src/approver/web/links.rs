//! Signed one-time action links: a URL that opens one request's page for one approver,
//! for at most [`MAX_LINK_LIFETIME_MS`], usable once.
//!
//! The token is `base64url(payload) "." base64url(HMAC-SHA256(key, payload))` with the
//! payload `{"r": request id, "a": approver, "e": expiry (Unix ms), "n": nonce}`. The key
//! is 32 random bytes from a file (generated with mode 0600 in the service's state
//! directory unless `[web] link_key_file` names one). A link signs nobody in and never
//! decides by itself: its page needs a signed-in web session whose identity is the link's
//! approver (`alice` or `oidc:alice` for the person signed in as `oidc:alice`), shows the
//! request's full context and asks for the click. The decision is the signed-in approver's;
//! the link's nonce is recorded in the store when the decision is taken, so that a second
//! use is refused, across restarts too.
//!
//! Other channels (Teams cards, Slack messages) make links with [`for_service`] and
//! [`LinkKey::url`].
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use redb::{ReadableTable, TableDefinition};
use ring::hmac;
use serde::{Deserialize, Serialize};

use crate::approver::ApproverError;
use crate::approver::config::ServiceConfig;
use crate::store::{Store, StoreError};

/// Longest lifetime of an action link: 15 minutes.
pub const MAX_LINK_LIFETIME_MS: i64 = 15 * 60 * 1000;

/// Longest approver name a link carries.
const MAX_APPROVER: usize = 256;

/// Longest token accepted.
const MAX_TOKEN: usize = 1024;

/// Used links: nonce -> expiry (Unix ms), kept until the expiry passes.
const USED_LINKS: TableDefinition<'static, &'static str, i64> =
    TableDefinition::new("approver_web_used_links");

/// Where a link's page is served (the token follows).
pub const LINK_PATH: &str = "/web/link/";

/// What a verified link says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionLink {
    #[serde(rename = "r")]
    pub request_id: u64,
    #[serde(rename = "a")]
    pub approver: String,
    #[serde(rename = "e")]
    pub expires_unix_ms: i64,
    #[serde(rename = "n")]
    pub nonce: String,
}

/// Why a link is refused. The messages are shown to the person who opened it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("this link is not a valid confgate action link")]
    Malformed,
    #[error("this link's signature does not verify")]
    BadSignature,
    #[error("this link has expired; ask for a new one or sign in")]
    Expired,
    #[error("this link was already used")]
    Used,
    #[error("this link is for request {link}, not {asked}")]
    OtherRequest { link: u64, asked: u64 },
    #[error("this link is for another approver")]
    OtherApprover,
    #[error("the approver name is empty, too long or has control characters")]
    BadApprover,
    #[error("store: {0}")]
    Store(String),
}

/// Where the service keeps its link key: `[web] link_key_file`, or `web-link.key` beside
/// the store.
pub fn key_path(cfg: &ServiceConfig) -> PathBuf {
    match &cfg.web.link_key_file {
        Some(p) => p.clone(),
        None => cfg
            .store
            .parent()
            .unwrap_or(Path::new("/"))
            .join("web-link.key"),
    }
}

/// The link key and public base URL of the service of `cfg` (for notification channels):
/// `None` without `[http] listen` (no page to link to).
pub fn for_service(cfg: &ServiceConfig) -> Result<Option<(LinkKey, String)>, ApproverError> {
    let Some(base) = cfg.http.base_url() else {
        return Ok(None);
    };
    Ok(Some((LinkKey::load_or_create(&key_path(cfg))?, base)))
}

/// The HMAC key of action links.
pub struct LinkKey {
    key: hmac::Key,
}

impl LinkKey {
    /// A key from raw bytes (tests; at least 32 bytes).
    pub fn from_bytes(bytes: &[u8]) -> LinkKey {
        LinkKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, bytes),
        }
    }

    /// Reads the key at `path`, or creates it there (32 random bytes, mode 0600) when the
    /// file does not exist. A key shorter than 32 bytes is refused.
    pub fn load_or_create(path: &Path) -> Result<LinkKey, ApproverError> {
        let io = |action, source| ApproverError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        match std::fs::read(path) {
            Ok(bytes) if bytes.len() >= 32 => return Ok(LinkKey::from_bytes(&bytes)),
            Ok(_) => {
                return Err(ApproverError::Config(format!(
                    "{}: an action link key needs at least 32 bytes",
                    path.display()
                )));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", e)),
        }
        let mut bytes = [0u8; 32];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
            .map_err(|_| ApproverError::Config("no random bytes for the link key".into()))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(|e| io("write", e))?;
        tracing::info!(path = %path.display(), "action link key created");
        Ok(LinkKey::from_bytes(&bytes))
    }

    /// A token for `approver` to decide request `request_id` until `expires_unix_ms`
    /// (capped at [`MAX_LINK_LIFETIME_MS`] from `now`).
    pub fn sign(
        &self,
        request_id: u64,
        approver: &str,
        expires_unix_ms: i64,
        now: i64,
    ) -> Result<String, LinkError> {
        if approver.is_empty()
            || approver.len() > MAX_APPROVER
            || approver.chars().any(char::is_control)
        {
            return Err(LinkError::BadApprover);
        }
        let mut nonce = [0u8; 16];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce)
            .map_err(|_| LinkError::Store("no random bytes".into()))?;
        let link = ActionLink {
            request_id,
            approver: approver.to_owned(),
            expires_unix_ms: expires_unix_ms.min(now.saturating_add(MAX_LINK_LIFETIME_MS)),
            nonce: B64.encode(nonce),
        };
        let payload = serde_json::to_vec(&link).map_err(|_| LinkError::Malformed)?;
        let tag = hmac::sign(&self.key, &payload);
        Ok(format!(
            "{}.{}",
            B64.encode(&payload),
            B64.encode(tag.as_ref())
        ))
    }

    /// The URL of a new link under `base_url` (the service's `[http] public_url`).
    pub fn url(
        &self,
        base_url: &str,
        request_id: u64,
        approver: &str,
        expires_unix_ms: i64,
        now: i64,
    ) -> Result<String, LinkError> {
        let token = self.sign(request_id, approver, expires_unix_ms, now)?;
        Ok(format!(
            "{}{LINK_PATH}{token}",
            base_url.trim_end_matches('/')
        ))
    }

    /// Checks the signature and expiry of `token` (not whether it was used).
    pub fn verify(&self, token: &str, now: i64) -> Result<ActionLink, LinkError> {
        if token.len() > MAX_TOKEN {
            return Err(LinkError::Malformed);
        }
        let (payload, tag) = token.split_once('.').ok_or(LinkError::Malformed)?;
        let payload = B64.decode(payload).map_err(|_| LinkError::Malformed)?;
        let tag = B64.decode(tag).map_err(|_| LinkError::Malformed)?;
        hmac::verify(&self.key, &payload, &tag).map_err(|_| LinkError::BadSignature)?;
        let link: ActionLink =
            serde_json::from_slice(&payload).map_err(|_| LinkError::Malformed)?;
        if link.expires_unix_ms <= now {
            return Err(LinkError::Expired);
        }
        if link.expires_unix_ms - now > MAX_LINK_LIFETIME_MS {
            // Signed with this key, yet longer than any link made here: not ours to honour.
            return Err(LinkError::Malformed);
        }
        Ok(link)
    }

    /// Verifies `token` for `request_id` (and, when given, `approver`) and records it as
    /// used in `store`: a second call with the same token fails with [`LinkError::Used`].
    pub fn redeem(
        &self,
        store: &Store,
        token: &str,
        request_id: u64,
        now: i64,
    ) -> Result<ActionLink, LinkError> {
        let link = self.verify(token, now)?;
        if link.request_id != request_id {
            return Err(LinkError::OtherRequest {
                link: link.request_id,
                asked: request_id,
            });
        }
        let fresh = store
            .write(|tx| {
                let mut t = tx.raw().open_table(USED_LINKS)?;
                if t.get(link.nonce.as_str())?.is_some() {
                    return Ok(false);
                }
                // Forget links that expired (a few at a time: they cannot verify anymore).
                let old: Vec<String> = t
                    .iter()?
                    .filter_map(Result::ok)
                    .filter(|(_, e)| e.value() <= now)
                    .take(64)
                    .map(|(k, _)| k.value().to_owned())
                    .collect();
                for k in old {
                    t.remove(k.as_str())?;
                }
                t.insert(link.nonce.as_str(), link.expires_unix_ms)?;
                Ok(true)
            })
            .map_err(|e: StoreError| LinkError::Store(e.to_string()))?;
        if !fresh {
            return Err(LinkError::Used);
        }
        Ok(link)
    }

    /// Forgets that `link` was used: its decision was not taken (the service refused it),
    /// so the link stays usable until it expires.
    pub fn release(&self, store: &Store, link: &ActionLink) -> Result<(), LinkError> {
        store
            .write(|tx| {
                let mut t = tx.raw().open_table(USED_LINKS)?;
                t.remove(link.nonce.as_str())?;
                Ok(())
            })
            .map_err(|e: StoreError| LinkError::Store(e.to_string()))
    }

    /// Whether `token`'s nonce was used (for showing a page: the click redeems).
    pub fn is_used(&self, store: &Store, link: &ActionLink) -> Result<bool, LinkError> {
        store
            .read_raw(|tx| {
                let Ok(t) = tx.open_table(USED_LINKS) else {
                    return Ok(false);
                };
                Ok(t.get(link.nonce.as_str())?.is_some())
            })
            .map_err(|e: StoreError| LinkError::Store(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn key() -> LinkKey {
        LinkKey::from_bytes(&[7u8; 32])
    }

    #[test]
    fn a_link_verifies_once_for_its_request() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        let k = key();
        let t = k.sign(5, "oidc:alice", NOW + 60_000, NOW).unwrap();
        let l = k.verify(&t, NOW).unwrap();
        assert_eq!((l.request_id, l.approver.as_str()), (5, "oidc:alice"));
        assert!(!k.is_used(&store, &l).unwrap());
        assert_eq!(
            k.redeem(&store, &t, 6, NOW),
            Err(LinkError::OtherRequest { link: 5, asked: 6 })
        );
        k.redeem(&store, &t, 5, NOW).unwrap();
        assert!(k.is_used(&store, &l).unwrap());
        assert_eq!(k.redeem(&store, &t, 5, NOW), Err(LinkError::Used));
        // Survives a reopen.
        drop(store);
        let store = Store::open(&dir.path().join("s.redb")).unwrap();
        assert_eq!(k.redeem(&store, &t, 5, NOW), Err(LinkError::Used));
    }

    #[test]
    fn expiry_is_capped_and_enforced() {
        let k = key();
        let t = k.sign(1, "a", NOW + 3_600_000, NOW).unwrap();
        let l = k.verify(&t, NOW).unwrap();
        assert_eq!(l.expires_unix_ms, NOW + MAX_LINK_LIFETIME_MS);
        assert_eq!(
            k.verify(&t, NOW + MAX_LINK_LIFETIME_MS),
            Err(LinkError::Expired)
        );
        assert_eq!(k.verify(&t, NOW + MAX_LINK_LIFETIME_MS - 1), Ok(l));
    }

    #[test]
    fn tampering_another_key_and_bad_names_are_refused() {
        let k = key();
        let t = k.sign(1, "oidc:alice", NOW + 1000, NOW).unwrap();
        let (p, tag) = t.split_once('.').unwrap();
        // The approver changed in the payload.
        let mut l: ActionLink = serde_json::from_slice(&B64.decode(p).unwrap()).unwrap();
        l.approver = "oidc:mallory".into();
        let forged = format!("{}.{tag}", B64.encode(serde_json::to_vec(&l).unwrap()));
        assert_eq!(k.verify(&forged, NOW), Err(LinkError::BadSignature));
        assert_eq!(
            LinkKey::from_bytes(&[8u8; 32]).verify(&t, NOW),
            Err(LinkError::BadSignature)
        );
        assert_eq!(k.verify("x", NOW), Err(LinkError::Malformed));
        assert_eq!(k.verify(&"a.".repeat(600), NOW), Err(LinkError::Malformed));
        assert_eq!(k.sign(1, "", NOW, NOW), Err(LinkError::BadApprover));
        assert_eq!(k.sign(1, "a\nb", NOW, NOW), Err(LinkError::BadApprover));
        let u = k
            .url("https://h.example:8443/", 3, "a", NOW + 1, NOW)
            .unwrap();
        assert!(u.starts_with("https://h.example:8443/web/link/"), "{u}");
    }

    #[test]
    fn key_file_is_created_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub/link.key");
        let a = LinkKey::load_or_create(&p).unwrap();
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let b = LinkKey::load_or_create(&p).unwrap();
        let t = a.sign(1, "a", NOW + 1000, NOW).unwrap();
        b.verify(&t, NOW).unwrap();
        std::fs::write(&p, b"short").unwrap();
        assert!(LinkKey::load_or_create(&p).is_err());
    }
}
