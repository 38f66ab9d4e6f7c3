//! A small HTTP/1.1 client for the OpenID Connect exchanges (discovery, token, JWKS):
//! https with the system's or a configured CA, plain http only to a loopback address.
use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::{
    ClientConfig, RootCertStore,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
};

/// Longest response body read.
const MAX_BODY: usize = 1024 * 1024;
/// Longest one exchange may take.
const TIMEOUT: Duration = Duration::from_secs(10);
/// The system's CA bundle (Debian's ca-certificates).
const SYSTEM_CAS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Why an exchange failed.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct HttpError(pub String);

/// Whether `url` is `http://` to a loopback IP literal (or `localhost`).
pub fn is_loopback_http(url: &str) -> bool {
    match Url::parse(url) {
        Ok(u) => !u.tls && u.loopback(),
        Err(_) => false,
    }
}

/// The parts of an http(s) URL this client needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl Url {
    pub fn parse(url: &str) -> Result<Url, HttpError> {
        let bad = || HttpError(format!("{url:?} is not an http(s) URL"));
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') || authority.is_empty() {
            return Err(bad());
        }
        let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
            let (h, p) = v6.split_once(']').ok_or_else(bad)?;
            (h.to_owned(), p.strip_prefix(':'))
        } else {
            match authority.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), Some(p)),
                None => (authority.to_owned(), None),
            }
        };
        let port = match port {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tls => 443,
            None => 80,
        };
        Ok(Url {
            tls,
            host,
            port,
            path: path.split('#').next().unwrap_or("/").to_owned(),
        })
    }

    fn loopback(&self) -> bool {
        self.host == "localhost" || self.host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
    }
}

/// An HTTP client with its TLS roots.
#[derive(Clone)]
pub struct Client {
    tls: TlsConnector,
}

impl Client {
    /// A client trusting the PEM certificates in `ca_file`, or the system's.
    pub fn new(ca_file: Option<&Path>) -> Result<Client, HttpError> {
        let path = ca_file.unwrap_or(Path::new(SYSTEM_CAS));
        let pem = match std::fs::read(path) {
            Ok(pem) => pem,
            // Without the system's bundle, https providers fail at sign-in (and say so);
            // a loopback http provider still works.
            Err(e) if ca_file.is_none() => {
                tracing::warn!(path = %path.display(), error = %e, "no system CA bundle for the identity provider");
                Vec::new()
            }
            Err(e) => return Err(HttpError(format!("cannot read {}: {e}", path.display()))),
        };
        let mut roots = RootCertStore::empty();
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
            .filter_map(Result::ok)
            .collect();
        roots.add_parsable_certificates(certs);
        if roots.is_empty() && ca_file.is_some() {
            return Err(HttpError(format!(
                "no CA certificate in {}",
                path.display()
            )));
        }
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let config = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| HttpError(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Client {
            tls: TlsConnector::from(Arc::new(config)),
        })
    }

    /// GETs `url`; the body of a 2xx answer.
    pub async fn get(&self, url: &str) -> Result<Vec<u8>, HttpError> {
        self.send(url, None, &[]).await
    }

    /// POSTs a form to `url` with extra `headers`; the body of a 2xx answer.
    pub async fn post_form(
        &self,
        url: &str,
        form: &str,
        headers: &[(&str, String)],
    ) -> Result<Vec<u8>, HttpError> {
        self.send(url, Some(form.to_owned()), headers).await
    }

    async fn send(
        &self,
        url: &str,
        form: Option<String>,
        headers: &[(&str, String)],
    ) -> Result<Vec<u8>, HttpError> {
        tokio::time::timeout(TIMEOUT, self.exchange(url, form, headers))
            .await
            .map_err(|_| HttpError(format!("{url}: no answer within {} s", TIMEOUT.as_secs())))?
    }

    async fn exchange(
        &self,
        url: &str,
        form: Option<String>,
        headers: &[(&str, String)],
    ) -> Result<Vec<u8>, HttpError> {
        let u = Url::parse(url)?;
        if !u.tls && !u.loopback() {
            return Err(HttpError(format!(
                "{url}: plain http only to a loopback address"
            )));
        }
        let e = |what: &str| {
            let url = url.to_owned();
            let what = what.to_owned();
            move |err: &dyn std::fmt::Display| HttpError(format!("{url}: {what}: {err}"))
        };
        let tcp = TcpStream::connect((u.host.as_str(), u.port))
            .await
            .map_err(|x| e("connect")(&x))?;
        let method = if form.is_some() { "POST" } else { "GET" };
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(&u.path)
            .header("host", format!("{}:{}", u.host, u.port))
            .header("accept", "application/json")
            .header("user-agent", "confgate-approver");
        if form.is_some() {
            req = req.header("content-type", "application/x-www-form-urlencoded");
        }
        for (k, v) in headers {
            req = req.header(*k, v);
        }
        let req = req
            .body(Full::new(Bytes::from(form.unwrap_or_default())))
            .map_err(|x| e("request")(&x))?;
        let res = if u.tls {
            let name = ServerName::try_from(u.host.clone()).map_err(|x| e("server name")(&x))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|x| e("TLS")(&x))?;
            one(TokioIo::new(stream), req).await
        } else {
            one(TokioIo::new(tcp), req).await
        }
        .map_err(|x| e("exchange")(&x))?;
        let status = res.status();
        let body = Limited::new(res.into_body(), MAX_BODY)
            .collect()
            .await
            .map_err(|x| e("body")(&x))?
            .to_bytes();
        if !status.is_success() {
            let text = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
            return Err(HttpError(format!("{url}: {status}: {text}")));
        }
        Ok(body.to_vec())
    }
}

async fn one<I>(
    io: I,
    req: hyper::Request<Full<Bytes>>,
) -> Result<hyper::Response<hyper::body::Incoming>, hyper::Error>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    send.send_request(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = Url::parse("https://idp.example/realms/a?x=1#f").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "idp.example", 443, "/realms/a?x=1")
        );
        let u = Url::parse("http://[::1]:8080").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("::1", 8080, "/")
        );
        assert!(is_loopback_http("http://127.0.0.1:3000/x"));
        assert!(!is_loopback_http("http://10.0.0.1:3000/x"));
        assert!(!is_loopback_http("https://127.0.0.1:3000/x"));
        assert!(Url::parse("ftp://x").is_err());
        assert!(Url::parse("https://u@h/").is_err());
    }
}
