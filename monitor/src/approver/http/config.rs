//! `[http]` of `approver.toml`: the service's HTTP listener (the web approval page, chat
//! callbacks, `GET /healthz`).
//!
//! ```toml
//! [http]
//! listen = "https://0.0.0.0:8443"           # TLS from [tls] cert/key (no client CA needed)
//! public_url = "https://approver.example:8443"  # how browsers and chat services reach it
//! ```
//!
//! The address rules are the gRPC listeners': `https://IP:port`, or `http://` on a loopback
//! IP only and only with `allow_plaintext = true`.
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::approver::addr::Address;
use crate::config::toml_check::Checker;

/// `[http]`. Without `listen` the service serves no HTTP.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct HttpSection {
    /// `https://IP:port` or (loopback, with `allow_plaintext`) `http://127.0.0.1:port`.
    pub listen: Option<String>,
    /// The URL people and chat services use to reach `listen` (behind a proxy, another
    /// name): links in notifications and the OpenID Connect redirect start with it.
    /// Default: `listen` itself.
    pub public_url: Option<String>,
}

impl HttpSection {
    /// The listen address, parsed; `None` without `[http] listen` or when it is invalid
    /// (validation reports that).
    pub fn address(&self) -> Option<Address> {
        self.listen.as_deref().and_then(|l| Address::parse(l).ok())
    }

    /// The base URL of links (no trailing `/`), when the listener is configured.
    pub fn base_url(&self) -> Option<String> {
        let url = self.public_url.as_ref().or(self.listen.as_ref())?;
        Some(url.trim_end_matches('/').to_owned())
    }

    /// Adds the problems of `[http]` to `c`; `allow_plaintext` and whether `[tls]` has a
    /// certificate and key come from the rest of the file.
    pub(crate) fn check(&self, c: &mut Checker, allow_plaintext: bool, has_cert_and_key: bool) {
        let Some(listen) = &self.listen else {
            if self.public_url.is_some() {
                c.fail("http.public_url", "set http.listen too (nothing to reach)");
            }
            return;
        };
        match Address::parse(listen) {
            Err(e) => c.fail("http.listen", e.0),
            Ok(Address::Unix(_)) => c.fail(
                "http.listen",
                "the HTTP listener is TCP: https://IP:port, or http://127.0.0.1:port",
            ),
            Ok(Address::Plain(a)) if !allow_plaintext => c.fail(
                "http.listen",
                format!(
                    "http://{a} is plaintext: set allow_plaintext = true to serve it (loopback \
                     only)"
                ),
            ),
            Ok(Address::Plain(_)) => {}
            Ok(Address::Tls { host, .. }) => {
                if host.parse::<IpAddr>().is_err() {
                    c.fail(
                        "http.listen",
                        format!("listen on an IP address (https://0.0.0.0:PORT), not {host:?}"),
                    );
                }
                if !has_cert_and_key {
                    c.fail("http.listen", "an https listener needs [tls] cert and key");
                }
            }
        }
        if let Some(url) = &self.public_url {
            let ok = (url.starts_with("https://") || url.starts_with("http://"))
                && url.len() <= 1024
                && !url.chars().any(|ch| ch.is_control() || ch.is_whitespace())
                && !url.contains(['?', '#']);
            if !ok {
                c.fail(
                    "http.public_url",
                    format!("{url:?} is not an http(s) URL without query or fragment"),
                );
            }
        }
    }
}
