//! TLS of the HTTP listener: the service's `[tls]` certificate and key, no client
//! certificates (browsers and chat services sign in otherwise), HTTP/1.1 and h2.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{
    ServerConfig,
    crypto::ring::default_provider,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

use crate::approver::ApproverError;
use crate::approver::config::TlsSection;

/// Longest a client may take for its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The server TLS of `[tls]` cert and key.
pub fn acceptor(tls: &TlsSection) -> Result<TlsAcceptor, ApproverError> {
    let (Some(cert), Some(key)) = (&tls.cert, &tls.key) else {
        return Err(ApproverError::Config(
            "http.listen: an https listener needs [tls] cert and key".to_owned(),
        ));
    };
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        ApproverError::Config(format!("{what} {}: {e}", path.display()))
    };
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| ApproverError::Io {
            action: "read",
            path: path.to_owned(),
            source,
        })
    };
    let chain = CertificateDer::pem_slice_iter(&read(cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad("unreadable PEM certificate in", cert, &e))?;
    if chain.is_empty() {
        return Err(bad("no certificate in", cert, &"empty"));
    }
    let key_der = PrivateKeyDer::from_pem_slice(&read(key)?)
        .map_err(|e| bad("unreadable PEM private key in", key, &e))?;
    let mut config = ServerConfig::builder_with_provider(Arc::new(default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| ApproverError::Config(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| bad("certificate and key", cert, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
