//! `[web]` of `approver.toml`: the web approval page (served on `[http] listen`).
//!
//! ```toml
//! [web]
//! link_key_file = "/var/lib/confgate/approver/web-link.key"  # default: beside the store
//! session_ttl_secs = 28800
//! [web.oidc]
//! issuer = "https://login.example.com/realms/ops"
//! client_id = "confgate"
//! client_secret_file = "/etc/confgate/oidc-client-secret"
//! scopes = ["openid", "profile", "email"]
//! username_claim = "sub"        # or "email" (then only with email_verified = true)
//! groups_claim = "groups"
//! approvers = ["alice", "group:sre"]
//! ```
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::toml_check::Checker;

/// `[web]`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct WebSection {
    /// HMAC key of signed action links (32+ bytes). Default `web-link.key` beside the
    /// store, created (0600) on first start.
    pub link_key_file: Option<PathBuf>,
    /// How long a sign-in lasts, in seconds. Default 8 hours.
    pub session_ttl_secs: u64,
    /// Sign-in with OpenID Connect; without it only action links open pages.
    pub oidc: Option<OidcSection>,
}

impl Default for WebSection {
    fn default() -> Self {
        WebSection {
            link_key_file: None,
            session_ttl_secs: 8 * 3600,
            oidc: None,
        }
    }
}

/// `[web.oidc]`: authorization code flow with PKCE against `issuer`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct OidcSection {
    /// The issuer URL (its `/.well-known/openid-configuration` is read). `http://` only on
    /// a loopback address.
    pub issuer: String,
    pub client_id: String,
    /// File holding the client secret (never the secret itself in this file).
    pub client_secret_file: Option<PathBuf>,
    /// PEM CA certificates that sign the issuer's TLS certificate. Default the system's.
    pub ca_file: Option<PathBuf>,
    pub scopes: Vec<String>,
    /// Claim of the ID token that names the approver (`oidc:<value>`). Default `sub`, the
    /// provider's stable, unique subject; `email` is accepted only with `email_verified`
    /// true. Not `preferred_username`: providers let people choose it, so it names nobody
    /// for sure. Map the identity to its person with `[[person]]` for rules' quorums.
    pub username_claim: String,
    /// Claim of the ID token that lists the approver's groups.
    pub groups_claim: String,
    /// Who may approve: user names (the username claim) and `group:<name>`.
    pub approvers: Vec<String>,
}

impl Default for OidcSection {
    fn default() -> Self {
        OidcSection {
            issuer: String::new(),
            client_id: String::new(),
            client_secret_file: None,
            ca_file: None,
            scopes: vec!["openid".into(), "profile".into(), "email".into()],
            username_claim: "sub".into(),
            groups_claim: "groups".into(),
            approvers: Vec::new(),
        }
    }
}

impl OidcSection {
    /// Whether a person with `user` and `groups` may approve.
    pub fn permits(&self, user: &str, groups: &[String]) -> bool {
        self.approvers
            .iter()
            .any(|a| match a.strip_prefix("group:") {
                Some(g) => groups.iter().any(|x| x == g),
                None => a == user,
            })
    }
}

impl WebSection {
    /// Adds the problems of `[web]` to `c`.
    pub(crate) fn check(&self, c: &mut Checker) {
        if let Some(p) = &self.link_key_file {
            c.abs_path("web.link_key_file", p);
        }
        if !(60..=7 * 24 * 3600).contains(&self.session_ttl_secs) {
            c.fail(
                "web.session_ttl_secs",
                "must be between 60 and 604800 (7 days)",
            );
        }
        let Some(o) = &self.oidc else {
            return;
        };
        let issuer_ok =
            o.issuer.starts_with("https://") || super::httpc::is_loopback_http(&o.issuer);
        if !issuer_ok
            || o.issuer
                .chars()
                .any(|ch| ch.is_control() || ch.is_whitespace())
        {
            c.fail(
                "web.oidc.issuer",
                format!(
                    "{:?} is not an https:// URL (http:// only on a loopback address)",
                    o.issuer
                ),
            );
        }
        if o.client_id.is_empty() {
            c.fail("web.oidc.client_id", "is empty");
        }
        for (key, p) in [
            ("web.oidc.client_secret_file", &o.client_secret_file),
            ("web.oidc.ca_file", &o.ca_file),
        ] {
            if let Some(p) = p {
                c.abs_path(key, p);
            }
        }
        if !o.scopes.iter().any(|s| s == "openid") {
            c.fail("web.oidc.scopes", "must include \"openid\"");
        }
        if o.username_claim.is_empty() {
            c.fail("web.oidc.username_claim", "is empty");
        }
        if o.approvers.is_empty() {
            c.fail(
                "web.oidc.approvers",
                "name who may approve (user names and group:<name>); nobody is not a choice",
            );
        }
    }
}
