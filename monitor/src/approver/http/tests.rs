use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::approver::config::ServiceConfig;
use crate::approver::{Server, testing};

/// One plain HTTP/1.1 exchange with `addr`: the whole response as text.
pub(crate) async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

fn parse(text: &str) -> Result<ServiceConfig, crate::config::ConfigError> {
    ServiceConfig::parse(text, Path::new("/etc/confgate/approver.toml"))
}

#[test]
fn http_section_follows_the_listener_rules() {
    let field = |t: &str| match parse(t) {
        Err(crate::config::ConfigError::Invalid { field, .. }) => field,
        other => panic!("{other:?}"),
    };
    assert_eq!(parse("").unwrap().http.listen, None);
    assert_eq!(
        field("[http]\nlisten = \"http://127.0.0.1:8080\"\n"),
        "http.listen"
    );
    parse("allow_plaintext = true\n[http]\nlisten = \"http://127.0.0.1:8080\"\n").unwrap();
    assert_eq!(
        field("allow_plaintext = true\n[http]\nlisten = \"http://0.0.0.0:8080\"\n"),
        "http.listen"
    );
    assert_eq!(
        field("[http]\nlisten = \"https://0.0.0.0:8443\"\n"),
        "http.listen"
    );
    assert_eq!(
        field("[http]\nlisten = \"unix:/run/x.sock\"\n"),
        "http.listen"
    );
    parse("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[http]\nlisten = \"https://0.0.0.0:8443\"\npublic_url = \"https://a.example:8443/\"\n").unwrap();
    assert_eq!(
        field(
            "[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n[http]\nlisten = \"https://0.0.0.0:8443\"\npublic_url = \"ftp://x\"\n"
        ),
        "http.public_url"
    );
    assert_eq!(
        field("[http]\npublic_url = \"https://x\"\n"),
        "http.public_url"
    );
    let h = parse("allow_plaintext = true\n[http]\nlisten = \"http://127.0.0.1:8080\"\npublic_url = \"https://a.example/\"\n").unwrap().http;
    assert_eq!(h.base_url().as_deref(), Some("https://a.example"));
}

#[tokio::test]
async fn healthz_and_security_headers_then_stops_with_the_service() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = testing::service_config(dir.path());
    cfg.allow_plaintext = true;
    cfg.http.listen = Some("http://127.0.0.1:0".to_owned());
    let server = Server::start(cfg, None).await.unwrap();
    let addr = server.http_address().unwrap();
    assert_ne!(addr.port(), 0);
    let res = http_get(addr, "/healthz").await;
    assert!(res.starts_with("HTTP/1.1 200"), "{res}");
    assert!(res.ends_with("ok\n"), "{res}");
    let lower = res.to_ascii_lowercase();
    assert!(
        lower.contains("content-security-policy: default-src 'none'"),
        "{res}"
    );
    assert!(lower.contains("x-frame-options: deny"), "{res}");
    assert!(http_get(addr, "/nope").await.starts_with("HTTP/1.1 404"));
    server.stop().await.unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn https_listener_serves_with_the_service_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::write(&cert, ck.cert.pem()).unwrap();
    std::fs::write(&key, ck.signing_key.serialize_pem()).unwrap();
    let mut cfg = testing::service_config(dir.path());
    cfg.tls.cert = Some(cert);
    cfg.tls.key = Some(key);
    cfg.http.listen = Some("https://127.0.0.1:0".to_owned());
    let server = Server::start(cfg, None).await.unwrap();
    let addr = server.http_address().unwrap();
    // A plaintext request on the TLS port gets no HTTP answer.
    let res = http_get(addr, "/healthz").await;
    assert!(!res.contains("200"), "{res}");
    // Over TLS, trusting the service's certificate: served.
    use tokio_rustls::rustls::{self, pki_types::ServerName};
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ck.cert.der().clone()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let res = String::from_utf8_lossy(&out);
    assert!(
        res.starts_with("HTTP/1.1 200") && res.ends_with("ok\n"),
        "{res}"
    );
    server.stop().await.unwrap();
}

/// A listener serving `/healthz` with `limits`; its address and the stop switch.
async fn limited(
    limits: super::limits::Limits,
) -> (std::net::SocketAddr, tokio::sync::watch::Sender<bool>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let router = axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok\n" }));
    let (tx, rx) = tokio::sync::watch::channel(false);
    tokio::spawn(super::serve(l, None, router, rx, limits));
    (addr, tx)
}

/// Reads until the server closes `s` (within 5 s, else panics); what it sent.
async fn closed_by_server(s: &mut tokio::net::TcpStream) -> String {
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("the server closes the connection")
        .ok();
    String::from_utf8_lossy(&out).into_owned()
}

use std::time::Duration;

#[tokio::test]
async fn connections_beyond_the_cap_are_closed_and_slots_come_back() {
    let (addr, _stop) = limited(super::limits::Limits {
        max_connections: 2,
        ..Default::default()
    })
    .await;
    let a = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _b = tokio::net::TcpStream::connect(addr).await.unwrap();
    // Both served slots taken (the accept loop took them): the third is closed unanswered.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = third
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    assert_eq!(closed_by_server(&mut third).await, "");
    drop(a);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let res = http_get(addr, "/healthz").await;
        if res.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "no slot came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn slow_headers_and_idle_connections_are_closed() {
    let (addr, _stop) = limited(super::limits::Limits {
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .await;
    // Headers trickling in: cut at the header read timeout, well before the idle one.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    closed_by_server(&mut s).await;
    let (addr, _stop) = limited(super::limits::Limits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_millis(300),
        ..Default::default()
    })
    .await;
    // A connection that says nothing, and one idle after a keep-alive request.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    closed_by_server(&mut s).await;
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    assert!(closed_by_server(&mut s).await.starts_with("HTTP/1.1 200"));
}

#[tokio::test]
async fn large_bodies_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = testing::service_config(dir.path());
    cfg.allow_plaintext = true;
    cfg.http.listen = Some("http://127.0.0.1:0".to_owned());
    let server = Server::start(cfg, None).await.unwrap();
    let addr = server.http_address().unwrap();
    let body = vec![b'a'; super::limits::Limits::default().max_body_bytes + 1];
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /web/logout HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let _ = s.write_all(&body).await;
    let res = closed_by_server(&mut s).await;
    assert!(res.starts_with("HTTP/1.1 413"), "{res}");
    server.stop().await.unwrap();
}
