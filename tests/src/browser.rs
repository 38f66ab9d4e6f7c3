//! What the web page's end-to-end test drives: a minimal HTTP/1.1 client (std only), a
//! WebDriver session of headless Chromium through `chromedriver`, and the local OpenID
//! provider of `tests/oidc` (npm `oidc-provider`, installed by `scripts/bootstrap.sh`).
use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::workspace;

/// One HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request to `addr` (`127.0.0.1:port`) over a fresh connection.
pub fn http(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    // Read the head, then the body by its length: a server may keep the connection open
    // whatever the request said (chromedriver does).
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    let split = loop {
        if let Some(i) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "no HTTP head from {addr}{path}");
        raw.extend_from_slice(&buf[..n]);
    };
    let length = String::from_utf8_lossy(&raw[..split])
        .split("\r\n")
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok());
    loop {
        let have = raw.len() - split - 4;
        if length.is_some_and(|l| have >= l) || (length.is_none() && raw.ends_with(b"0\r\n\r\n")) {
            break;
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers.iter().any(|(k, v)| {
        k.eq_ignore_ascii_case("transfer-encoding") && v.eq_ignore_ascii_case("chunked")
    });
    if chunked {
        body = dechunk(&body);
    }
    HttpResponse {
        status,
        headers,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size_text = String::from_utf8_lossy(&b[..eol]);
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or(0);
        if size == 0 || b.len() < eol + 2 + size {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[(eol + 4 + size).min(b.len())..];
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: the caller binds it right after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A child process killed (and reaped) when dropped.
pub struct Killed(pub Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The directory of the test OpenID provider.
pub fn oidc_dir() -> PathBuf {
    workspace().join("tests/oidc")
}

/// What the browser test needs and does not have, if anything.
pub fn missing_prerequisites() -> Option<String> {
    let need = [
        ("/usr/bin/node", "node (Debian nodejs)"),
        ("/usr/bin/chromium", "chromium (Debian chromium)"),
        (
            "/usr/bin/chromedriver",
            "chromedriver (Debian chromium-driver)",
        ),
    ];
    for (path, what) in need {
        if !Path::new(path).exists() {
            return Some(format!("{what} is not installed; run scripts/bootstrap.sh"));
        }
    }
    if !oidc_dir().join("node_modules/oidc-provider").is_dir() {
        return Some(
            "tests/oidc/node_modules is missing (npm ci there); run scripts/bootstrap.sh".into(),
        );
    }
    None
}

/// Starts the test OpenID provider on `port`, sending browsers back to `redirect_uri`;
/// returns once it listens.
pub fn start_oidc(port: u16, redirect_uri: &str, log: &Path) -> Killed {
    let mut child = Command::new("/usr/bin/node")
        .arg("server.js")
        .arg(port.to_string())
        .arg(redirect_uri)
        .current_dir(oidc_dir())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start node tests/oidc/server.js");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("ready ") {
                let _ = tx.send(());
            }
        }
    });
    let killed = Killed(child);
    rx.recv_timeout(Duration::from_secs(30))
        .unwrap_or_else(|_| {
            panic!(
                "the test OpenID provider did not start:\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            )
        });
    killed
}

/// A WebDriver session of headless Chromium.
pub struct Browser {
    addr: String,
    session: String,
    _driver: Killed,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session.
    pub fn start(log: &Path) -> Browser {
        let port = free_port();
        let driver = Killed(
            Command::new("/usr/bin/chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .expect("start chromedriver"),
        );
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if TcpStream::connect(&addr).is_ok() {
                let r = http("GET", &addr, "/status", &[], b"");
                let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
                if v["value"]["ready"] == true {
                    break;
                }
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not become ready"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    "--disable-dev-shm-usage", "--window-size=1280,1100",
                    format!("--user-data-dir={}", profile.path().display()),
                ]
            }
        }}});
        let v = wd(&addr, "POST", "/session", Some(&caps));
        let session = v["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no WebDriver session: {v}"))
            .to_owned();
        Browser {
            addr,
            session,
            _driver: driver,
            _profile: profile,
        }
    }

    fn cmd(&self, method: &str, rel: &str, body: Option<&Value>) -> Value {
        wd(
            &self.addr,
            method,
            &format!("/session/{}{rel}", self.session),
            body,
        )
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(&json!({ "url": url })));
    }

    pub fn url(&self) -> String {
        self.cmd("GET", "/url", None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The page's DOM, serialized.
    pub fn source(&self) -> String {
        self.cmd("GET", "/source", None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The ids of the elements matching `css` (none: empty).
    pub fn find_all(&self, css: &str) -> Vec<String> {
        let v = wd_raw(
            &self.addr,
            "POST",
            &format!("/session/{}/elements", self.session),
            Some(&json!({"using": "css selector", "value": css})),
        );
        v["value"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e.as_object()?.values().next()?.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (at most `limit`) for an element matching `css`; its id.
    pub fn wait_for(&self, css: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.find_all(css).into_iter().next() {
                return e;
            }
            assert!(
                Instant::now() < deadline,
                "no {css} on {} within {limit:?}:\n{}",
                self.url(),
                self.source()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Clicks the element matching `css`, finding it again if the page was reloaded
    /// between finding and clicking (live updates reload pages).
    pub fn click(&self, css: &str) {
        for _ in 0..5 {
            let e = self.wait_for(css, Duration::from_secs(15));
            let v = wd_raw(
                &self.addr,
                "POST",
                &format!("/session/{}/element/{e}/click", self.session),
                Some(&json!({})),
            );
            match v["value"]["error"].as_str() {
                None => return,
                Some("stale element reference") => continue,
                Some(_) => panic!("WebDriver click {css}: {}", v["value"]),
            }
        }
        panic!("{css} kept going stale");
    }

    pub fn type_into(&self, css: &str, text: &str) {
        let e = self.wait_for(css, Duration::from_secs(15));
        self.cmd(
            "POST",
            &format!("/element/{e}/value"),
            Some(&json!({ "text": text })),
        );
    }

    /// Every cookie of the current page, HttpOnly ones included, as `name=value; ...`.
    pub fn cookie_header(&self) -> String {
        let v = self.cmd("GET", "/cookie", None);
        v.as_array()
            .map(|a| {
                a.iter()
                    .map(|c| {
                        format!(
                            "{}={}",
                            c["name"].as_str().unwrap_or(""),
                            c["value"].as_str().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            })
            .unwrap_or_default()
    }

    /// The cookies of the current page as WebDriver reports them.
    pub fn cookies(&self) -> Vec<Value> {
        self.cmd("GET", "/cookie", None)
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// A PNG of the viewport.
    pub fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let b64 = self.cmd("GET", "/screenshot", None);
        base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap_or(""))
            .expect("screenshot base64")
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = wd_raw(
            &self.addr,
            "DELETE",
            &format!("/session/{}", self.session),
            None,
        );
    }
}

fn wd_raw(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let r = http(
        method,
        addr,
        path,
        &[("Content-Type", "application/json")],
        body.as_bytes(),
    );
    serde_json::from_slice(&r.body).unwrap_or(Value::Null)
}

/// A WebDriver command's `value`; panics on a WebDriver error.
fn wd(addr: &str, method: &str, path: &str, body: Option<&Value>) -> Value {
    let v = wd_raw(addr, method, path, body);
    if v["value"].get("error").is_some() {
        panic!("WebDriver {method} {path}: {}", v["value"]);
    }
    v["value"].clone()
}

/// Writes, in the test daemon's directory `root`, the local approval service's settings
/// that serve the web page on `http://127.0.0.1:web_port` with sign-in at the test OpenID
/// provider on `oidc_port` (approvers: group `sre`), and returns the `[approval]` table
/// that names them (the caller appends the rest of the daemon's configuration).
pub fn local_web_approval(root: &Path, web_port: u16, oidc_port: u16) -> String {
    let secret = root.join("oidc-client-secret");
    std::fs::write(&secret, "confgate-test-secret\n").unwrap();
    let approver = root.join("approver.toml");
    let sock = root.join("approver.sock");
    std::fs::write(
        &approver,
        format!(
            "listen = [\"unix:{sock}\"]\nallow_plaintext = true\n\
             store = \"{state}/approver.redb\"\nledger = \"{state}/ledger.jsonl\"\n\
             [http]\nlisten = \"http://127.0.0.1:{web_port}\"\n\
             [web.oidc]\nissuer = \"http://127.0.0.1:{oidc_port}\"\n\
             client_id = \"confgate\"\nclient_secret_file = \"{secret}\"\n\
             scopes = [\"openid\", \"profile\", \"email\", \"groups\"]\n\
             approvers = [\"group:sre\"]\n",
            sock = sock.display(),
            state = root.join("approver-state").display(),
            secret = secret.display(),
        ),
    )
    .unwrap();
    format!(
        "[approval]\nmode = \"local\"\nlocal_socket = \"{}\"\nlocal_config = \"{}\"\n",
        sock.display(),
        approver.display()
    )
}
