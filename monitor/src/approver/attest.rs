//! Decider attestations: a host's confgate daemon states, signed with its own Ed25519 key,
//! that a process deciding an approval request is in no agent session (from the kernel's
//! session map, the caller identified by SO_PEERCRED). The approval service accepts a
//! decision through a certificate or token only with such a statement (or from a
//! credential its configuration marks as a workstation credential).
//!
//! - [`Attestor`] (daemon side): the key pair, kept in `<state_dir>/attestation.key`
//!   (PKCS#8, mode 0600, created on first start; a damaged file is moved aside and a new
//!   key made), and [`Attestor::attest`].
//! - [`verify`] (service side): signature, then the statement's fields; [`NonceCache`]
//!   refuses a statement used twice.
//!
//! The public key reaches the service only over the host's mTLS channel
//! (`UpdatesRequest.attestation_key`), so a key is tied to a host certificate.
use std::collections::HashMap;
use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use ring::rand::{SecureRandom, SystemRandom};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Prefix of every signed message (domain separation from any other use of the key).
pub const CONTEXT: &[u8] = b"confgate-decider-attestation-v1\0";
/// How long a statement is valid after it was made.
pub const LIFETIME_MS: i64 = 60_000;
/// Longest remaining validity the service accepts (host clocks ahead of the service's).
pub const MAX_AHEAD_MS: i64 = 5 * 60_000;
/// Longest statement accepted, in bytes.
pub const MAX_STATEMENT: usize = 4096;
/// Length of an Ed25519 public key.
pub const PUBLIC_KEY_LEN: usize = 32;
/// File name of the key in the daemon's state directory.
pub const KEY_FILE: &str = "attestation.key";

/// What a daemon signs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Statement {
    /// Format version, 1.
    pub v: u32,
    /// The attesting host (its name as in requests).
    pub host: String,
    /// The approval service's request id the decision is about.
    pub request_id: u64,
    /// Whether the decision approves (true) or denies.
    pub approve: bool,
    /// The caller's agent session per the kernel: always 0 (no statement is made otherwise).
    pub session: u64,
    /// The caller as the kernel reported it (SO_PEERCRED).
    pub pid: u32,
    pub uid: u32,
    /// 16 random bytes, hex.
    pub nonce: String,
    pub issued_unix_ms: i64,
    pub expires_unix_ms: i64,
}

/// Errors of making, loading or checking attestations.
#[derive(Debug, thiserror::Error)]
pub enum AttestError {
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Crypto(String),
    #[error("{0}")]
    Invalid(String),
}

/// The daemon's attestation key.
pub struct Attestor {
    key: Ed25519KeyPair,
    rng: SystemRandom,
}

impl std::fmt::Debug for Attestor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attestor")
            .field("public_key", &hex(self.public_key()))
            .finish()
    }
}

impl Attestor {
    /// Loads the key at `path`, or makes one there (mode 0600) when the file is missing.
    /// A file that is not a key is moved aside to `<path>.damaged-<unix ms>` (kept for
    /// forensics, logged) and replaced by a new key: the daemon always starts.
    pub fn load_or_create(path: &Path) -> Result<Attestor, AttestError> {
        let io = |action, source| AttestError::Io {
            action,
            path: path.to_owned(),
            source,
        };
        let rng = SystemRandom::new();
        match std::fs::read(path) {
            Ok(bytes) => match Ed25519KeyPair::from_pkcs8(&bytes) {
                Ok(key) => {
                    // Tighten a key file someone loosened.
                    if let Ok(m) = std::fs::metadata(path)
                        && m.permissions().mode() & 0o077 != 0
                    {
                        tracing::warn!(path = %path.display(), "attestation key file was readable by others; setting mode 0600");
                        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
                            .map_err(|e| io("chmod", e))?;
                    }
                    return Ok(Attestor { key, rng });
                }
                Err(e) => {
                    let aside =
                        path.with_extension(format!("key.damaged-{}", crate::os::clock::now_ms()));
                    tracing::error!(path = %path.display(), moved_to = %aside.display(), error = %e, "attestation key file is damaged; moving it aside and making a new key");
                    std::fs::rename(path, &aside).map_err(|e| io("move aside", e))?;
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("read", e)),
        }
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
            .map_err(|_| AttestError::Crypto("cannot generate an Ed25519 key".into()))?;
        let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
            .map_err(|e| AttestError::Crypto(format!("generated key unusable: {e}")))?;
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| io("create the directory of", e))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| io("create", e))?;
        f.write_all(pkcs8.as_ref()).map_err(|e| io("write", e))?;
        f.sync_all().map_err(|e| io("sync", e))?;
        tracing::info!(path = %path.display(), "made a new decider attestation key");
        Ok(Attestor { key, rng })
    }

    /// The raw 32-byte public key.
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    /// Signs a statement that `pid`/`uid` (in no agent session: the caller checks that)
    /// decides `request_id` as `approve`, valid for [`LIFETIME_MS`] from `now_ms`.
    /// Returns (statement bytes, signature).
    pub fn attest(
        &self,
        host: &str,
        request_id: u64,
        approve: bool,
        pid: u32,
        uid: u32,
        now_ms: i64,
    ) -> Result<(Vec<u8>, Vec<u8>), AttestError> {
        let mut nonce = [0u8; 16];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| AttestError::Crypto("no random bytes for a nonce".into()))?;
        let st = Statement {
            v: 1,
            host: host.to_owned(),
            request_id,
            approve,
            session: 0,
            pid,
            uid,
            nonce: hex(&nonce),
            issued_unix_ms: now_ms,
            expires_unix_ms: now_ms.saturating_add(LIFETIME_MS),
        };
        let bytes = serde_json::to_vec(&st).map_err(|e| AttestError::Invalid(e.to_string()))?;
        let sig = self.key.sign(&signed_message(&bytes));
        Ok((bytes, sig.as_ref().to_vec()))
    }
}

/// The host name attestations state: the CN of the host's client certificate (`cert`, PEM)
/// when it has one, since the service knows the host by that name, else `fallback`.
pub fn host_name_for(cert: Option<&Path>, fallback: String) -> String {
    let Some(path) = cert else { return fallback };
    let cn = std::fs::read(path).ok().and_then(|pem| {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
        super::tls::cert_identity(&pem.contents)
            .ok()
            .map(|(cn, _)| cn)
    });
    match cn {
        Some(cn) => cn,
        None => {
            tracing::warn!(cert = %path.display(), "cannot read the CN of the host certificate; attestations name this host {fallback:?}");
            fallback
        }
    }
}

fn signed_message(statement: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(CONTEXT.len() + statement.len());
    m.extend_from_slice(CONTEXT);
    m.extend_from_slice(statement);
    m
}

/// Checks `signature` over `statement` with `public_key`, then parses the statement and
/// checks what does not depend on the request: version, session 0, and validity at `now`.
/// The caller checks host, request id, decision and nonce.
pub fn verify(
    public_key: &[u8],
    statement: &[u8],
    signature: &[u8],
    now_ms: i64,
) -> Result<Statement, AttestError> {
    if statement.len() > MAX_STATEMENT {
        return Err(AttestError::Invalid(format!(
            "the attestation is longer than {MAX_STATEMENT} bytes"
        )));
    }
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&signed_message(statement), signature)
        .map_err(|_| {
            AttestError::Invalid(
                "the attestation's signature does not verify with the key of the host it names"
                    .into(),
            )
        })?;
    let st: Statement = serde_json::from_slice(statement)
        .map_err(|e| AttestError::Invalid(format!("the attestation is not a statement: {e}")))?;
    if st.v != 1 {
        return Err(AttestError::Invalid(format!(
            "attestation version {} is not supported",
            st.v
        )));
    }
    if st.session != 0 {
        return Err(AttestError::Invalid(format!(
            "the attestation says the decider is in agent session {}",
            st.session
        )));
    }
    if st.expires_unix_ms <= now_ms {
        return Err(AttestError::Invalid(
            "the attestation has expired (they are valid for 60 s; check the clocks of host and service)"
                .into(),
        ));
    }
    if st.expires_unix_ms - now_ms > MAX_AHEAD_MS {
        return Err(AttestError::Invalid(
            "the attestation is valid too far into the future (the host's clock is ahead of the service's)"
                .into(),
        ));
    }
    Ok(st)
}

/// The host a statement names, without checking anything: to find the key to verify with.
pub fn claimed_host(statement: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct HostOnly {
        host: String,
    }
    if statement.len() > MAX_STATEMENT {
        return None;
    }
    serde_json::from_slice::<HostOnly>(statement)
        .ok()
        .map(|h| h.host)
}

/// Nonces of accepted statements until they expire: a statement is accepted once.
#[derive(Debug, Default)]
pub struct NonceCache {
    seen: HashMap<(String, String), i64>,
}

impl NonceCache {
    /// Records `st`'s nonce; false when it was seen before (a replay).
    pub fn first_use(&mut self, st: &Statement, now_ms: i64) -> bool {
        self.seen.retain(|_, expires| *expires > now_ms);
        self.seen
            .insert((st.host.clone(), st.nonce.clone()), st.expires_unix_ms)
            .is_none()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_tamper() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let a = Attestor::load_or_create(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // The same key comes back after a restart.
        let again = Attestor::load_or_create(&path).unwrap();
        assert_eq!(a.public_key(), again.public_key());
        assert_eq!(a.public_key().len(), PUBLIC_KEY_LEN);

        let now = 1_800_000_000_000;
        let (st, sig) = a.attest("web-1", 7, true, 100, 0, now).unwrap();
        let ok = verify(a.public_key(), &st, &sig, now + 1000).unwrap();
        assert_eq!(
            (ok.host.as_str(), ok.request_id, ok.approve),
            ("web-1", 7, true)
        );
        assert_eq!(claimed_host(&st).as_deref(), Some("web-1"));
        // Expired, or from another key, or changed: refused.
        assert!(verify(a.public_key(), &st, &sig, now + LIFETIME_MS).is_err());
        let dir2 = tempfile::tempdir().unwrap();
        let other = Attestor::load_or_create(&dir2.path().join(KEY_FILE)).unwrap();
        assert!(verify(other.public_key(), &st, &sig, now).is_err());
        let forged = String::from_utf8(st.clone())
            .unwrap()
            .replace("\"request_id\":7", "\"request_id\":8");
        assert!(verify(a.public_key(), forged.as_bytes(), &sig, now).is_err());
        // A statement claiming a session, even if signed, is refused.
        let mut bad: Statement = serde_json::from_slice(&st).unwrap();
        bad.session = 3;
        let bytes = serde_json::to_vec(&bad).unwrap();
        let sig3 = a.key.sign(&signed_message(&bytes));
        assert!(verify(a.public_key(), &bytes, sig3.as_ref(), now).is_err());

        // A nonce is accepted once.
        let mut cache = NonceCache::default();
        assert!(cache.first_use(&ok, now));
        assert!(!cache.first_use(&ok, now + 1));
        // Forgotten once expired.
        assert!(cache.first_use(&ok, ok.expires_unix_ms + 1));
    }

    #[test]
    fn a_damaged_key_file_is_moved_aside() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        std::fs::write(&path, b"garbage").unwrap();
        let a = Attestor::load_or_create(&path).unwrap();
        assert_eq!(a.public_key().len(), PUBLIC_KEY_LEN);
        let aside: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(Result::ok)
            .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
            .collect();
        assert_eq!(aside.len(), 1);
    }
}
