//! TLS of the service: the server configuration from `[tls]`, and the identity in a
//! verified client certificate (CN = name, OU = `host` or `approver`).
use std::path::Path;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ApproverError;
use super::config::TlsSection;

/// Role a client certificate states in its OU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    Host,
    Approver,
}

/// Server TLS from `[tls]`: our certificate and key, client certificates checked against
/// `client_ca` but optional (token approvers may have none; host calls require one).
pub fn server_tls(tls: &TlsSection) -> Result<ServerTlsConfig, ApproverError> {
    let need = |field: &'static str, v: &Option<std::path::PathBuf>| {
        v.clone()
            .ok_or_else(|| ApproverError::Config(format!("tls.{field} is not set")))
    };
    let cert = read(&need("cert", &tls.cert)?)?;
    let key = read(&need("key", &tls.key)?)?;
    let ca = read(&need("client_ca", &tls.client_ca)?)?;
    Ok(ServerTlsConfig::new()
        .identity(Identity::from_pem(cert, key))
        .client_ca_root(Certificate::from_pem(ca))
        .client_auth_optional(true))
}

fn read(path: &Path) -> Result<Vec<u8>, ApproverError> {
    std::fs::read(path).map_err(|source| ApproverError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

/// Longest CN accepted as a name.
const MAX_CN: usize = 253;

/// The (CN, role) of a DER client certificate the TLS layer already verified.
pub fn cert_identity(der: &[u8]) -> Result<(String, CertRole), String> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|e| format!("unreadable client certificate: {e}"))?;
    let subject = cert.subject();
    let one = |what: &str, mut it: Box<dyn Iterator<Item = String> + '_>| {
        let first = it
            .next()
            .ok_or_else(|| format!("the client certificate has no {what}"))?;
        if it.next().is_some() {
            return Err(format!("the client certificate has more than one {what}"));
        }
        Ok(first)
    };
    let text = |a: &x509_parser::x509::AttributeTypeAndValue<'_>| {
        a.as_str().map(str::to_owned).unwrap_or_default()
    };
    let cn = one("CN", Box::new(subject.iter_common_name().map(text)))?;
    let ou = one(
        "OU (host or approver)",
        Box::new(subject.iter_organizational_unit().map(text)),
    )?;
    if cn.is_empty()
        || cn.len() > MAX_CN
        || !cn
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
    {
        return Err(format!(
            "client certificate CN {cn:?} is not a name (letters, digits, `.`, `_`, `-`, `@`)"
        ));
    }
    let role = match ou.as_str() {
        "host" => CertRole::Host,
        "approver" => CertRole::Approver,
        other => {
            return Err(format!(
                "client certificate OU {other:?} is neither \"host\" nor \"approver\""
            ));
        }
    };
    Ok((cn, role))
}
