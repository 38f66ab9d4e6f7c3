//! End-to-end load on the gate (issue 13, "Load"): many concurrent held opens of one
//! session, then a decision for each. The daemon stays up with a bounded number of threads,
//! and every writer is released soon after its decision (a deny used to wait for every
//! earlier decision's ledger fsync, one after the other: ~17 s for 2000).
//!
//! `CONFGATE_LOAD_WRITERS` sets the number of writers (CI: 200; the figures in
//! BENCHMARKS.md come from 2000). The figures are printed as one `gate-load:` line.
use std::collections::HashMap;
use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use e2e::gate::{Gate, rule, wait_child};
use e2e::*;
use serde_json::Value;

/// Most threads the daemon may have: its blocking pool's bound (64), the runtime's
/// workers, the permission listener and its helpers, the pipeline.
const MAX_DAEMON_THREADS: u64 = 96;
/// Longest time from a decision's acknowledgement to its writer's release.
const MAX_RELEASE_LAG: Duration = Duration::from_secs(1);

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn status_field(pid: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

#[test]
fn many_held_opens_are_released_promptly_with_bounded_threads() {
    if !require_root("many_held_opens_are_released_promptly_with_bounded_threads") {
        return;
    }
    let n: usize = std::env::var("CONFGATE_LOAD_WRITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let g = Gate::start(|w| {
        rule(
            w,
            "load",
            "mode = \"hold\"\ntimeout = \"300s\"\nfail = \"allow\"",
        )
    });
    for i in 1..=n {
        std::fs::write(g.gated(&format!("f{i}")), "x=0\n").expect("seed");
    }
    let pid = g.d.pid().to_string();
    let script = g.d.dir.path().join("writers.sh");
    std::fs::write(
        &script,
        format!(
            "for i in $(seq 1 {n}); do\n  ( {{ echo x=1 >> gated/f$i; }} 2>/dev/null; echo \"$i $EPOCHREALTIME\" ) &\ndone\nwait\n"
        ),
    )
    .expect("script");
    let writers = g.spawn_in_session("load", &format!("exec bash {}", script.display()));
    // Every request, from the approvals stream (the list shows a page at a time).
    let mut watch = Command::new(confgate_bin())
        .arg("--config")
        .arg(&g.d.config)
        .args(["approvals", "watch", "--json"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("approvals watch");
    let out = watch.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    let mut ids: HashMap<usize, u64> = HashMap::new();
    let mut max_threads = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while ids.len() < n {
        max_threads = max_threads.max(status_field(&pid, "Threads:"));
        if let Ok(v) = rx.recv_timeout(Duration::from_millis(200))
            && v["state"] == "pending"
            && let Some(i) = v["context"]["path"]
                .as_str()
                .and_then(|p| p.rsplit_once("/f"))
                .and_then(|(_, i)| i.parse().ok())
            && let Some(id) = v["id"].as_u64()
        {
            ids.insert(i, id);
        }
        assert!(
            Instant::now() < deadline,
            "{} of {n} requests after 120 s\n{}",
            ids.len(),
            g.d.log()
        );
    }
    let _ = watch.kill();
    let _ = watch.wait();
    let rss_held_kib = status_field(&pid, "VmRSS:");
    // Decide: deny the odd ones, approve the even ones, from four deciders at once.
    let decided_at: std::sync::Mutex<HashMap<usize, u128>> = Default::default();
    let mut order: Vec<(usize, u64)> = ids.into_iter().collect();
    order.sort();
    std::thread::scope(|s| {
        for part in order.chunks(order.len().div_ceil(4)) {
            let (g, decided_at) = (&g, &decided_at);
            s.spawn(move || {
                for &(i, id) in part {
                    let id = id.to_string();
                    let args: Vec<&str> = if i % 2 == 1 {
                        vec!["approvals", "deny", &id]
                    } else {
                        vec!["approvals", "approve", &id, "--ttl", "10m"]
                    };
                    ok(&g.cli(&args));
                    decided_at
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(i, now_ns());
                }
            });
        }
        // Threads while the decisions are applied.
        let until = Instant::now() + Duration::from_secs(2);
        while Instant::now() < until {
            max_threads = max_threads.max(status_field(&pid, "Threads:"));
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let o = wait_child(writers, Duration::from_secs(120));
    let decided_at = decided_at.into_inner().unwrap_or_else(|e| e.into_inner());
    let mut lags: Vec<i128> = Vec::new();
    for line in String::from_utf8_lossy(&o.stdout).lines() {
        let Some((i, t)) = line.split_once(' ') else {
            continue;
        };
        let (Ok(i), Some((secs, micros))) = (i.parse::<usize>(), t.split_once(['.', ','])) else {
            continue;
        };
        let released = secs.parse::<u128>().unwrap_or(0) * 1_000_000_000
            + micros.parse::<u128>().unwrap_or(0) * 1000;
        let decided = decided_at[&i];
        lags.push(released as i128 - decided as i128);
    }
    assert_eq!(lags.len(), n, "every writer reported its release: {o:?}");
    lags.sort();
    let p = |q: f64| lags[((lags.len() - 1) as f64 * q) as usize] as f64 / 1e6;
    let rss_after_kib = status_field(&pid, "VmRSS:");
    println!(
        "gate-load: writers={n} max_daemon_threads={max_threads} rss_held_mib={:.1} rss_after_mib={:.1} release_lag_ms p50={:.1} p99={:.1} max={:.1}",
        rss_held_kib as f64 / 1024.0,
        rss_after_kib as f64 / 1024.0,
        p(0.5),
        p(0.99),
        p(1.0)
    );
    assert!(
        max_threads <= MAX_DAEMON_THREADS,
        "daemon threads: {max_threads}"
    );
    let worst =
        Duration::from_nanos(u64::try_from(lags[lags.len() - 1].max(0)).unwrap_or(u64::MAX));
    assert!(
        worst <= MAX_RELEASE_LAG,
        "a writer was released {worst:?} after its decision (p50 {:.1} ms)",
        p(0.5)
    );
    // Every write was decided as asked: approved ones landed, denied ones did not.
    for i in 1..=n {
        let content = std::fs::read_to_string(g.gated(&format!("f{i}"))).expect("read");
        let want = if i % 2 == 1 { "x=0\n" } else { "x=0\nx=1\n" };
        assert_eq!(content, want, "f{i}");
    }
    assert_eq!(g.stat("gate_hold_timeouts"), 0);
}
