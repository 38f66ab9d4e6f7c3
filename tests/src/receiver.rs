//! A local HTTPS receiver for the notification tests: its own test CA (rcgen), a server
//! certificate for 127.0.0.1, and the documented answers of the services the approval
//! service talks to: Slack's Web API (`/api/chat.postMessage` → `{"ok":true,"channel":
//! ...,"ts":...}`, `/api/chat.update`, `/api/views.open`), Slack's `response_url`
//! (`/response`), a webhook (`/hook`) and a Teams workflow (`/teams`). Every request is
//! recorded; `set_down(true)` makes `/hook` answer 503.
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{Value, json};

/// One request the receiver got.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// What it answered.
    pub status: u16,
    pub answer: Value,
    /// When its body had been read in full.
    pub received: SystemTime,
}

/// Called with each request once it is answered (see [`Receiver::on_request`]).
type Hook = Box<dyn Fn(&Recorded) + Send + Sync>;

impl Recorded {
    /// A header's value (name in lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON (Null if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// The running receiver (its threads end with the test process).
pub struct Receiver {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// PEM of the CA that signed its certificate.
    pub ca_file: PathBuf,
    log: Arc<Mutex<Vec<Recorded>>>,
    down: Arc<AtomicBool>,
    hook: Arc<Mutex<Option<Hook>>>,
    _dir: tempfile::TempDir,
}

impl Receiver {
    pub fn start() -> Receiver {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "confgate test receiver CA");
        let ca_cert = ca.self_signed(&ca_key).expect("CA cert");
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params
            .subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
        let cert = params.signed_by(&key, &issuer).expect("cert");
        let ca_file = dir.path().join("receiver-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).expect("write CA");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
            )
            .expect("server config");
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("https://{}", listener.local_addr().expect("addr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let down = Arc::new(AtomicBool::new(false));
        let hook: Arc<Mutex<Option<Hook>>> = Arc::new(Mutex::new(None));
        let (l, d, h) = (Arc::clone(&log), Arc::clone(&down), Arc::clone(&hook));
        std::thread::spawn(move || {
            let ts = Arc::new(AtomicU64::new(1));
            for conn in listener.incoming().flatten() {
                let shared = Shared {
                    config: Arc::clone(&config),
                    log: Arc::clone(&l),
                    down: Arc::clone(&d),
                    hook: Arc::clone(&h),
                    ts: Arc::clone(&ts),
                };
                std::thread::spawn(move || serve(conn, shared));
            }
        });
        Receiver {
            url,
            ca_file,
            log,
            down,
            hook,
            _dir: dir,
        }
    }

    /// Calls `f` with every request from now on, after it is answered, on the connection's
    /// thread (the benchmark's auto-approver clicks the buttons of each posted message).
    pub fn on_request(&self, f: impl Fn(&Recorded) + Send + Sync + 'static) {
        *self.hook.lock().expect("hook") = Some(Box::new(f));
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.log.lock().expect("log").clone()
    }

    /// Makes `/hook` answer 503 (`true`) or 200.
    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }

    /// Waits (30 s at most) until `pred` holds for the requests so far.
    pub fn wait_for(&self, what: &str, pred: impl Fn(&[Recorded]) -> bool) -> Vec<Recorded> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let r = self.requests();
            if pred(&r) {
                return r;
            }
            assert!(
                Instant::now() < deadline,
                "receiver: no {what} in {:#?}",
                r.iter()
                    .map(|x| (
                        x.path.clone(),
                        x.status,
                        String::from_utf8_lossy(&x.body)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    ))
                    .collect::<Vec<_>>()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// What every connection's thread shares.
struct Shared {
    config: Arc<rustls::ServerConfig>,
    log: Arc<Mutex<Vec<Recorded>>>,
    down: Arc<AtomicBool>,
    hook: Arc<Mutex<Option<Hook>>>,
    ts: Arc<AtomicU64>,
}

fn serve(tcp: TcpStream, sh: Shared) {
    let Shared {
        config,
        log,
        down,
        hook,
        ts,
    } = sh;
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(10)));
    let Ok(conn) = rustls::ServerConnection::new(config) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut reader = BufReader::new(&mut tls);
    let mut line = String::new();
    if reader.read_line(&mut line).is_err() {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).is_err() {
            return;
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.push((k.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }
    let len = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; len];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let received = SystemTime::now();
    let n = ts.fetch_add(1, Ordering::SeqCst);
    let (status, answer) = match path.as_str() {
        "/api/chat.postMessage" => (
            200,
            json!({ "ok": true, "channel": "C0TEST", "ts": format!("1700000000.{n:06}"),
                    "message": { "text": "" } }),
        ),
        "/api/chat.update" => {
            let b: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            (
                200,
                json!({ "ok": true, "channel": b["channel"], "ts": b["ts"], "text": b["text"] }),
            )
        }
        "/api/views.open" => (200, json!({ "ok": true, "view": { "id": "V0TEST" } })),
        "/hook" if down.load(Ordering::SeqCst) => (503, json!({ "error": "down" })),
        _ => (200, json!({ "ok": true })),
    };
    let rec = Recorded {
        path,
        headers,
        body,
        status,
        answer: answer.clone(),
        received,
    };
    log.lock().expect("log").push(rec.clone());
    let text = answer.to_string();
    let reason = if status == 200 {
        "OK"
    } else {
        "Service Unavailable"
    };
    let _ = write!(
        tls,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = tls.flush();
    tls.conn.send_close_notify();
    let _ = tls.flush();
    drop(tls);
    if let Some(f) = hook.lock().expect("hook").as_ref() {
        f(&rec);
    }
}
