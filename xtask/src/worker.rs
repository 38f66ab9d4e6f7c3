//! The benchmark workload: a tight loop of open(O_WRONLY|O_CREAT|O_TRUNC) / write 4 KiB /
//! close / rename in one directory, optionally paced to a rate. Prints one JSON object:
//! {"ops": N, "ns_per_op": X}.
//!
//! With `--latency`, it times each `open(O_WRONLY|O_TRUNC)` of existing files instead
//! (`--files N`: cycle over `f0`..`f{N-1}`, created first; `--warmup K`: untimed opens
//! first) and adds the percentiles `p50_ns`, `p99_ns`, `p999_ns`.
use std::{ffi::CString, os::unix::ffi::OsStrExt, path::PathBuf, time::Instant};

use anyhow::Context as _;

#[derive(clap::Args)]
pub struct Args {
    /// Directory to work in.
    #[arg(long)]
    dir: PathBuf,
    /// Loop iterations.
    #[arg(long)]
    ops: u64,
    /// Pace the loop to this many iterations per second (default: as fast as it can).
    #[arg(long)]
    rate: Option<u64>,
    /// Time each open of existing files (scenarios 4 and 5) instead of the loop.
    #[arg(long)]
    latency: bool,
    /// `--latency`: files to cycle over.
    #[arg(long, default_value_t = 1)]
    files: u64,
    /// `--latency`: untimed opens first (e.g. to obtain a grant).
    #[arg(long, default_value_t = 0)]
    warmup: u64,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn open_close(path: &CString) -> anyhow::Result<u64> {
    let t = Instant::now();
    // SAFETY: a plain syscall on a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_TRUNC) };
    let ns = t.elapsed().as_nanos() as u64;
    anyhow::ensure!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    Ok(ns)
}

fn latency(a: &Args) -> anyhow::Result<()> {
    let files: Vec<CString> = (0..a.files.max(1))
        .map(|i| {
            let p = a.dir.join(format!("f{i}"));
            if !p.exists() {
                std::fs::write(&p, b"x")?;
            }
            cstr(&p)
        })
        .collect::<anyhow::Result<_>>()?;
    for i in 0..a.warmup {
        open_close(&files[(i as usize) % files.len()])?;
    }
    let start = Instant::now();
    let mut ns: Vec<u64> = Vec::with_capacity(a.ops as usize);
    for i in 0..a.ops {
        ns.push(open_close(&files[(i as usize) % files.len()])?);
    }
    let per_op = start.elapsed().as_nanos() as f64 / a.ops.max(1) as f64;
    ns.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "ops": a.ops, "ns_per_op": per_op,
            "p50_ns": pct(&ns, 50.0), "p99_ns": pct(&ns, 99.0), "p999_ns": pct(&ns, 99.9),
        })
    );
    Ok(())
}

fn cstr(p: &std::path::Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with NUL")
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.latency {
        return latency(&a);
    }
    let buf = [b'x'; 4096];
    let tmp = cstr(&a.dir.join("bench.tmp"))?;
    let dst = cstr(&a.dir.join("bench.conf"))?;
    let start = Instant::now();
    // Paced: every 64 iterations, wait until the schedule catches up.
    let period_ns = a.rate.filter(|r| *r > 0).map(|r| 1e9 / r as f64);
    for i in 0..a.ops {
        if let Some(p) = period_ns
            && i % 64 == 0
        {
            let due = std::time::Duration::from_nanos((i as f64 * p) as u64);
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
        }
        // SAFETY: plain syscalls on NUL-terminated paths and a live buffer.
        unsafe {
            let fd = libc::open(
                tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC,
                0o644,
            );
            anyhow::ensure!(fd >= 0, "open: {}", std::io::Error::last_os_error());
            let n = libc::write(fd, buf.as_ptr().cast(), buf.len());
            anyhow::ensure!(n == buf.len() as isize, "short write");
            libc::close(fd);
            anyhow::ensure!(
                libc::rename(tmp.as_ptr(), dst.as_ptr()) == 0,
                "rename: {}",
                std::io::Error::last_os_error()
            );
        }
    }
    let ns = start.elapsed().as_nanos() as f64 / a.ops.max(1) as f64;
    println!("{}", serde_json::json!({ "ops": a.ops, "ns_per_op": ns }));
    Ok(())
}
