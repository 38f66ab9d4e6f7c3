//! TLS of the service: the server configuration from `[tls]`, the accept loop of its https
//! listeners (refused handshakes logged and counted), and the identity in a verified client
//! certificate (CN = name, OU = `host` or `approver`).
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::{
    self, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::ApproverError;
use super::config::TlsSection;

/// Role a client certificate states in its OU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CertRole {
    Host,
    Approver,
}

/// Longest a client may take for its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once per listener; more connections wait to be accepted.
const MAX_HANDSHAKES: usize = 256;

/// Server TLS from `[tls]`: our certificate and key, client certificates checked against
/// `client_ca` but optional (token approvers may have none; host calls require one).
pub fn acceptor(tls: &TlsSection) -> Result<TlsAcceptor, ApproverError> {
    let need = |field: &'static str, v: &Option<std::path::PathBuf>| {
        v.clone()
            .ok_or_else(|| ApproverError::Config(format!("tls.{field} is not set")))
    };
    let (cert_path, key_path, ca_path) = (
        need("cert", &tls.cert)?,
        need("key", &tls.key)?,
        need("client_ca", &tls.client_ca)?,
    );
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        ApproverError::Config(format!("{what} {}: {e}", path.display()))
    };
    let pem_certs = |path: &Path| -> Result<Vec<CertificateDer<'static>>, ApproverError> {
        let text = read(path)?;
        let certs = CertificateDer::pem_slice_iter(&text)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad("unreadable PEM certificate in", path, &e))?;
        if certs.is_empty() {
            return Err(bad("no certificate in", path, &"empty"));
        }
        Ok(certs)
    };
    let chain = pem_certs(&cert_path)?;
    let key = PrivateKeyDer::from_pem_slice(&read(&key_path)?)
        .map_err(|e| bad("unreadable PEM private key in", &key_path, &e))?;
    let mut roots = RootCertStore::empty();
    let (_, rejected) = roots.add_parsable_certificates(pem_certs(&ca_path)?);
    if roots.is_empty() {
        return Err(bad(
            "no usable CA certificate in",
            &ca_path,
            &format!("{rejected} rejected"),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| bad("client CA", &ca_path, &e))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ApproverError::Config(format!("TLS: {e}")))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)
        .map_err(|e| bad("certificate and key", &cert_path, &e))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The TLS connections of `listener`: each handshake in its own task, bounded by
/// [`HANDSHAKE_TIMEOUT`]; a refused one (a certificate from another CA, not TLS, too slow)
/// is logged with the peer's address and the reason, and `refused` is called. Ends when the
/// receiver is dropped.
pub fn incoming(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    refused: Arc<dyn Fn() + Send + Sync>,
) -> ReceiverStream<std::io::Result<TlsStream<TcpStream>>> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move {
        let slots = Arc::new(Semaphore::new(MAX_HANDSHAKES));
        loop {
            let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let (tcp, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and the like: say so, pause, go on.
                        tracing::warn!(error = %e, "approval service: accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = tx.closed() => return,
            };
            let (tx, acceptor, refused) = (tx.clone(), acceptor.clone(), Arc::clone(&refused));
            tokio::spawn(async move {
                let _slot = slot;
                let reason =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send(Ok(stream)).await;
                            return;
                        }
                        Ok(Err(e)) => e.to_string(),
                        Err(_) => format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs()),
                    };
                refused();
                tracing::warn!(peer = %peer, reason = %reason, "approval service: TLS handshake refused");
            });
        }
    });
    ReceiverStream::new(rx)
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
