//! What the commands that talk to the approval service (`approvals`, `grants`) share: the
//! connection options, the connection itself (and the local daemon's attestation a
//! decision carries), and the checks and explanations around a call.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, anyhow, bail};
use clap::Args;

use super::render::term;
use crate::approver::client::{ApproverChannel, ClientConfig, connect};
use confgate_proto::v1 as pb;
use confgate_proto::v1::approver_client::ApproverClient;

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

/// The runtime a command's calls run on (one thread: a command makes one call at a time).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// A client of the approval service `cfg` names.
pub async fn service(cfg: &ClientConfig) -> anyhow::Result<ApproverClient<ApproverChannel>> {
    connect(cfg).await.map_err(anyhow::Error::from)
}

/// Asks the daemon at `socket` to attest that this process decides request `id` (as
/// `approve`) from outside every agent session.
pub async fn attest(socket: &Path, id: u64, approve: bool) -> anyhow::Result<pb::AttestResponse> {
    let mut daemon = crate::api::client::connect(socket).await.map_err(|e| {
        anyhow!(
            "no confgate daemon answers on {} ({e}). A decision needs this host's daemon to \
             attest that it does not come from an agent session: run it on a host whose daemon \
             is running (--config or --socket name the daemon's socket), or, on a workstation \
             whose credential the approval service lists in workstation_approvers, pass \
             --no-daemon",
            socket.display()
        )
    })?;
    match daemon
        .attest(pb::AttestRequest {
            request_id: id,
            approve,
        })
        .await
    {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::PermissionDenied => bail!(
            "refusing to decide: {}; agents may not approve or deny requests. Decide from a \
             shell outside any agent session",
            term(s.message())
        ),
        Err(s) => bail!(
            "the local daemon did not attest this decision: {}",
            crate::api::client::explain(&s)
        ),
    }
}

/// The attestation a decision carries: the local daemon's, or none with `--no-daemon`.
pub async fn local_attestation(
    socket: &Path,
    id: u64,
    approve: bool,
    no_daemon: bool,
) -> anyhow::Result<Option<pb::AttestResponse>> {
    if no_daemon {
        tracing::info!(
            "--no-daemon: no attestation; the service accepts this only from a workstation credential"
        );
        return Ok(None);
    }
    attest(socket, id, approve).await.map(Some)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_flags_override_the_configuration() {
        let base = ClientConfig {
            endpoint: "https://appr.example:7443".into(),
            ca: Some("/etc/confgate/ca.pem".into()),
            token: Some("from-config".into()),
            ..ClientConfig::default()
        };
        let none = ApproverArgs::default();
        assert_eq!(none.client_config(base.clone()), base);
        let token = ApproverArgs {
            token: Some("t2".into()),
            ..ApproverArgs::default()
        };
        let c = token.client_config(base.clone());
        assert_eq!(c.token.as_deref(), Some("t2"));
        assert_eq!(c.ca, base.ca);
        let other = ApproverArgs {
            approver: Some("unix:/run/other.sock".into()),
            ..ApproverArgs::default()
        };
        let c = other.client_config(base);
        assert_eq!(c.endpoint, "unix:/run/other.sock");
        assert_eq!(
            (c.ca.clone(), c.token.clone()),
            (None, None),
            "config TLS/token not sent elsewhere"
        );
        assert!(c.problems().is_empty());
    }
}
