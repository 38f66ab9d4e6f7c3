//! The benchmark workload: a tight loop of open(O_WRONLY|O_CREAT|O_TRUNC) / write 4 KiB /
//! close / rename in one directory, optionally paced to a rate. Prints one JSON object:
//! {"ops": N, "ns_per_op": X}.
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
}

fn cstr(p: &std::path::Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with NUL")
}

pub fn run(a: Args) -> anyhow::Result<()> {
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
