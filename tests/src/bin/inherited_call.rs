//! For the end-to-end tests: a call over a connection that a process which has since exited
//! opened, the way an agent would try to borrow a pid the session map no longer knows.
//!
//! Usage: `inherited_call attest DAEMON_SOCKET REQUEST_ID` (`Daemon.Attest`) or
//! `inherited_call decide APPROVER_SOCKET REQUEST_ID` (`Approver.Decide`, approving).
//! Connects, forks; the parent exits at once, and the child (which inherits the connection)
//! waits until the parent is gone, then makes the call on it. Prints `accepted` (exit 0) or
//! `refused: CODE: MESSAGE` (exit 3); other failures exit 2.
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use confgate_proto::v1 as pb;
use hyper_util::rt::TokioIo;
use tonic::transport::{Endpoint, Uri};
use tower::service_fn;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [mode, socket, id] = args.as_slice() else {
        eprintln!("usage: inherited_call attest|decide SOCKET REQUEST_ID");
        return ExitCode::from(2);
    };
    let decide = match mode.as_str() {
        "attest" => false,
        "decide" => true,
        _ => {
            eprintln!("mode is attest or decide");
            return ExitCode::from(2);
        }
    };
    let Ok(id) = id.parse::<u64>() else {
        eprintln!("bad request id");
        return ExitCode::from(2);
    };
    let stream = match UnixStream::connect(socket) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("connect {socket}: {e}");
            return ExitCode::from(2);
        }
    };
    let parent = std::process::id();
    // SAFETY: the process has one thread here (no runtime yet), so the child may run
    // arbitrary code after the fork.
    match unsafe { nix::unistd::fork() } {
        Err(e) => {
            eprintln!("fork: {e}");
            ExitCode::from(2)
        }
        Ok(nix::unistd::ForkResult::Parent { .. }) => ExitCode::SUCCESS,
        Ok(nix::unistd::ForkResult::Child) => {
            let deadline = Instant::now() + Duration::from_secs(10);
            while std::path::Path::new(&format!("/proc/{parent}")).exists() {
                if Instant::now() > deadline {
                    eprintln!("parent {parent} did not go away");
                    return ExitCode::from(2);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            call(stream, id, decide)
        }
    }
}

fn call(stream: UnixStream, id: u64, decide: bool) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::from(2);
        }
    };
    rt.block_on(async move {
        if let Err(e) = stream.set_nonblocking(true) {
            eprintln!("nonblocking: {e}");
            return ExitCode::from(2);
        }
        let stream = match tokio::net::UnixStream::from_std(stream) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("tokio stream: {e}");
                return ExitCode::from(2);
            }
        };
        let once = Arc::new(Mutex::new(Some(stream)));
        let channel = match Endpoint::from_static("http://[::]:50051")
            .connect_with_connector(service_fn(move |_: Uri| {
                let s = once.lock().ok().and_then(|mut s| s.take());
                async move {
                    s.map(TokioIo::new).ok_or_else(|| {
                        std::io::Error::other("the inherited connection was used already")
                    })
                }
            }))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                eprintln!("channel: {e}");
                return ExitCode::from(2);
            }
        };
        let answer = if decide {
            pb::approver_client::ApproverClient::new(channel)
                .decide(pb::DecideRequest {
                    id,
                    approve: true,
                    ttl_seconds: 600,
                    ..Default::default()
                })
                .await
                .map(|_| ())
        } else {
            pb::daemon_client::DaemonClient::new(channel)
                .attest(pb::AttestRequest {
                    request_id: id,
                    approve: true,
                })
                .await
                .map(|_| ())
        };
        match answer {
            Ok(()) => {
                println!("accepted");
                ExitCode::SUCCESS
            }
            Err(s) => {
                println!("refused: {:?}: {}", s.code(), s.message());
                ExitCode::from(3)
            }
        }
    })
}
