//! What the commands that talk to the approval service (`approvals`, `grants`) share: the
//! connection options and the checks and explanations around a call.
use std::path::PathBuf;

use anyhow::bail;
use clap::Args;

use super::render::term;
use crate::approver::client::ClientConfig;

/// Longest `--note`, in bytes (the service's limit).
pub const MAX_NOTE: usize = 4096;

/// The approval service connection options, shared by `approvals` and `grants`.
#[derive(Debug, Clone, Default, Args)]
pub struct ApproverArgs {
    /// Approval service: unix:/path, https://host:port, or http://127.0.0.1:port
    /// (default: from the daemon configuration's [approval] section).
    #[arg(
        long,
        env = "CONFGATE_APPROVER",
        global = true,
        value_name = "ENDPOINT"
    )]
    pub approver: Option<String>,
    /// PEM CA certificate of the service (https).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate (https); needs --key.
    #[arg(long, global = true, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, global = true, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Approver bearer token.
    #[arg(
        long,
        env = "CONFGATE_APPROVER_TOKEN",
        global = true,
        hide_env_values = true,
        value_name = "TOKEN"
    )]
    pub token: Option<String>,
    /// Allow a plaintext http:// endpoint (loopback only).
    #[arg(long, global = true)]
    pub allow_plaintext: bool,
}

impl ApproverArgs {
    /// The client settings: `base` (from the daemon configuration) with the flags applied.
    /// `--approver` replaces the endpoint and drops the configuration's TLS material and
    /// token, so settings meant for one service never go to another.
    pub fn client_config(&self, base: ClientConfig) -> ClientConfig {
        let mut c = match &self.approver {
            Some(endpoint) => ClientConfig {
                endpoint: endpoint.clone(),
                ..ClientConfig::default()
            },
            None => base,
        };
        let absolute = |p: &PathBuf| {
            if p.is_absolute() {
                p.clone()
            } else {
                std::env::current_dir().map_or_else(|_| p.clone(), |d| d.join(p))
            }
        };
        if let Some(p) = &self.ca {
            c.ca = Some(absolute(p));
        }
        if let Some(p) = &self.cert {
            c.cert = Some(absolute(p));
        }
        if let Some(p) = &self.key {
            c.key = Some(absolute(p));
        }
        if let Some(t) = &self.token {
            c.token = Some(t.clone());
        }
        c.allow_plaintext |= self.allow_plaintext;
        c
    }
}

/// A `--note`: at most [`MAX_NOTE`] bytes, no control characters (the service refuses
/// them too; this says so before anything is sent).
pub fn check_note(note: &str) -> anyhow::Result<()> {
    if note.len() > MAX_NOTE {
        bail!("--note is longer than {MAX_NOTE} bytes");
    }
    if note.chars().any(char::is_control) {
        bail!("--note contains control characters (newlines, tabs, escapes)");
    }
    Ok(())
}

/// A one-line explanation of a failed call to the approval service.
pub fn explain(status: &tonic::Status) -> String {
    use std::error::Error as _;
    use tonic::Code;
    let msg = term(status.message());
    match status.code() {
        Code::NotFound => format!("not found: {msg}"),
        Code::FailedPrecondition => format!("not possible now: {msg}"),
        Code::PermissionDenied => format!("refused by the approval service: {msg}"),
        Code::Unauthenticated => format!(
            "the approval service did not accept this identity: {msg} (use --token, or --cert and \
             --key)"
        ),
        Code::InvalidArgument => format!("invalid request: {msg}"),
        Code::Unavailable => {
            let why = causes(status);
            let hint = if why.contains("alert") {
                " (the service may have refused this TLS client certificate: is it signed by \
                 the CA the service trusts for clients, tls.client_ca?)"
            } else {
                ""
            };
            format!("the approval service is unavailable: {msg}{why}{hint}")
        }
        Code::Unknown | Code::Cancelled if status.source().is_some() => {
            let why = causes(status);
            let hint = if why.contains("alert") || why.contains("certificate") {
                " (the service refused this TLS client certificate: is it signed by the CA \
                 the service trusts for clients, tls.client_ca?)"
            } else {
                " (the service closed the connection; a client certificate it does not accept, \
                 e.g. one signed by another CA than its tls.client_ca, ends like this, and the \
                 service logs \"TLS handshake refused\" with the reason)"
            };
            format!("the connection to the approval service failed: {msg}{why}{hint}")
        }
        code => format!("the approval service answered {code:?}: {msg}"),
    }
}

/// The chain of causes behind a status (`: cause: cause`), terminal-safe; empty without.
fn causes(status: &tonic::Status) -> String {
    let mut out = String::new();
    let mut next = std::error::Error::source(status);
    while let Some(e) = next {
        let text = e.to_string();
        if text != status.message() && !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&term(&text));
        }
        next = e.source();
    }
    out
}
