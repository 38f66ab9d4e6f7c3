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
//!
//! The daemon attaches the programs and opens the maps by the names in
//! `monitor_common::programs`. `#[tracepoint]` names a program after its function and
//! `#[map]` a map after its static, so every program and map here is checked against that
//! table at compile time ([`listed!`], [`map_listed!`]); a unit test of the daemon checks
//! the other direction on the built object (nothing in the table is missing here).
//!
//! Diagnostics (a record lost to a full ring buffer, a path that could not be read) go
//! through aya-log at debug/trace level. The daemon sets the level at load time
//! (`AYA_LOG_LEVEL`, a read-only global), so below debug the verifier sees the logging
//! branches as dead code: they cost nothing.
#![no_std]
#![no_main]

/// Compile-time check that the program `$name` (a `#[tracepoint]` function, which names
/// the program) is in `monitor_common::programs::PROGRAMS` under category `$category`.
macro_rules! listed {
    ($category:ident, $name:ident) => {
        const _: () = assert!(
            monitor_common::programs::listed(
                stringify!($name),
                monitor_common::programs::Category::$category
            ),
            concat!(
                "program `",
                stringify!($name),
                "` is not in monitor_common::programs::PROGRAMS under ",
                stringify!($category)
            )
        );
    };
}

/// Compile-time check that the map static `$name` (which `#[map]` uses as the map's name)
/// is the name of `monitor_common::programs::MapId::$id`.
macro_rules! map_listed {
    ($name:ident, $id:ident) => {
        const _: () = assert!(
            monitor_common::programs::str_eq(
                monitor_common::programs::MapId::$id.name(),
                stringify!($name)
            ),
            concat!(
                "map `",
                stringify!($name),
                "` is not MapId::",
                stringify!($id)
            )
        );
    };
}

/// The `tracing` target of this crate's aya-log records in the daemon.
const LOG_TARGET: &str = "monitor::kernel::ebpf";

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
