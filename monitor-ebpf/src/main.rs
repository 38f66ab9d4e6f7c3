//! confgate's kernel side: syscall and scheduler tracepoints that report write-like
//! operations to the daemon through one ring buffer.
//!
//! Filtering happens here so that unwatched work costs as little as possible:
//! - a process in an agent session (`SESSIONS`, keyed by tgid) is always reported;
//! - any other process is reported only when an absolute path argument starts with a
//!   watched prefix (`PREFIXES`, an LPM trie filled by the daemon), and only if the
//!   daemon enabled that (`KernelConfig::path_filter`); otherwise the daemon's fanotify
//!   group covers those processes;
//! - opens without write intent are never reported.
//!
//! Session membership is inherited in `sched_process_fork`, so no user-space action
//! (double fork, setsid, nohup, reparenting) can shed it. Every lost record is counted.
//!
//! The programs, one module per job:
//! - [`syscalls`]: enter and exit of the path and metadata syscalls (`open*`, `creat`,
//!   `rename*`, `unlink*`, `rmdir`, `truncate`, `ftruncate`, `chmod`/`fchmod*`,
//!   `chown`/`lchown`/`fchown*`, `link*`, `symlink*`, `mkdir*`, `chdir`/`fchdir`);
//! - [`fds`]: enter of `write`/`pwrite64`/`writev`/`pwritev*` and `close`, enter and exit of
//!   `dup*` and `fcntl(F_DUPFD*)`;
//! - [`process`]: `sched_process_{fork,exec,exit}` and enter of `execve*` (argv).
//!
//! Shared pieces: [`maps`] (the maps and their accessors) and [`emit`] (ring-buffer output).
#![no_std]
#![no_main]

mod emit;
mod fds;
mod maps;
mod process;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
