//! Settings of the approval service (`/etc/confgate/approver.toml`).
//!
//! Every key has a default, so an empty file is a working service on the Unix socket
//! `/run/confgate/approver.sock` where root (and members of `admin_group`) approve.
//! Unknown keys are errors; validation errors name their field and position, as for the
//! daemon's configuration.
//!
//! ```toml
//! listen = ["unix:/run/confgate/approver.sock", "https://0.0.0.0:7443"]
//! store = "/var/lib/confgate/approver/approver.redb"
//! ledger = "/var/lib/confgate/approver/ledger.jsonl"
//! admin_group = "confgate"
//! max_ttl_secs = 604800
//! default_lifetime_secs = 600
//! [tls]
//! cert = "/etc/confgate/tls/server.pem"
//! key = "/etc/confgate/tls/server.key"
//! client_ca = "/etc/confgate/tls/ca.pem"
//! workstation_approvers = ["cert:alice"]   # decide without a host's attestation
//! [[token]]
//! name = "ops-oncall"
//! sha256 = "<hex SHA-256 of the token>"
//! ```
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::addr::Address;
use crate::config::toml_check::{Checker, ConfigError, parse_checked, read_text};

/// Where `confgate approver serve` looks when no `--config` is given.
pub const DEFAULT_SERVICE_CONFIG: &str = "/etc/confgate/approver.toml";

/// Longest grant lifetime the service ever accepts (also the proto's stated bound).
pub const MAX_TTL_LIMIT_SECS: u64 = 30 * 24 * 3600;

/// The whole `approver.toml`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Addresses to serve on: `unix:/path`, `https://IP:port` (needs `[tls]`), or
    /// `http://127.0.0.1:port` (needs `allow_plaintext`). Default the local Unix socket.
    pub listen: Vec<String>,
    /// Permission bits of Unix sockets. Default `0o666`: every call is authorized from the
    /// caller's credentials, the mode is only a second fence.
    pub socket_mode: u32,
    /// Allow `http://` listeners (loopback only; callers can then only use tokens).
    pub allow_plaintext: bool,
    /// Certificate, key and client CA of `https://` listeners.
    pub tls: TlsSection,
    /// The service's store (requests, decisions, grants, per-host update log).
    pub store: PathBuf,
    /// The service's hash-chained ledger.
    pub ledger: PathBuf,
    /// Group whose members (besides root) approve over the Unix socket. Default none.
    pub admin_group: Option<String>,
    /// Longest grant an approver may give, in seconds. Default 7 days.
    pub max_ttl_secs: u64,
    /// Lifetime of a request whose host sent no deadline, in seconds. Default 600.
    pub default_lifetime_secs: u64,
    /// Bearer tokens of approvers: `[[token]]`.
    #[serde(rename = "token")]
    pub tokens: Vec<TokenEntry>,
    /// Approver credentials that decide without a host daemon's attestation, as
    /// `cert:<CN>` or `token:<name>`: for people's workstations only, never a host where
    /// agents run. Default none: every certificate and token decision needs an attestation.
    pub workstation_approvers: Vec<String>,
    /// Notification sinks (webhooks, Slack, Teams): `[notify]`, see
    /// [`super::outbox::config`].
    pub notify: super::outbox::config::NotifySection,
    /// The persons behind approver identities: `[[person]]`. A person counts once toward
    /// a rule's `approvals`, whichever channel they approve through, and is matched by
    /// their name in `approvers` and `four_eyes`.
    #[serde(rename = "person")]
    pub persons: Vec<PersonEntry>,
    /// `[http]`: the HTTP listener (web page, chat callbacks).
    pub http: super::http::config::HttpSection,
    /// `[web]`: the web approval page (OpenID Connect, action links).
    pub web: super::web::config::WebSection,
    /// `[metrics]`: the service's Prometheus endpoint (`listen = "127.0.0.1:9465"`); off
    /// by default. In local mode the daemon's own `[metrics]` covers the service.
    pub metrics: crate::prom::MetricsSection,
    /// `[nats]`: every ledger record (requests, decisions, grants, ...) also published to
    /// NATS JetStream on `confgate.approvals.<kind>` (off while `servers` is empty).
    #[serde(deserialize_with = "crate::nats::approvals_section")]
    pub nats: crate::nats::NatsConfig,
}

/// `[tls]`: PEM files of the TLS listeners.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TlsSection {
    /// Server certificate chain (its SANs must cover the names clients dial).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// CA that signs host (OU=host) and approver (OU=approver) client certificates.
    pub client_ca: Option<PathBuf>,
}

/// `[[token]]`: one approver token. Only its SHA-256 is stored.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct TokenEntry {
    /// Shown as `token:<name>` in decisions and the ledger.
    pub name: String,
    /// Lowercase or uppercase hex of the SHA-256 of the token (`sha256sum`).
    pub sha256: String,
    /// Groups of this approver, for rules' `approvers = ["group:<name>"]`. Default none.
    pub groups: Vec<String>,
}

/// `[[person]]`: one person and the approver identities that are them.
///
/// ```toml
/// [[person]]
/// name = "alice"                     # the Unix user name, if alice has one
/// identities = ["oidc:00u1a2b3", "slack:U012AB3CD", "token:alice-laptop"]
/// groups = ["sre"]
/// ```
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct PersonEntry {
    /// The person: what rules' `approvers` and `four_eyes` compare with (a session's
    /// user and login user are Unix names, so use the person's Unix name).
    pub name: String,
    /// Identities that are this person: `oidc:<claim>`, `slack:<user id>`,
    /// `token:<name>`, `cert:<CN>`, `unix:<user>`.
    pub identities: Vec<String>,
    /// Groups of this person, for rules' `approvers = ["group:<name>"]`.
    pub groups: Vec<String>,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            listen: vec!["unix:/run/confgate/approver.sock".to_owned()],
            socket_mode: 0o666,
            allow_plaintext: false,
            tls: TlsSection::default(),
            store: PathBuf::from("/var/lib/confgate/approver/approver.redb"),
            ledger: PathBuf::from("/var/lib/confgate/approver/ledger.jsonl"),
            admin_group: None,
            max_ttl_secs: 7 * 24 * 3600,
            default_lifetime_secs: 600,
            tokens: Vec::new(),
            workstation_approvers: Vec::new(),
            notify: Default::default(),
            persons: Vec::new(),
            http: Default::default(),
            web: Default::default(),
            metrics: Default::default(),
            nats: crate::nats::NatsConfig::approvals(),
        }
    }
}

impl ServiceConfig {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<ServiceConfig, ConfigError> {
        let text = read_text(path)?;
        ServiceConfig::parse(&text, path)
    }

    /// Like [`ServiceConfig::load`], but a missing file at the default path (not given
    /// explicitly) means the defaults.
    pub fn load_or_default(path: &Path, is_explicit: bool) -> Result<ServiceConfig, ConfigError> {
        match ServiceConfig::load(path) {
            Err(ConfigError::Io { cause, .. })
                if !is_explicit && cause.kind() == io::ErrorKind::NotFound =>
            {
                tracing::info!(path = %path.display(), "no approver configuration file, using the defaults");
                Ok(ServiceConfig::default())
            }
            other => other,
        }
    }

    /// The settings of the service a daemon runs in local mode: `file` (or the defaults),
    /// with a Unix listener on `socket` first (added unless the file already lists it).
    pub fn for_local(file: Option<&Path>, socket: &Path) -> Result<ServiceConfig, ConfigError> {
        let mut cfg = match file {
            Some(f) => ServiceConfig::load(f)?,
            None => ServiceConfig::default(),
        };
        let mine = format!("unix:{}", socket.display());
        let listed = cfg
            .listen
            .iter()
            .any(|l| Address::parse(l).ok() == Address::parse(&mine).ok());
        if file.is_none() {
            cfg.listen = vec![mine];
        } else if !listed {
            cfg.listen.insert(0, mine);
        }
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads, parses and validates the file at `path`, reporting every problem.
    pub fn load_all(path: &Path) -> Result<ServiceConfig, Vec<ConfigError>> {
        let text = read_text(path).map_err(|e| vec![e])?;
        parse_checked(&text, path, ServiceConfig::problems)
    }

    /// Parses and validates `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<ServiceConfig, ConfigError> {
        parse_checked(text, origin, ServiceConfig::problems).map_err(|mut e| e.swap_remove(0))
    }

    /// The PostgreSQL URL `store` names (`postgres://...`), if it names one.
    pub fn store_url(&self) -> Option<&str> {
        self.store.to_str().filter(|s| super::pg::is_url(s))
    }

    /// The redb file `store` names, unless it names a PostgreSQL database.
    pub fn store_file(&self) -> Option<&Path> {
        match self.store_url() {
            Some(_) => None,
            None => Some(&self.store),
        }
    }

    /// `store` for people: the path, or the URL without its password.
    pub fn store_display(&self) -> String {
        match self.store_url() {
            Some(url) => super::pg::redacted(url),
            None => self.store.display().to_string(),
        }
    }

    /// What a PostgreSQL store cannot be combined with (yet).
    fn check_postgres(&self, url: &str, c: &mut Checker) {
        if let Some(why) = super::pg::url_problem(url) {
            c.fail("store", why);
        }
        if !self.notify.routes().is_empty() {
            c.fail(
                "notify",
                "notifications are not available with a PostgreSQL store yet (their outbox is \
                 kept in the embedded store, written with each change): remove [notify] or \
                 use a redb store",
            );
        }
        if self.http.listen.is_some() && self.web.link_key_file.is_none() {
            c.fail(
                "web.link_key_file",
                "set it when the store is PostgreSQL (its default is beside a store file)",
            );
        }
    }

    /// The first validation problem.
    pub fn validate(&self) -> Result<(), ConfigError> {
        match self.problems().into_iter().next() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Every validation problem, with its field (`listen[1]`, `token[0].sha256`).
    pub fn problems(&self) -> Vec<ConfigError> {
        let mut c = Checker::default();
        for (field, message) in self.nats.problems("nats") {
            c.fail(&field, message);
        }
        if self.listen.is_empty() {
            c.fail("listen", "no address to serve on");
        }
        let mut seen = Vec::new();
        for (i, l) in self.listen.iter().enumerate() {
            let field = format!("listen[{i}]");
            let addr = match Address::parse(l) {
                Ok(a) => a,
                Err(e) => {
                    c.fail(&field, e.0);
                    continue;
                }
            };
            if seen.contains(&addr) {
                c.fail(&field, format!("{addr} is listed twice"));
            }
            match &addr {
                Address::Plain(_) if !self.allow_plaintext => c.fail(
                    &field,
                    format!(
                        "{addr} is plaintext: set allow_plaintext = true to serve it (loopback \
                         only; callers there can authenticate with tokens only)"
                    ),
                ),
                Address::Tls { host, .. } => {
                    if host.parse::<IpAddr>().is_err() {
                        c.fail(
                            &field,
                            format!("listen on an IP address (https://0.0.0.0:PORT), not {host:?}"),
                        );
                    }
                    for (key, v) in [
                        ("tls.cert", &self.tls.cert),
                        ("tls.key", &self.tls.key),
                        ("tls.client_ca", &self.tls.client_ca),
                    ] {
                        if v.is_none() {
                            c.fail(key, format!("needed by the https listener {addr}"));
                        }
                    }
                }
                _ => {}
            }
            seen.push(addr);
        }
        if self.socket_mode & !0o777 != 0 {
            c.fail(
                "socket_mode",
                format!("{:#o} has bits outside 0o777", self.socket_mode),
            );
        }
        for (key, v) in [
            ("tls.cert", &self.tls.cert),
            ("tls.key", &self.tls.key),
            ("tls.client_ca", &self.tls.client_ca),
        ] {
            if let Some(p) = v {
                c.abs_path(key, p);
            }
        }
        match self.store_url() {
            Some(url) => self.check_postgres(url, &mut c),
            None => {
                c.abs_path("store", &self.store);
            }
        }
        c.abs_path("ledger", &self.ledger);
        if let Some(group) = &self.admin_group
            && (group.is_empty()
                || group.contains([':', '\0'])
                || group.contains(char::is_whitespace))
        {
            c.fail("admin_group", format!("{group:?} is not a group name"));
        }
        if !(60..=MAX_TTL_LIMIT_SECS).contains(&self.max_ttl_secs) {
            c.fail(
                "max_ttl_secs",
                format!("must be between 60 and {MAX_TTL_LIMIT_SECS} (30 days)"),
            );
        }
        if !(1..=MAX_TTL_LIMIT_SECS).contains(&self.default_lifetime_secs) {
            c.fail(
                "default_lifetime_secs",
                format!("must be between 1 and {MAX_TTL_LIMIT_SECS}"),
            );
        }
        let mut names: Vec<&str> = Vec::new();
        let mut digests: Vec<[u8; 32]> = Vec::new();
        for (i, t) in self.tokens.iter().enumerate() {
            if !is_token_name(&t.name) {
                c.fail(
                    &format!("token[{i}].name"),
                    format!(
                        "{:?} is not a token name (1-64 letters, digits, `.`, `_`, `-`, `@`)",
                        t.name
                    ),
                );
            } else if names.contains(&t.name.as_str()) {
                c.fail(
                    &format!("token[{i}].name"),
                    format!("{:?} is used twice", t.name),
                );
            }
            names.push(&t.name);
            match parse_sha256(&t.sha256) {
                Some(d) if digests.contains(&d) => c.fail(
                    &format!("token[{i}].sha256"),
                    "the same token is configured twice",
                ),
                Some(d) => digests.push(d),
                None => c.fail(
                    &format!("token[{i}].sha256"),
                    "not 64 hex digits (the SHA-256 of the token, e.g. from `printf %s TOKEN | sha256sum`)",
                ),
            }
        }
        for (i, w) in self.workstation_approvers.iter().enumerate() {
            let field = format!("workstation_approvers[{i}]");
            match w.split_once(':') {
                Some(("cert", cn)) if !cn.is_empty() => {}
                Some(("token", name)) if names.contains(&name) => {}
                Some(("token", name)) => c.fail(&field, format!("no [[token]] is named {name:?}")),
                _ => c.fail(
                    &field,
                    format!("{w:?} is not `cert:<CN>` or `token:<name>`"),
                ),
            }
        }
        self.notify.check(&mut c);
        for (field, message) in self.metrics.problems() {
            c.fail(&format!("metrics.{field}"), message);
        }
        let mut claimed: Vec<&str> = Vec::new();
        for (i, p) in self.persons.iter().enumerate() {
            if p.name.is_empty() || p.name.contains(':') || p.name.chars().any(char::is_control) {
                c.fail(
                    &format!("person[{i}].name"),
                    format!("{:?} is not a person's name (non-empty, no `:`)", p.name),
                );
            }
            for (j, id) in p.identities.iter().enumerate() {
                let field = format!("person[{i}].identities[{j}]");
                match id.split_once(':') {
                    Some((kind, rest)) if !kind.is_empty() && !rest.is_empty() => {}
                    _ => c.fail(
                        &field,
                        format!("{id:?} is not `<kind>:<name>` (e.g. oidc:SUB)"),
                    ),
                }
                if claimed.contains(&id.as_str()) {
                    c.fail(&field, format!("{id:?} belongs to two persons"));
                }
                claimed.push(id);
            }
        }
        self.http.check(
            &mut c,
            self.allow_plaintext,
            self.tls.cert.is_some() && self.tls.key.is_some(),
        );
        self.web.check(&mut c);
        if self.web.oidc.is_some() && self.http.listen.is_none() {
            c.fail("web.oidc", "the web page needs [http] listen");
        }
        c.problems
    }

    /// The configured tokens as `(name, digest)`; entries that fail validation are left out.
    pub fn token_digests(&self) -> Vec<(String, [u8; 32])> {
        self.tokens
            .iter()
            .filter_map(|t| parse_sha256(&t.sha256).map(|d| (t.name.clone(), d)))
            .collect()
    }
}

fn is_token_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// 64 hex digits to 32 bytes.
pub(crate) fn parse_sha256(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char).to_digit(16)?;
        let lo = (pair[1] as char).to_digit(16)?;
        out[i] = u8::try_from(hi * 16 + lo).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ServiceConfig, ConfigError> {
        ServiceConfig::parse(text, Path::new("/etc/confgate/approver.toml"))
    }

    fn field(text: &str) -> String {
        match parse(text) {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    const DIGEST: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    #[test]
    fn defaults_are_valid_and_empty_file_is_defaults() {
        ServiceConfig::default().validate().unwrap();
        assert_eq!(parse("").unwrap(), ServiceConfig::default());
        let text = toml::to_string(&ServiceConfig::default()).unwrap();
        assert_eq!(parse(&text).unwrap(), ServiceConfig::default());
    }

    #[test]
    fn deploy_file_is_the_fleet_example_and_otherwise_the_defaults() {
        let text = include_str!("../../../deploy/approver.toml");
        let mut cfg = ServiceConfig::parse(text, Path::new("deploy/approver.toml")).unwrap();
        assert_eq!(
            cfg.listen,
            ["unix:/run/confgate/approver.sock", "https://0.0.0.0:7443"]
        );
        assert_eq!(
            cfg.tls.cert.as_deref(),
            Some(Path::new("/etc/confgate/tls/server.pem"))
        );
        assert!(cfg.tls.key.is_some() && cfg.tls.client_ca.is_some());
        let d = ServiceConfig::default();
        cfg.tls = d.tls.clone();
        cfg.listen = d.listen.clone();
        assert_eq!(cfg, d);
    }

    #[test]
    fn plaintext_on_a_non_loopback_address_is_refused() {
        let e = parse("listen = [\"http://0.0.0.0:7080\"]\nallow_plaintext = true\n").unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.starts_with("/etc/confgate/approver.toml:1:11: listen[0]:"),
            "{msg}"
        );
        assert!(msg.contains("only allowed on a loopback address"), "{msg}");
        // Loopback needs the explicit switch.
        let e = parse("listen = [\"http://127.0.0.1:7080\"]\n").unwrap_err();
        assert!(e.to_string().contains("allow_plaintext"), "{e}");
        parse("listen = [\"http://127.0.0.1:7080\"]\nallow_plaintext = true\n").unwrap();
    }

    #[test]
    fn https_needs_tls_files_and_an_ip() {
        assert_eq!(field("listen = [\"https://0.0.0.0:7443\"]\n"), "tls.cert");
        let tls = "[tls]\ncert = \"/t/s.pem\"\nkey = \"/t/s.key\"\nclient_ca = \"/t/ca.pem\"\n";
        parse(&format!("listen = [\"https://0.0.0.0:7443\"]\n{tls}")).unwrap();
        assert_eq!(
            field(&format!(
                "listen = [\"https://approver.example:7443\"]\n{tls}"
            )),
            "listen[0]"
        );
        assert_eq!(field("[tls]\ncert = \"rel.pem\"\n"), "tls.cert");
    }

    #[test]
    fn field_checks() {
        assert_eq!(field("listen = []\n"), "listen");
        assert_eq!(
            field("listen = [\"unix:/a.sock\", \"unix:///a.sock\"]\n"),
            "listen[1]"
        );
        assert_eq!(field("store = \"x.redb\"\n"), "store");
        assert_eq!(field("ledger = \"x\"\n"), "ledger");
        assert_eq!(field("socket_mode = 0o7777\n"), "socket_mode");
        assert_eq!(field("admin_group = \"a b\"\n"), "admin_group");
        assert_eq!(field("max_ttl_secs = 0\n"), "max_ttl_secs");
        assert_eq!(field("max_ttl_secs = 99999999\n"), "max_ttl_secs");
        assert_eq!(
            field("default_lifetime_secs = 0\n"),
            "default_lifetime_secs"
        );
        assert!(matches!(
            parse("listen_on = []\n"),
            Err(ConfigError::Parse { line: 1, .. })
        ));
    }

    #[test]
    fn a_postgres_store_and_what_it_cannot_be_combined_with() {
        let pg = "store = \"postgres://confgate:pw@db.example/confgate\"\n";
        let c = parse(pg).unwrap();
        assert_eq!(
            c.store_url(),
            Some("postgres://confgate:pw@db.example/confgate")
        );
        assert_eq!(c.store_file(), None);
        assert_eq!(
            c.store_display(),
            "postgres://confgate:***@db.example/confgate"
        );
        parse("store = \"postgresql:///confgate?host=/run/postgresql\"\n").unwrap();
        let redb = parse("").unwrap();
        assert_eq!(redb.store_file(), Some(redb.store.as_path()));
        assert_eq!(
            field("store = \"postgres://h/d?sslmode=require\"\n"),
            "store"
        );
        assert_eq!(field("store = \"postgres://h/d?bogus=1\"\n"), "store");
        assert_eq!(
            field(&format!(
                "{pg}[[notify.webhook]]\nname = \"siem\"\nurl = \"https://siem.example/hook\"\nsecret_file = \"/etc/k\"\n"
            )),
            "notify"
        );
        assert_eq!(
            field(&format!("{pg}[http]\nlisten = \"http://127.0.0.1:8080\"\n")),
            "web.link_key_file"
        );
    }

    #[test]
    fn tokens() {
        let c = parse(&format!(
            "[[token]]\nname = \"ops\"\nsha256 = \"{}\"\n",
            DIGEST.to_uppercase()
        ))
        .unwrap();
        let d = c.token_digests();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, "ops");
        assert_eq!(d[0].1[0], 0x9f);
        assert_eq!(d[0].1[31], 0x08);
        assert_eq!(
            field("[[token]]\nname = \"ops\"\nsha256 = \"abc\"\n"),
            "token[0].sha256"
        );
        assert_eq!(
            field(&format!(
                "[[token]]\nname = \"a b\"\nsha256 = \"{DIGEST}\"\n"
            )),
            "token[0].name"
        );
        assert_eq!(
            field(&format!(
                "[[token]]\nname = \"a\"\nsha256 = \"{DIGEST}\"\n[[token]]\nname = \"b\"\nsha256 = \"{DIGEST}\"\n"
            )),
            "token[1].sha256"
        );
        assert_eq!(parse_sha256(&"g".repeat(64)), None);
        // Workstation credentials name a certificate CN or a configured token.
        let tok = format!("[[token]]\nname = \"ops\"\nsha256 = \"{DIGEST}\"\n");
        parse(&format!(
            "workstation_approvers = [\"cert:alice\", \"token:ops\"]\n{tok}"
        ))
        .unwrap();
        assert_eq!(
            field(&format!("workstation_approvers = [\"token:nope\"]\n{tok}")),
            "workstation_approvers[0]"
        );
        assert_eq!(
            field("workstation_approvers = [\"alice\"]\n"),
            "workstation_approvers[0]"
        );
        assert_eq!(parse_sha256("é"), None);
    }

    #[test]
    fn local_mode_adds_the_daemon_socket() {
        let sock = Path::new("/run/confgate/approver.sock");
        let c = ServiceConfig::for_local(None, Path::new("/run/x/appr.sock")).unwrap();
        assert_eq!(c.listen, ["unix:/run/x/appr.sock"]);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("approver.toml");
        std::fs::write(
            &file,
            "listen = [\"unix:/run/confgate/approver.sock\"]\nmax_ttl_secs = 3600\n",
        )
        .unwrap();
        let c = ServiceConfig::for_local(Some(&file), sock).unwrap();
        assert_eq!(c.listen, ["unix:/run/confgate/approver.sock"]);
        assert_eq!(c.max_ttl_secs, 3600);
        let c = ServiceConfig::for_local(Some(&file), Path::new("/run/other.sock")).unwrap();
        assert_eq!(
            c.listen,
            ["unix:/run/other.sock", "unix:/run/confgate/approver.sock"]
        );
        assert!(ServiceConfig::for_local(Some(&dir.path().join("missing")), sock).is_err());
    }
}
