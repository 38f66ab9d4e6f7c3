//! The benchmark workload: a tight loop of open(O_WRONLY|O_CREAT|O_TRUNC) / write 4 KiB /
//! close / rename in one directory, optionally paced to a rate. Prints one JSON object:
//! {"ops": N, "ns_per_op": X}.
//!
//! With `--latency`, it times each `open(O_WRONLY|O_TRUNC)` of existing files instead
//! (`--files N`: cycle over `f0`..`f{N-1}`, created first; `--warmup K`: untimed opens
//! first) and adds the percentiles `p50_ns`, `p99_ns`, `p999_ns`.
//!
//! With `--pingpong`, it times `--ops` round trips of one byte through pipes to a child
//! process that echoes it (`--echo`): what it costs this machine's scheduler to wake
//! another process and be woken by it, the floor under any permission round trip
//! (scenario 4). `--same-cpu` pins both processes to the CPU the worker started on.
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
    /// Time pipe round trips to an echoing child process instead of the loop.
    #[arg(long)]
    pingpong: bool,
    /// `--pingpong`: pin the worker and its child to one CPU.
    #[arg(long)]
    same_cpu: bool,
    /// Time `--ops` calls of one system call instead of the loop (scenario 1's per-call
    /// tax): `write` (1 byte to /dev/null), `close` (of fd -1: EBADF, the tracepoints
    /// run all the same), `dup` (dup + close), `fcntl` (F_GETFD), `chdir` (to `--dir`),
    /// `open-read` (open O_RDONLY + close of a file in `--dir`).
    #[arg(long)]
    syscall: Option<String>,
    /// `--latency`: install a seccomp filter on the timing thread that notifies write
    /// opens, answered by a supervisor thread of this process with the project's own
    /// `monitor::os::seccomp::notify`: `continue`, `continue-sync` (with
    /// SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP), `addfd-sync` (the supervisor opens the file
    /// and injects the descriptor, as for an approved gated open).
    #[arg(long)]
    seccomp: Option<String>,
    /// `--latency`: open read-only instead of O_WRONLY|O_TRUNC.
    #[arg(long)]
    read: bool,
    /// Echo each byte of stdin to stdout until end of file (the `--pingpong` child).
    #[arg(long, hide = true)]
    echo: bool,
}

/// Nearest-rank percentile of sorted values.
fn pct(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn open_close(path: &CString, flags: i32) -> anyhow::Result<u64> {
    let t = Instant::now();
    // SAFETY: a plain syscall on a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    let ns = t.elapsed().as_nanos() as u64;
    anyhow::ensure!(fd >= 0, "open: {}", std::io::Error::last_os_error());
    // SAFETY: closing the descriptor just opened.
    unsafe { libc::close(fd) };
    Ok(ns)
}

/// Prints the JSON result of timed operations (`ns`, unsorted).
fn print_percentiles(ops: u64, elapsed: std::time::Duration, mut ns: Vec<u64>) {
    let per_op = elapsed.as_nanos() as f64 / ops.max(1) as f64;
    ns.sort_unstable();
    println!(
        "{}",
        serde_json::json!({
            "ops": ops, "ns_per_op": per_op,
            "p50_ns": pct(&ns, 50.0), "p99_ns": pct(&ns, 99.0), "p999_ns": pct(&ns, 99.9),
        })
    );
}

/// Pin this process (and the children it spawns afterwards) to the CPU it runs on.
fn pin_to_current_cpu() -> anyhow::Result<()> {
    // SAFETY: plain syscalls; the set is initialised by CPU_ZERO before use.
    unsafe {
        let cpu = libc::sched_getcpu();
        anyhow::ensure!(
            cpu >= 0,
            "sched_getcpu: {}",
            std::io::Error::last_os_error()
        );
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu as usize, &mut set);
        anyhow::ensure!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0,
            "sched_setaffinity: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn pingpong(a: &Args) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    if a.same_cpu {
        pin_to_current_cpu()?;
    }
    let exe = std::env::current_exe().context("own executable")?;
    let mut child = Command::new(exe)
        .args(["worker", "--echo", "--ops", "0", "--dir"])
        .arg(&a.dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("spawning the echo process")?;
    let (mut to, mut from) = (
        child.stdin.take().context("child stdin")?,
        child.stdout.take().context("child stdout")?,
    );
    let mut byte = [b'x'];
    let mut trip = |byte: &mut [u8; 1]| -> anyhow::Result<u64> {
        let t = Instant::now();
        to.write_all(&byte[..])?;
        from.read_exact(&mut byte[..])?;
        Ok(t.elapsed().as_nanos() as u64)
    };
    for _ in 0..a.warmup {
        trip(&mut byte)?;
    }
    let start = Instant::now();
    let mut ns: Vec<u64> = Vec::with_capacity(a.ops as usize);
    for _ in 0..a.ops {
        ns.push(trip(&mut byte)?);
    }
    let elapsed = start.elapsed();
    drop(to);
    let status = child.wait()?;
    anyhow::ensure!(status.success(), "echo process: {status}");
    print_percentiles(a.ops, elapsed, ns);
    Ok(())
}

fn echo() -> anyhow::Result<()> {
    use std::io::{Read, Write};
    let (mut input, mut output) = (std::io::stdin().lock(), std::io::stdout().lock());
    let mut byte = [0u8];
    // Unbuffered both ways: StdinLock reads through an 8 KiB buffer, but the parent
    // sends one byte at a time and waits for it to come back.
    while input.read(&mut byte)? == 1 {
        output.write_all(&byte)?;
        output.flush()?;
    }
    Ok(())
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
    let _supervisor = match &a.seccomp {
        Some(how) => Some(crate::notify_bench::supervise(how, &files[0])?),
        None => None,
    };
    let flags = if a.read {
        libc::O_RDONLY
    } else {
        libc::O_WRONLY | libc::O_TRUNC
    };
    for i in 0..a.warmup {
        open_close(&files[(i as usize) % files.len()], flags)?;
    }
    let start = Instant::now();
    let mut ns: Vec<u64> = Vec::with_capacity(a.ops as usize);
    for i in 0..a.ops {
        ns.push(open_close(&files[(i as usize) % files.len()], flags)?);
    }
    print_percentiles(a.ops, start.elapsed(), ns);
    Ok(())
}

fn cstr(p: &std::path::Path) -> anyhow::Result<CString> {
    CString::new(p.as_os_str().as_bytes()).context("path with NUL")
}

/// `--syscall`: ns per call of one system call, `ops` calls in a tight loop.
fn syscall(a: &Args, name: &str) -> anyhow::Result<()> {
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null")?;
    let nfd = std::os::fd::AsRawFd::as_raw_fd(&null);
    let file = a.dir.join("syscall.f");
    std::fs::write(&file, b"x")?;
    let (file, dir) = (cstr(&file)?, cstr(&a.dir)?);
    let byte = [b'x'];
    let call: Box<dyn Fn() -> bool> = match name {
        // SAFETY: writing one byte of a live buffer to a live descriptor.
        "write" => Box::new(move || unsafe { libc::write(nfd, byte.as_ptr().cast(), 1) } == 1),
        // SAFETY: closing fd -1 fails with EBADF and touches nothing.
        "close" => Box::new(|| unsafe { libc::close(-1) } == -1),
        // SAFETY: duplicates a live descriptor and closes the duplicate it made.
        "dup" => Box::new(move || unsafe {
            let d = libc::dup(nfd);
            d >= 0 && libc::close(d) == 0
        }),
        // SAFETY: reads the flags of a live descriptor.
        "fcntl" => Box::new(move || unsafe { libc::fcntl(nfd, libc::F_GETFD) } >= 0),
        // SAFETY: a NUL-terminated path that lives as long as the closure.
        "chdir" => Box::new(move || unsafe { libc::chdir(dir.as_ptr()) } == 0),
        // SAFETY: opens a NUL-terminated path and closes the descriptor it made.
        "open-read" => Box::new(move || unsafe {
            let d = libc::open(file.as_ptr(), libc::O_RDONLY);
            d >= 0 && libc::close(d) == 0
        }),
        other => anyhow::bail!("unknown --syscall {other}"),
    };
    for _ in 0..a.warmup {
        anyhow::ensure!(call(), "{name}: {}", std::io::Error::last_os_error());
    }
    let start = Instant::now();
    for _ in 0..a.ops {
        anyhow::ensure!(call(), "{name}: {}", std::io::Error::last_os_error());
    }
    let ns = start.elapsed().as_nanos() as f64 / a.ops.max(1) as f64;
    println!("{}", serde_json::json!({ "ops": a.ops, "ns_per_op": ns }));
    Ok(())
}

pub fn run(a: Args) -> anyhow::Result<()> {
    if a.echo {
        return echo();
    }
    if let Some(name) = &a.syscall {
        return syscall(&a, name);
    }
    if a.pingpong {
        return pingpong(&a);
    }
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
