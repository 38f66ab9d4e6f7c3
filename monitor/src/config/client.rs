//! How to reach the approval service: [`ClientConfig`], the `[approval.client]` section of
//! the daemon's configuration (and the settings of the approvals CLI), with its checks.
//! Connecting with it is [`crate::approver::client::connect`].
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::addr::{Address, AddressError};

/// Default endpoint: the socket of the service the daemon runs in local mode.
pub const DEFAULT_ENDPOINT: &str = "unix:/run/confgate/approver.sock";

/// Longest accepted bearer token, in bytes.
pub const MAX_TOKEN: usize = 4096;

/// How to reach the approval service. Every field has a default (a Unix socket at
/// [`DEFAULT_ENDPOINT`], no TLS material, no token, no plaintext TCP).
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(from = "ClientToml", into = "ClientToml")]
pub struct ClientConfig {
    /// `unix:/path`, `https://host:port` or `http://127.0.0.1:port`: the first of the
    /// configured endpoints.
    pub endpoint: String,
    /// The other endpoints (`endpoint = ["https://a:7443", "https://b:7443"]`): replicas of
    /// the same service, tried in turn when the current one fails (see `uplink`).
    pub more_endpoints: Vec<String>,
    /// PEM CA certificate that signed the service's certificate (https only; required there).
    pub ca: Option<PathBuf>,
    /// PEM client certificate (https only); needs `key`.
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    pub key: Option<PathBuf>,
    /// Bearer token of an approver (sent as `authorization: Bearer <token>`).
    pub token: Option<String>,
    /// Allow `http://` on a loopback address. Default false.
    pub allow_plaintext: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            endpoint: DEFAULT_ENDPOINT.to_owned(),
            more_endpoints: Vec::new(),
            ca: None,
            cert: None,
            key: None,
            token: None,
            allow_plaintext: false,
        }
    }
}

/// `endpoint` as written: one string or a list.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

/// [`ClientConfig`] as written in TOML.
#[derive(Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
struct ClientToml {
    endpoint: OneOrMany,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    token: Option<String>,
    allow_plaintext: bool,
}

impl Default for ClientToml {
    fn default() -> Self {
        ClientConfig::default().into()
    }
}

impl From<ClientToml> for ClientConfig {
    fn from(t: ClientToml) -> Self {
        let (endpoint, more_endpoints) = match t.endpoint {
            OneOrMany::One(e) => (e, Vec::new()),
            // An empty list leaves `endpoint` empty: `problems` says so.
            OneOrMany::Many(mut v) if !v.is_empty() => {
                let first = v.remove(0);
                (first, v)
            }
            OneOrMany::Many(_) => (String::new(), Vec::new()),
        };
        ClientConfig {
            endpoint,
            more_endpoints,
            ca: t.ca,
            cert: t.cert,
            key: t.key,
            token: t.token,
            allow_plaintext: t.allow_plaintext,
        }
    }
}

impl From<ClientConfig> for ClientToml {
    fn from(c: ClientConfig) -> Self {
        let endpoint = if c.more_endpoints.is_empty() {
            OneOrMany::One(c.endpoint)
        } else {
            OneOrMany::Many(
                std::iter::once(c.endpoint)
                    .chain(c.more_endpoints)
                    .collect(),
            )
        };
        ClientToml {
            endpoint,
            ca: c.ca,
            cert: c.cert,
            key: c.key,
            token: c.token,
            allow_plaintext: c.allow_plaintext,
        }
    }
}

impl ClientConfig {
    /// How many endpoints are configured (at least 1).
    pub fn endpoint_count(&self) -> usize {
        1 + self.more_endpoints.len()
    }

    /// This configuration with only its `i`th endpoint (modulo their number): what one
    /// connection attempt uses.
    pub fn nth_endpoint(&self, i: usize) -> ClientConfig {
        let i = i % self.endpoint_count();
        let endpoint = match i {
            0 => self.endpoint.clone(),
            _ => self.more_endpoints[i - 1].clone(),
        };
        ClientConfig {
            endpoint,
            more_endpoints: Vec::new(),
            ..self.clone()
        }
    }

    /// Every problem of this configuration as `(field, message)`, without touching files.
    /// An empty list means [`connect`] can try it (each endpoint is checked).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = self.problems_of_one();
        for (i, e) in self.more_endpoints.iter().enumerate() {
            if *e == self.endpoint || self.more_endpoints[..i].contains(e) {
                out.push(("endpoint", format!("{e} is listed twice")));
            }
            for p in self.nth_endpoint(i + 1).problems_of_one() {
                if !out.contains(&p) {
                    out.push(p);
                }
            }
        }
        out
    }

    fn problems_of_one(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let addr = match Address::parse(&self.endpoint) {
            Ok(a) => Some(a),
            Err(AddressError(m)) => {
                out.push(("endpoint", m));
                None
            }
        };
        match &addr {
            Some(a @ Address::Plain(_)) if !self.allow_plaintext => out.push((
                "endpoint",
                format!(
                    "{a} is plaintext TCP: pass --allow-plaintext (or set allow_plaintext = true \
                     in [approval.client]) to use it (loopback only), or use https:// or unix:/path"
                ),
            )),
            Some(Address::Tls { port: 0, .. }) => out.push(("endpoint", "port 0".to_owned())),
            Some(Address::Tls { .. }) if self.ca.is_none() => out.push((
                "ca",
                "an https endpoint needs the CA certificate (PEM) that signed the service's certificate".to_owned(),
            )),
            Some(Address::Tls { .. }) | None => {}
            Some(other) => {
                for (field, set) in [
                    ("ca", self.ca.is_some()),
                    ("cert", self.cert.is_some()),
                    ("key", self.key.is_some()),
                ] {
                    if set {
                        out.push((
                            field,
                            format!("applies only to https:// endpoints, not {other}"),
                        ));
                    }
                }
            }
        }
        if self.cert.is_some() != self.key.is_some() {
            let missing = if self.cert.is_some() { "key" } else { "cert" };
            out.push((
                missing,
                "cert and key go together: set both or neither".to_owned(),
            ));
        }
        for (field, p) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if let Some(p) = p
                && !p.is_absolute()
            {
                out.push((field, format!("{} is not an absolute path", p.display())));
            }
        }
        if let Some(t) = &self.token
            && let Err(m) = check_token(t)
        {
            out.push(("token", m));
        }
        out
    }
}

/// A bearer token fit for an `authorization` header.
pub(crate) fn check_token(t: &str) -> Result<(), String> {
    if t.is_empty() {
        Err("empty token (leave the key out instead)".to_owned())
    } else if t.len() > MAX_TOKEN {
        Err(format!("longer than {MAX_TOKEN} bytes"))
    } else if !t.bytes().all(|b| b.is_ascii_graphic()) {
        Err("a token is printable ASCII without spaces".to_owned())
    } else {
        Ok(())
    }
}
