//! The sinks' HTTPS client: one POST per connection (notifications are rare and each one
//! should find a fresh connection), HTTP/1.1 over tokio-rustls, verified against the
//! system's CAs or a configured CA file, within a timeout.
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::{Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use super::SinkError;

/// Where Debian keeps the system's CA bundle.
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Largest response body read.
const MAX_RESPONSE: usize = 1 << 20;

/// A response: status and body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Response {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The start of the body, for error messages.
    pub fn excerpt(&self) -> String {
        String::from_utf8_lossy(&self.body)
            .chars()
            .take(200)
            .collect()
    }
}

/// A client with its trust anchors and timeout.
#[derive(Clone)]
pub struct HttpClient {
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpClient")
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl HttpClient {
    /// Trusting the CAs in `ca_file` (PEM), or the system's.
    pub fn new(ca_file: Option<&Path>, timeout: Duration) -> Result<HttpClient, String> {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CAS));
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let certs = CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        let mut roots = RootCertStore::empty();
        roots.add_parsable_certificates(certs);
        if roots.is_empty() {
            return Err(format!("{}: no usable CA certificate", path.display()));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(HttpClient {
            tls: TlsConnector::from(Arc::new(config)),
            timeout,
        })
    }

    /// POSTs `body` as `content_type` to `url` with `headers`.
    pub async fn post(
        &self,
        url: &str,
        headers: &[(&str, String)],
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Response, SinkError> {
        tokio::time::timeout(
            self.timeout,
            self.post_now(url, headers, content_type, body),
        )
        .await
        .map_err(|_| {
            SinkError::Http(format!(
                "no answer from {} within {:?}",
                redact(url),
                self.timeout
            ))
        })?
    }

    async fn post_now(
        &self,
        url: &str,
        headers: &[(&str, String)],
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Response, SinkError> {
        let err = |what: &str, e: &dyn std::fmt::Display| {
            SinkError::Http(format!("{what} {}: {e}", redact(url)))
        };
        let uri: Uri = url.parse().map_err(|e| err("bad URL", &e))?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(err("unsupported scheme in", &"use https")),
        };
        let host = uri
            .host()
            .ok_or_else(|| err("no host in", &"URL"))?
            .to_owned();
        let bare = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri
            .authority()
            .map_or_else(|| host.clone(), |a| a.as_str().to_owned());
        let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_owned();
        let mut req = Request::post(path)
            .header(hyper::header::HOST, authority)
            .header(hyper::header::CONTENT_TYPE, content_type)
            .header(hyper::header::USER_AGENT, "confgate-approver")
            .header(hyper::header::CONNECTION, "close");
        for (k, v) in headers {
            req = req.header(*k, v.as_str());
        }
        let req = req
            .body(Full::new(Bytes::from(body)))
            .map_err(|e| err("cannot build a request to", &e))?;
        let tcp = TcpStream::connect((bare.as_str(), port))
            .await
            .map_err(|e| err("cannot connect to", &e))?;
        if https {
            let name = ServerName::try_from(bare).map_err(|e| err("bad server name in", &e))?;
            let tls = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| err("TLS with", &e))?;
            exchange(TokioIo::new(tls), req).await
        } else {
            exchange(TokioIo::new(tcp), req).await
        }
        .map_err(|e| err("exchange with", &e))
    }
}

async fn exchange<I>(io: I, req: Request<Full<Bytes>>) -> Result<Response, String>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    let conn = tokio::spawn(conn);
    let resp = sender.send_request(req).await.map_err(|e| e.to_string());
    let out = match resp {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = Limited::new(resp.into_body(), MAX_RESPONSE)
                .collect()
                .await
                .map_err(|e| e.to_string())?
                .to_bytes()
                .to_vec();
            Ok(Response { status, body })
        }
        Err(e) => Err(e),
    };
    conn.abort();
    out
}

/// `url` without its query (webhook URLs carry credentials there: Teams' `sig=`).
pub fn redact(url: &str) -> &str {
    url.split_once('?').map_or(url, |(a, _)| a)
}
