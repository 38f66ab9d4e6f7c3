//! A throwaway nats-server with JetStream (from Debian's package, installed by
//! scripts/bootstrap.sh), and a reader of its streams: for the NATS tests and the
//! benchmark.
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::poll;

/// A nats-server with JetStream on a free loopback port and a temporary store; killed
/// when dropped.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    store: tempfile::TempDir,
}

fn nats_server_bin() -> Option<PathBuf> {
    ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

impl NatsServer {
    /// Started and listening, or why not (no nats-server).
    pub fn start() -> Result<NatsServer, String> {
        if nats_server_bin().is_none() {
            return Err("no nats-server (scripts/bootstrap.sh installs it)".into());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let mut s = NatsServer {
            child: None,
            port,
            store: tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?,
        };
        s.up();
        Ok(s)
    }

    /// Starts it (again, after [`NatsServer::down`]) on the same port and store.
    pub fn up(&mut self) {
        let bin = nats_server_bin().expect("nats-server");
        let child = Command::new(bin)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        self.child = Some(child);
        poll("nats-server listening", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()
        });
    }

    /// Kills it (SIGKILL: an outage).
    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.down();
    }
}

/// Runs `f` on `stream` of the server at `url` (`None`: the stream does not exist).
fn on_stream<T>(
    url: &str,
    stream: &str,
    f: impl AsyncFnOnce(Option<async_nats::jetstream::stream::Stream>) -> T,
) -> T {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let client = async_nats::connect(url).await.expect("connect");
        let js = async_nats::jetstream::new(client);
        f(js.get_stream(stream).await.ok()).await
    })
}

/// Every message of `stream` (subject, payload as JSON); none when it does not exist.
pub fn messages_of(url: &str, stream: &str) -> Vec<(String, Value)> {
    on_stream(url, stream, async |s| {
        let Some(mut s) = s else {
            return Vec::new();
        };
        let info = s.info().await.expect("info").state.clone();
        let mut out = Vec::new();
        for seq in info.first_sequence..=info.last_sequence {
            if info.messages == 0 {
                break;
            }
            let m = s.get_raw_message(seq).await.expect("message");
            out.push((
                m.subject.to_string(),
                serde_json::from_slice(&m.payload).expect("JSON"),
            ));
        }
        out
    })
}

/// How many messages `stream` holds (0 when it does not exist).
pub fn message_count(url: &str, stream: &str) -> u64 {
    on_stream(url, stream, async |s| match s {
        Some(mut s) => s.info().await.expect("info").state.messages,
        None => 0,
    })
}
