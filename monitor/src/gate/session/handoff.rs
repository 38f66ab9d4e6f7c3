//! The daemon side of the supervise socket (`daemon.supervise_socket`, `SOCK_SEQPACKET`,
//! mode 0600): a `confgate-confine` helper asks for its session's [`ConfineSpec`], installs
//! it, and hands back its seccomp listener, which is attached to [`Supervisors`].
//!
//! The peer must be root (the setuid helper's effective uid) and be the session's root
//! process, for a live session not confined yet; anything else is refused. Each connection
//! is served on a blocking thread with send and receive timeouts.
use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::socket::{
    AddressFamily, Backlog, SockFlag, SockType, UnixAddr, accept4, bind, getsockopt, listen,
    setsockopt, socket, sockopt,
};
use nix::sys::time::TimeVal;
use tokio::io::unix::AsyncFd;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::wire::{self, Hello, Listener, Reply};
use super::{Attach, ConfineSpec, Supervisors};
use crate::sessions::SessionRegistry;

/// How long one helper may take per message.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// What the handoff serves, from the configuration.
#[derive(Clone, Debug)]
pub struct HandoffSettings {
    /// `daemon.supervise_socket`.
    pub socket: PathBuf,
    /// Write-class access is denied beneath these (the gated set, confgate's protected
    /// paths, the helper, raw devices).
    pub denied: Vec<PathBuf>,
    /// Hidden from sessions (confgate's configuration, credentials and state).
    pub hidden: Vec<PathBuf>,
}

/// What new sessions are confined to: `denied` and `hidden` of [`HandoffSettings`],
/// replaced by a configuration reload (sessions already confined keep theirs: Landlock
/// rules cannot be changed for a running process).
#[derive(Clone, Debug, Default)]
pub struct ConfinePaths(Arc<std::sync::RwLock<(Vec<PathBuf>, Vec<PathBuf>)>>);

impl ConfinePaths {
    /// Sessions confined from now on get `denied` and `hidden`.
    pub fn set(&self, denied: Vec<PathBuf>, hidden: Vec<PathBuf>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = (denied, hidden);
    }

    fn get(&self) -> (Vec<PathBuf>, Vec<PathBuf>) {
        self.0
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// What each connection needs.
struct Ctx {
    paths: ConfinePaths,
    registry: SessionRegistry,
    supervisors: Arc<Supervisors>,
    /// Sessions whose helper is between its hello and its listener.
    in_flight: Mutex<BTreeSet<u64>>,
}

/// Binds the supervise socket (replacing a stale one) and serves it on a task until the
/// runtime ends. Returns the task and the paths new sessions are confined to (to replace
/// them on a reload).
pub fn start(
    settings: HandoffSettings,
    registry: SessionRegistry,
    supervisors: Arc<Supervisors>,
) -> io::Result<(JoinHandle<()>, ConfinePaths)> {
    let listener = bind_socket(&settings.socket)?;
    // SAFETY: the socket's descriptor is owned by the value moved into the AsyncFd and is
    // closed only when the AsyncFd (and with it the registration) is dropped.
    let fd = unsafe { AsyncFd::register(listener) }?;
    info!(socket = %settings.socket.display(), "supervise socket ready");
    let paths = ConfinePaths::default();
    paths.set(settings.denied, settings.hidden);
    let ctx = Arc::new(Ctx {
        paths: paths.clone(),
        registry,
        supervisors,
        in_flight: Mutex::new(BTreeSet::new()),
    });
    let task = tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable().await {
                Ok(g) => g,
                Err(e) => {
                    warn!(error = %e, "supervise socket: poll failed; no more sessions can be confined");
                    return;
                }
            };
            match accept4(fd.get_ref().as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(raw) => {
                    // SAFETY: accept4 returned a new descriptor that nothing else owns.
                    let conn = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
                    let ctx = ctx.clone();
                    tokio::task::spawn_blocking(move || serve(&ctx, conn));
                }
                Err(nix::errno::Errno::EAGAIN) => guard.clear_ready(),
                Err(e) => warn!(error = %e, "supervise socket: accept failed"),
            }
        }
    });
    Ok((task, paths))
}

fn bind_socket(path: &Path) -> io::Result<OwnedFd> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => std::fs::remove_file(path)?,
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket", path.display()),
            ));
        }
        Err(_) => {}
    }
    let sock = socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    let addr = UnixAddr::new(path)?;
    bind(sock.as_raw_fd(), &addr)?;
    // Peers are checked one by one (root, the session's own process); the mode keeps
    // everyone else from even connecting.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    listen(&sock, Backlog::new(64).map_err(io::Error::from)?)?;
    Ok(sock)
}

/// One helper's exchange; refusals are answered and logged.
fn serve(ctx: &Ctx, conn: OwnedFd) {
    let mut session = None;
    let result = exchange(ctx, &conn, &mut session);
    if let Some(id) = session {
        ctx.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&id);
    }
    match result {
        Ok(id) => info!(session = id, "session confined: its listener is supervised"),
        Err(reason) => {
            warn!(session = ?session, reason = %reason, "session not confined");
            let _ = wire::send(conn.as_fd(), &Reply::refuse(reason), None);
        }
    }
}

fn exchange(ctx: &Ctx, conn: &OwnedFd, in_flight: &mut Option<u64>) -> Result<u64, String> {
    let tv = TimeVal::new(IO_TIMEOUT.as_secs() as _, 0);
    setsockopt(conn, sockopt::ReceiveTimeout, &tv).map_err(|e| e.to_string())?;
    setsockopt(conn, sockopt::SendTimeout, &tv).map_err(|e| e.to_string())?;
    let cred = getsockopt(conn, sockopt::PeerCredentials).map_err(|e| e.to_string())?;
    if cred.uid() != 0 {
        return Err(format!(
            "the helper runs as uid {}, not root (confgate-confine must be setuid root)",
            cred.uid()
        ));
    }
    let (hello, _) = wire::recv::<Hello>(conn.as_fd()).map_err(|e| e.to_string())?;
    if hello.v != wire::VERSION {
        return Err(format!(
            "protocol version {} (expected {})",
            hello.v,
            wire::VERSION
        ));
    }
    let id = hello.session;
    let info = ctx
        .registry
        .get(id)
        .filter(|s| s.ended.is_none())
        .ok_or_else(|| format!("no live session {id}"))?;
    if i64::from(info.root_pid) != i64::from(cred.pid()) {
        return Err(format!(
            "pid {} is not the root process of session {id}",
            cred.pid()
        ));
    }
    if ctx.registry.is_confined(id) {
        return Err(format!("session {id} is already confined"));
    }
    if !ctx
        .in_flight
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(id)
    {
        return Err(format!("session {id} is being confined by another helper"));
    }
    *in_flight = Some(id);
    let (mut denied, hidden) = ctx.paths.get();
    denied.extend(block_devices(Path::new("/dev"), 2));
    // A declared scope narrows what Landlock allows to the globs' roots (see `scope`).
    let spec = ConfineSpec::compute(&denied, &hidden)
        .map_err(|e| format!("computing the confinement: {e}"))?;
    let spec = super::scope::narrow(spec, &info.scope);
    let spec = Arc::new(spec);
    let reply = Reply {
        ok: true,
        spec: Some((*spec).clone()),
        error: None,
    };
    wire::send(conn.as_fd(), &reply, None).map_err(|e| e.to_string())?;
    let (msg, mut fds) = wire::recv::<Listener>(conn.as_fd()).map_err(|e| e.to_string())?;
    if !msg.listener || fds.len() != 1 {
        return Err("expected exactly one listener descriptor".into());
    }
    let listener = fds.remove(0);
    if !crate::os::seccomp::notify::is_listener(&listener) {
        return Err("the descriptor is not a seccomp listener".into());
    }
    // What a restart needs to resume supervising: the spec (durable) and the listener in
    // the service manager's descriptor store (when there is one).
    if let Some(store) = ctx.supervisors.store()
        && let Err(e) = super::resume::remember_spec(&store, id, &spec)
    {
        tracing::warn!(session = id, error = %e, "cannot keep the session's spec: a restart cannot resume supervising it");
    }
    if let Err(e) = super::resume::store_listener(id, listener.as_fd()) {
        tracing::warn!(session = id, error = %e, "cannot put the session's listener in the descriptor store");
    }
    ctx.supervisors
        .attach(Attach {
            session: id,
            root_pid: info.root_pid,
            listener,
            spec,
        })
        .map_err(|e| e.to_string())?;
    ctx.registry.mark_confined(id);
    wire::send(
        conn.as_fd(),
        &Reply {
            ok: true,
            ..Reply::default()
        },
        None,
    )
    .map_err(|e| e.to_string())?;
    Ok(id)
}

/// The block devices below `dir` (`depth` levels; links are not followed): a session
/// must not write a filesystem's device under it, whatever its permissions.
fn block_devices(dir: &Path, depth: u32) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let Ok(t) = e.file_type() else { continue };
        if t.is_block_device() {
            out.push(e.path());
        } else if t.is_dir() && depth > 1 {
            out.extend(block_devices(&e.path(), depth - 1));
        }
    }
    out
}
