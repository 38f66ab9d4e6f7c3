//! `exp off|tp|raw -- COMMAND...`: run COMMAND with no syscall hooks, with a trivial
//! classic tracepoint program on each syscall tracepoint confgate uses, or with a raw
//! `sys_enter`/`sys_exit` dispatcher tail-calling a trivial handler for those syscalls.
//! Prints how often the handlers ran. `tp-par` is `tp` with the programs detached from
//! `THREADS` threads (default 16) at the end, timed: does the kernel overlap the waits?
use std::process::Command;

use anyhow::{Context as _, bail};
use aya::{
    Ebpf,
    maps::{PerCpuArray, ProgramArray},
    programs::{RawTracePoint, TracePoint},
};

/// The syscalls confgate hooks (x86_64 numbers), and whether it hooks their exit too.
const SYSCALLS: &[(&str, u32, bool)] = &[
    ("open", 2, true),
    ("openat", 257, true),
    ("openat2", 437, true),
    ("creat", 85, true),
    ("write", 1, false),
    ("pwrite64", 18, false),
    ("writev", 20, false),
    ("pwritev", 296, false),
    ("pwritev2", 328, false),
    ("close", 3, false),
    ("dup", 32, true),
    ("dup2", 33, false),
    ("dup3", 292, false),
    ("fcntl", 72, true),
    ("rename", 82, true),
    ("renameat", 264, true),
    ("renameat2", 316, true),
    ("unlink", 87, true),
    ("unlinkat", 263, true),
    ("rmdir", 84, true),
    ("truncate", 76, true),
    ("ftruncate", 77, true),
    ("chmod", 90, true),
    ("fchmod", 91, true),
    ("fchmodat", 268, true),
    ("fchmodat2", 452, true),
    ("chown", 92, true),
    ("lchown", 94, true),
    ("fchown", 93, true),
    ("fchownat", 260, true),
    ("link", 86, true),
    ("linkat", 265, true),
    ("symlink", 88, true),
    ("symlinkat", 266, true),
    ("mkdir", 83, true),
    ("mkdirat", 258, true),
    ("chdir", 80, true),
    ("fchdir", 81, true),
    ("execve", 59, false),
    ("execveat", 322, false),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let (Some(mode), Some("--")) = (args.get(1), args.get(2).map(String::as_str)) else {
        bail!("usage: exp off|tp|raw -- COMMAND...");
    };
    let cmd = &args[3..];
    let mut ebpf = Ebpf::load(aya::include_bytes_aligned!(concat!(
        env!("OUT_DIR"),
        "/exp"
    )))?;
    let mut enter: ProgramArray<_> = ebpf.take_map("ENTER").context("ENTER")?.try_into()?;
    let mut exit: ProgramArray<_> = ebpf.take_map("EXIT").context("EXIT")?.try_into()?;
    let mut link_ids = Vec::new();
    match mode.as_str() {
        "off" => {}
        "tp" | "tp-par" => {
            for (prog, dir) in [("tp_enter", "enter"), ("tp_exit", "exit")] {
                let p: &mut TracePoint = ebpf.program_mut(prog).context(prog)?.try_into()?;
                p.load()?;
                for (name, _, has_exit) in SYSCALLS {
                    if dir == "enter" || *has_exit {
                        let id = p.attach("syscalls", &format!("sys_{dir}_{name}"))?;
                        link_ids.push((prog, id));
                    }
                }
            }
        }
        "raw" => {
            for (prog, array, exits_only) in [
                ("raw_h_enter", &mut enter, false),
                ("raw_h_exit", &mut exit, true),
            ] {
                let p: &mut RawTracePoint = ebpf.program_mut(prog).context(prog)?.try_into()?;
                p.load()?;
                let fd = p.fd()?;
                for (_, nr, has_exit) in SYSCALLS {
                    if !exits_only || *has_exit {
                        array.set(*nr, fd, 0)?;
                    }
                }
            }
            for (prog, tp) in [("raw_enter", "sys_enter"), ("raw_exit", "sys_exit")] {
                let p: &mut RawTracePoint = ebpf.program_mut(prog).context(prog)?.try_into()?;
                p.load()?;
                p.attach(tp)?;
            }
        }
        m => bail!("unknown mode {m}"),
    }
    let status = Command::new(&cmd[0]).args(&cmd[1..]).status()?;
    let count: PerCpuArray<_, u64> = ebpf.take_map("COUNT").context("COUNT")?.try_into()?;
    let total = |i: u32| count.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
    eprintln!(
        "{mode}: enter handlers {} exit handlers {}",
        total(0),
        total(1)
    );
    if mode == "tp-par" {
        let mut links = Vec::new();
        for (prog, id) in link_ids {
            let p: &mut TracePoint = ebpf.program_mut(prog).context(prog)?.try_into()?;
            links.push(p.take_link(id)?);
        }
        let t = std::time::Instant::now();
        let n = links.len();
        let threads: usize = std::env::var("THREADS")
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or(16)
            .max(1);
        let mut chunks: Vec<Vec<_>> = (0..threads).map(|_| Vec::new()).collect();
        for (i, l) in links.into_iter().enumerate() {
            chunks[i % threads].push(l);
        }
        std::thread::scope(|s| {
            for c in chunks {
                s.spawn(move || drop(c));
            }
        });
        eprintln!(
            "detached {n} links from {threads} threads in {:?}",
            t.elapsed()
        );
    }
    if !status.success() {
        bail!("{cmd:?}: {status}");
    }
    Ok(())
}
