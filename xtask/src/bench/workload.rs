//! Running the workload (`xtask worker`), optionally inside an agent session.
use std::{path::Path, process::Command};

use anyhow::{Context as _, ensure};
use serde_json::Value;

use super::scenario::{Cx, Daemon};

/// `xtask`, or `confgate run -- xtask` in a new session of `session`'s daemon.
fn worker_command(cx: &Cx, session: Option<&Daemon>) -> Command {
    worker_command_with(cx, session, false)
}

/// [`worker_command`]; `no_confine`: `confgate run --no-confine` (builds that confine).
fn worker_command_with(cx: &Cx, session: Option<&Daemon>, no_confine: bool) -> Command {
    match session {
        Some(d) => {
            let mut c = session_command(cx, d, no_confine);
            c.arg(&cx.xtask);
            c
        }
        None => Command::new(&cx.xtask),
    }
}

/// `confgate --config <daemon's> run --agent bench [--no-confine] --`: append the command.
pub fn session_command(cx: &Cx, d: &Daemon, no_confine: bool) -> Command {
    let mut c = Command::new(&cx.confgate);
    c.arg("--config")
        .arg(&d.config)
        .args(["run", "--agent", "bench"]);
    if no_confine && cx.features.confine {
        c.arg("--no-confine");
    }
    c.arg("--");
    c
}

/// Runs the worker and parses the JSON object it prints.
fn output_of(cmd: &mut Command) -> anyhow::Result<Value> {
    let out = cmd.output().context("spawning the worker")?;
    ensure!(
        out.status.success(),
        "worker failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).context("worker output")
}

/// Run `ops` iterations of the loop in `dir` and return ns per iteration. With `session`,
/// the worker runs under `confgate run` of that daemon (an agent session).
pub fn run(cx: &Cx, dir: &Path, ops: u64, session: Option<&Daemon>) -> anyhow::Result<f64> {
    run_paced(cx, dir, ops, session, None)
}

/// [`run`], paced to `rate` iterations per second when given; a session is started with
/// `--no-confine` (see scenario 3).
pub fn run_paced(
    cx: &Cx,
    dir: &Path,
    ops: u64,
    session: Option<&Daemon>,
    rate: Option<u64>,
) -> anyhow::Result<f64> {
    let mut cmd = worker_command_with(cx, session, true);
    cmd.arg("worker")
        .arg("--dir")
        .arg(dir)
        .arg("--ops")
        .arg(ops.to_string())
        .args(rate.map(|r| format!("--rate={r}")));
    let v = output_of(&mut cmd)?;
    v["ns_per_op"].as_f64().context("worker output: ns_per_op")
}

/// ns per call of one system call (`xtask worker --syscall NAME`), outside any session.
pub fn syscall(cx: &Cx, dir: &Path, name: &str, ops: u64) -> anyhow::Result<f64> {
    let mut cmd = worker_command(cx, None);
    cmd.args(["worker", "--syscall", name, "--dir"])
        .arg(dir)
        .args([
            "--ops",
            &ops.to_string(),
            "--warmup",
            &(ops / 10).to_string(),
        ]);
    let v = output_of(&mut cmd)?;
    v["ns_per_op"].as_f64().context("worker output: ns_per_op")
}

/// How the worker of [`latency`] runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct How {
    /// Open read-only instead of for writing.
    pub read: bool,
    /// `confgate run --no-confine`: an unconfined session (fanotify gate).
    pub no_confine: bool,
    /// `xtask worker --seccomp HOW` (scenario 10).
    pub seccomp: Option<&'static str>,
}

/// Per-open latencies of `xtask worker --latency`.
#[derive(Clone, Copy, Debug, Default)]
pub struct Latency {
    pub p50_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
}

/// Time `ops` opens of `files` existing files in `dir` (after `warmup` untimed ones),
/// inside a session of `session` when given, run as `how` says.
pub fn latency(
    cx: &Cx,
    dir: &Path,
    ops: u64,
    files: u64,
    warmup: u64,
    session: Option<&Daemon>,
    how: How,
) -> anyhow::Result<Latency> {
    let mut cmd = worker_command_with(cx, session, how.no_confine);
    cmd.args(["worker", "--latency", "--dir"])
        .arg(dir)
        .args(["--ops", &ops.to_string(), "--files", &files.to_string()])
        .args(["--warmup", &warmup.to_string()]);
    if how.read {
        cmd.arg("--read");
    }
    if let Some(s) = how.seccomp {
        cmd.args(["--seccomp", s]);
    }
    parse_latency(&output_of(&mut cmd)?)
}

/// Round trips of one byte between the worker and an echoing child process
/// (`xtask worker --pingpong`), outside any session: the machine's wake-up floor.
pub fn pingpong(cx: &Cx, ops: u64, same_cpu: bool) -> anyhow::Result<Latency> {
    let mut cmd = worker_command(cx, None);
    cmd.args(["worker", "--pingpong", "--dir"])
        .arg(&cx.unwatched)
        .args([
            "--ops",
            &ops.to_string(),
            "--warmup",
            &(ops / 10).to_string(),
        ]);
    if same_cpu {
        cmd.arg("--same-cpu");
    }
    parse_latency(&output_of(&mut cmd)?)
}

fn parse_latency(v: &Value) -> anyhow::Result<Latency> {
    let f = |k: &str| v[k].as_f64().with_context(|| format!("worker output: {k}"));
    Ok(Latency {
        p50_ns: f("p50_ns")?,
        p99_ns: f("p99_ns")?,
        p999_ns: f("p999_ns")?,
    })
}
