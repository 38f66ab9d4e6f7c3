//! Client transport of the approval service: [`connect`] with a [`ClientConfig`] (the
//! `[approval.client]` settings, declared in [`crate::config::client`]), used by the
//! daemon's uplink and by the approvals CLI.
//!
//! Endpoint forms (see [`Address`]):
//! - `unix:/path`: plaintext over a Unix socket; the service identifies the caller by its
//!   peer credentials.
//! - `https://host:port`: TLS. The server certificate is checked against `ca` (required);
//!   `cert` + `key` present this side's client certificate (hosts need one; approvers may
//!   use a `token` instead).
//! - `http://127.0.0.1:port` / `http://[::1]:port`: plaintext TCP, only on loopback and
//!   only with `allow_plaintext = true`.
//!
//! A `token` is sent as `authorization: Bearer <token>` on every call ([`BearerAuth`]).
use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Request, Status};

use super::addr::{Address, AddressError};
use crate::api::client::{DialError, unix_channel};
use crate::config::client::check_token;
pub use crate::config::client::{ClientConfig, DEFAULT_ENDPOINT, MAX_TOKEN};
use confgate_proto::v1::approver_client::ApproverClient;

/// Errors of [`connect`] and [`ClientConfig::check`].
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The configuration is not usable; `field` names the key (`endpoint`, `cert`, ...).
    #[error("approval client {field}: {message}")]
    Config {
        field: &'static str,
        message: String,
    },
    /// A CA, certificate or key file could not be read.
    #[error("cannot read {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The first connection to the service failed.
    #[error("cannot connect to the approval service at {endpoint}: {message}")]
    Connect { endpoint: String, message: String },
}

/// The check [`connect`] runs first (the configuration itself, with
/// [`ClientConfig::problems`], lives with the rest of the daemon's configuration in
/// [`crate::config::client`]).
impl ClientConfig {
    /// The first of [`ClientConfig::problems`], as an error.
    pub fn check(&self) -> Result<Address, ClientError> {
        if let Some((field, message)) = self.problems().into_iter().next() {
            return Err(ClientError::Config { field, message });
        }
        Address::parse(&self.endpoint).map_err(|AddressError(message)| ClientError::Config {
            field: "endpoint",
            message,
        })
    }
}

/// Adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone, Debug, Default)]
pub struct BearerAuth {
    header: Option<MetadataValue<Ascii>>,
}

impl BearerAuth {
    /// An interceptor sending `token` (none: calls go out unchanged).
    pub fn new(token: Option<&str>) -> Result<BearerAuth, ClientError> {
        let header = match token {
            None => None,
            Some(t) => {
                check_token(t).map_err(|message| ClientError::Config {
                    field: "token",
                    message,
                })?;
                let mut v: MetadataValue<Ascii> =
                    format!("Bearer {t}")
                        .parse()
                        .map_err(|_| ClientError::Config {
                            field: "token",
                            message: "not a valid header value".to_owned(),
                        })?;
                v.set_sensitive(true);
                Some(v)
            }
        };
        Ok(BearerAuth { header })
    }
}

impl tonic::service::Interceptor for BearerAuth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(h) = &self.header {
            req.metadata_mut().insert("authorization", h.clone());
        }
        Ok(req)
    }
}

/// The channel type of an approval-service client.
pub type ApproverChannel = InterceptedService<Channel, BearerAuth>;

/// Connects to the approval service described by `cfg`.
///
/// Validates `cfg` first ([`ClientError::Config`]), reads the TLS files
/// ([`ClientError::Read`]) and makes the first connection here, so an unreachable service
/// is reported now ([`ClientError::Connect`]); later reconnects happen inside the channel.
pub async fn connect(cfg: &ClientConfig) -> Result<ApproverClient<ApproverChannel>, ClientError> {
    Ok(ApproverClient::new(channel(cfg).await?))
}

/// The channel [`connect`] makes (for other services on the same endpoint: reflection).
pub async fn channel(cfg: &ClientConfig) -> Result<ApproverChannel, ClientError> {
    let addr = cfg.check()?;
    let auth = BearerAuth::new(cfg.token.as_deref())?;
    let connect_err = |message: String| ClientError::Connect {
        endpoint: cfg.endpoint.clone(),
        message,
    };
    let channel = match &addr {
        Address::Unix(path) => unix_channel(path).await.map_err(|e| match e {
            DialError::Connect(io) => connect_err(io.to_string()),
            DialError::Transport(t) => connect_err(transport_message(&t)),
        })?,
        Address::Tls { host, .. } => {
            let uri = addr.uri().unwrap_or_default();
            let mut tls = ClientTlsConfig::new().domain_name(host.clone());
            if let Some(ca) = &cfg.ca {
                tls = tls.ca_certificate(Certificate::from_pem(read("CA certificate", ca)?));
            }
            if let (Some(cert), Some(key)) = (&cfg.cert, &cfg.key) {
                tls = tls.identity(Identity::from_pem(
                    read("certificate", cert)?,
                    read("key", key)?,
                ));
            }
            Endpoint::from_shared(uri)
                .and_then(|e| e.tls_config(tls))
                .map_err(|e| ClientError::Config {
                    field: "endpoint",
                    message: transport_message(&e),
                })?
                .connect()
                .await
                .map_err(|e| connect_err(transport_message(&e)))?
        }
        Address::Plain(_) => Endpoint::from_shared(addr.uri().unwrap_or_default())
            .map_err(|e| ClientError::Config {
                field: "endpoint",
                message: transport_message(&e),
            })?
            .connect()
            .await
            .map_err(|e| connect_err(transport_message(&e)))?,
    };
    Ok(InterceptedService::new(channel, auth))
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, ClientError> {
    std::fs::read(path).map_err(|source| ClientError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// A transport error with its causes (tonic's own `Display` is only "transport error").
pub(crate) fn transport_message(e: &tonic::transport::Error) -> String {
    let mut msg = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        source = s.source();
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(endpoint: &str) -> ClientConfig {
        ClientConfig {
            endpoint: endpoint.to_owned(),
            ..ClientConfig::default()
        }
    }

    fn fields(c: &ClientConfig) -> Vec<&'static str> {
        c.problems().into_iter().map(|(f, _)| f).collect()
    }

    #[test]
    fn defaults_are_valid() {
        assert!(ClientConfig::default().problems().is_empty());
        assert_eq!(
            ClientConfig::default().check().unwrap(),
            Address::Unix("/run/confgate/approver.sock".into())
        );
    }

    #[test]
    fn plaintext_needs_the_flag_and_loopback() {
        let mut c = cfg("http://127.0.0.1:7080");
        assert_eq!(fields(&c), ["endpoint"]);
        assert!(c.problems()[0].1.contains("allow_plaintext = true"));
        // Command-line users are told about the flag (issue 21).
        assert!(c.problems()[0].1.contains("--allow-plaintext"));
        c.allow_plaintext = true;
        assert!(c.problems().is_empty());
        c.endpoint = "http://192.168.1.1:7080".into();
        let p = c.problems();
        assert_eq!(p.len(), 1);
        assert!(p[0].1.contains("loopback"), "{}", p[0].1);
    }

    #[test]
    fn https_needs_a_ca_and_paired_cert_key() {
        let mut c = cfg("https://approver:7443");
        assert_eq!(fields(&c), ["ca"]);
        c.ca = Some("/etc/confgate/ca.pem".into());
        c.cert = Some("/etc/confgate/host.pem".into());
        assert_eq!(fields(&c), ["key"]);
        c.key = Some("host.key".into());
        assert_eq!(fields(&c), ["key"]);
        c.key = Some("/etc/confgate/host.key".into());
        assert!(c.problems().is_empty());
        c.endpoint = "unix:/run/a.sock".into();
        assert_eq!(fields(&c), ["ca", "cert", "key"]);
    }

    #[test]
    fn tokens_must_be_header_safe() {
        let mut c = cfg("unix:/run/a.sock");
        for bad in ["", "a b", "new\nline", "é"] {
            c.token = Some(bad.into());
            assert_eq!(fields(&c), ["token"], "{bad:?}");
            assert!(BearerAuth::new(Some(bad)).is_err());
        }
        c.token = Some("x".repeat(MAX_TOKEN + 1));
        assert_eq!(fields(&c), ["token"]);
        c.token = Some("s3cr3t-Token_1".into());
        assert!(c.problems().is_empty());
    }

    #[test]
    fn bearer_header_is_added_only_with_a_token() {
        use tonic::service::Interceptor;
        let mut none = BearerAuth::new(None).unwrap();
        let req = none.call(Request::new(())).unwrap();
        assert!(req.metadata().get("authorization").is_none());
        let mut some = BearerAuth::new(Some("abc")).unwrap();
        let req = some.call(Request::new(())).unwrap();
        assert_eq!(req.metadata().get("authorization").unwrap(), "Bearer abc");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        assert!(
            toml::from_str::<ClientConfig>("endpoint = \"unix:/a\"\nca_file = \"/x\"\n").is_err()
        );
        let c: ClientConfig = toml::from_str("token = \"t\"\n").unwrap();
        assert_eq!(c.endpoint, DEFAULT_ENDPOINT);
    }

    #[tokio::test]
    async fn connect_reports_what_failed() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("none.sock");
        match connect(&cfg(&format!("unix:{}", sock.display()))).await {
            Err(e @ ClientError::Connect { .. }) => {
                assert!(e.to_string().contains("none.sock"), "{e}")
            }
            other => panic!("{:?}", other.err()),
        }
        let mut c = cfg("https://127.0.0.1:1");
        c.ca = Some(dir.path().join("missing-ca.pem"));
        match connect(&c).await {
            Err(ClientError::Read { what, .. }) => assert_eq!(what, "CA certificate"),
            other => panic!("{:?}", other.err()),
        }
        match connect(&cfg("http://10.1.1.1:80")).await {
            Err(ClientError::Config { field, .. }) => assert_eq!(field, "endpoint"),
            other => panic!("{:?}", other.err()),
        }
    }
}
