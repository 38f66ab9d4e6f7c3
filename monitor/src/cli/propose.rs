//! `confgate propose PATH --from FILE|- --reason TEXT [--wait]`: proposes the exact new
//! content of a configuration file. The daemon files it as an approval request with the
//! diff against the file as it is now, and on approval writes it (see
//! `crate::propose`). Meant for agents: it works from inside a confined session (the
//! daemon's socket is reachable there; the configuration is not, so without `--socket`
//! or a readable configuration the default socket is used).
use std::io::{Read as _, Write as _};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context as _, bail};
use confgate_proto::v1 as pb;
use serde_json::{Value, json};

use crate::api::client::{connect, explain};

/// How long one `GetProposal` call waits for the decision (the daemon caps it at 60 s).
const WAIT_SLICE_MS: u64 = 50_000;
/// How long `--wait` keeps trying to reach a daemon that went away (a restart).
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Exit status of `--wait` for each outcome.
pub fn exit_code(state: &str) -> i32 {
    match state {
        "applied" => 0,
        "denied" => 2,
        "conflict" => 3,
        "expired" => 4,
        // rejected, failed, or anything this build does not know
        _ => 5,
    }
}

/// A proposal as the CLI's `--json` and the MCP tools show it.
pub fn to_json(p: &pb::Proposal) -> Value {
    let ms = |v: i64| {
        (v > 0).then(|| {
            crate::ledger::format_time(
                std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(v).unwrap_or(0)),
            )
        })
    };
    json!({
        "id": p.id,
        "request_id": (p.request_id != 0).then_some(p.request_id),
        "path": p.path,
        "state": p.state,
        "session": p.session_id,
        "agent": p.agent,
        "uid": p.uid,
        "pid": p.pid,
        "reason": p.reason,
        "base_sha256": (!p.base_sha256.is_empty()).then_some(&p.base_sha256),
        "content_sha256": p.content_sha256,
        "size": p.size,
        "created": ms(p.created_unix_ms),
        "deadline": ms(p.deadline_unix_ms),
        "decided_by": (!p.decided_by.is_empty()).then_some(&p.decided_by),
        "note": (!p.note.is_empty()).then_some(&p.note),
        "decided": ms(p.decided_unix_ms),
        "detail": (!p.detail.is_empty()).then_some(&p.detail),
        "diff": p.diff,
    })
}

/// One line saying what became of `p` (or how to decide it while pending).
pub fn summary(p: &pb::Proposal) -> String {
    let by = if p.decided_by.is_empty() {
        String::new()
    } else {
        format!(" by {}", p.decided_by)
    };
    match p.state.as_str() {
        "pending" if p.request_id != 0 => format!(
            "proposal {}: approval request {} for {} is pending until an approver decides \
             (approve: confgate approvals approve {})",
            p.id, p.request_id, p.path, p.request_id
        ),
        "pending" => format!(
            "proposal {}: filed for {}; the approval service has not acknowledged it yet",
            p.id, p.path
        ),
        "applied" => format!(
            "proposal {}: applied to {}{by} ({})",
            p.id, p.path, p.detail
        ),
        "denied" => format!("proposal {}: denied{by}; {} is unchanged", p.id, p.path),
        "conflict" => format!(
            "proposal {}: approved{by} but NOT applied: {}",
            p.id, p.detail
        ),
        "expired" => format!(
            "proposal {}: expired undecided; {} is unchanged",
            p.id, p.path
        ),
        other => format!("proposal {}: {other}: {}", p.id, p.detail),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("tokio runtime")
}

/// Reads the proposed content: a file, or `-` for standard input (at most 1 MiB).
fn read_content(from: &Path) -> anyhow::Result<Vec<u8>> {
    let limit = crate::propose::MAX_CONTENT as u64 + 1;
    let mut buf = Vec::new();
    if from.as_os_str() == "-" {
        std::io::stdin()
            .lock()
            .take(limit)
            .read_to_end(&mut buf)
            .context("reading the content from standard input")?;
    } else {
        std::fs::File::open(from)
            .and_then(|f| f.take(limit).read_to_end(&mut buf))
            .with_context(|| format!("reading {}", from.display()))?;
    }
    if buf.len() > crate::propose::MAX_CONTENT {
        bail!(
            "the content is larger than {} bytes (1 MiB): a proposal carries at most that",
            crate::propose::MAX_CONTENT
        );
    }
    Ok(buf)
}

/// Files the proposal; returns it as the daemon answered.
pub async fn file(
    socket: &Path,
    path: Vec<u8>,
    content: Vec<u8>,
    reason: String,
    ttl: Option<Duration>,
) -> anyhow::Result<pb::Proposal> {
    let mut c = connect(socket).await?;
    let p = c
        .propose(pb::ProposeRequest {
            path,
            content,
            reason,
            ttl_seconds: ttl.map_or(0, |d| d.as_secs()),
        })
        .await
        .map_err(|s| anyhow::anyhow!("{}", explain(&s)))?
        .into_inner();
    Ok(p)
}

/// Proposal `id`, waiting at most `wait_ms` for its decision.
pub async fn status(socket: &Path, id: u64, wait_ms: u64) -> anyhow::Result<pb::Proposal> {
    let mut c = connect(socket).await?;
    Ok(c.get_proposal(pb::GetProposalRequest { id, wait_ms })
        .await
        .map_err(|s| anyhow::anyhow!("{}", explain(&s)))?
        .into_inner())
}

/// Waits until proposal `id` is decided (reconnecting for a while if the daemon restarts).
pub async fn wait(socket: &Path, id: u64) -> anyhow::Result<pb::Proposal> {
    let mut lost_since: Option<std::time::Instant> = None;
    loop {
        match status(socket, id, WAIT_SLICE_MS).await {
            Ok(p) if p.state != "pending" => return Ok(p),
            Ok(_) => lost_since = None,
            Err(e) => {
                let since = *lost_since.get_or_insert_with(std::time::Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    return Err(e.context(format!("waiting for proposal {id}")));
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// The caller's own proposals.
pub async fn list(socket: &Path) -> anyhow::Result<Vec<pb::Proposal>> {
    let mut c = connect(socket).await?;
    Ok(c.list_proposals(pb::ListProposalsRequest {})
        .await
        .map_err(|s| anyhow::anyhow!("{}", explain(&s)))?
        .into_inner()
        .proposals)
}

/// `confgate propose`: exit 0 once filed (or, with `--wait`, once applied), else the
/// outcome's [`exit_code`].
pub fn run(
    socket: &Path,
    path: &std::ffi::OsStr,
    from: &Path,
    reason: &str,
    ttl: Option<Duration>,
    wait_for: bool,
    json: bool,
) -> anyhow::Result<i32> {
    let abs = std::path::absolute(Path::new(path))
        .with_context(|| format!("{}", Path::new(path).display()))?;
    let content = read_content(from)?;
    let rt = runtime()?;
    let mut p = rt.block_on(file(
        socket,
        abs.as_os_str().as_bytes().to_vec(),
        content,
        reason.to_owned(),
        ttl,
    ))?;
    let mut out = std::io::stdout().lock();
    if wait_for {
        if !json {
            writeln!(out, "{}", summary(&p))?;
            out.flush()?;
        }
        p = rt.block_on(wait(socket, p.id))?;
    }
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&to_json(&p))?)?;
    } else {
        writeln!(out, "{}", summary(&p))?;
    }
    out.flush()?;
    Ok(if wait_for { exit_code(&p.state) } else { 0 })
}

/// `confgate proposals [ID] [--wait] [--json]`.
pub fn show(socket: &Path, id: Option<u64>, wait_for: bool, json: bool) -> anyhow::Result<i32> {
    let rt = runtime()?;
    let mut out = std::io::stdout().lock();
    let Some(id) = id else {
        let ps = rt.block_on(list(socket))?;
        if json {
            let v: Vec<Value> = ps.iter().map(to_json).collect();
            writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
        } else if ps.is_empty() {
            writeln!(out, "no proposals")?;
        } else {
            for p in &ps {
                writeln!(out, "{}", summary(p))?;
            }
        }
        out.flush()?;
        return Ok(0);
    };
    let p = if wait_for {
        rt.block_on(wait(socket, id))?
    } else {
        rt.block_on(status(socket, id, 0))?
    };
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&to_json(&p))?)?;
    } else {
        writeln!(out, "{}", summary(&p))?;
        for line in p.diff.lines() {
            writeln!(out, "    {line}")?;
        }
    }
    out.flush()?;
    Ok(if wait_for { exit_code(&p.state) } else { 0 })
}
