//! Fault injection on the daemon's state directory (real daemon, real files, real tmpfs):
//! damaged stores and ledgers never keep the daemon down, a full disk fails a
//! registration with its reason and heals without a restart, and the state directory is
//! private whatever it was mounted with.
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use e2e::{Daemon, confgate_bin, require_root};
use serde_json::Value;

/// How long a started daemon may take to answer `confgate stats`.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);

/// `confgate <args>` against `d`, killed and failed if it does not finish by the deadline.
fn cli_within(d: &Daemon, args: &[&str], deadline: Duration) -> Output {
    let mut child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run confgate");
    let end = Instant::now() + deadline;
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "confgate {args:?} did not answer within {deadline:?}\n--- daemon log ---\n{}",
                d.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The daemon's counters; fails unless it answers within [`ANSWER_DEADLINE`].
fn stats(d: &Daemon) -> serde_json::Map<String, Value> {
    let o = cli_within(d, &["stats", "--json"], ANSWER_DEADLINE);
    assert!(
        o.status.success(),
        "confgate stats failed: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log()
    );
    match serde_json::from_slice(&o.stdout) {
        Ok(Value::Object(m)) => m,
        other => panic!("stats --json: {other:?}"),
    }
}

fn counter(d: &Daemon, name: &str) -> u64 {
    let s = stats(d);
    s.get(name)
        .and_then(Value::as_u64)
        .unwrap_or_else(|| panic!("no counter {name} in {s:?}"))
}

/// Files in `dir` named `<name>.damaged-*`.
fn damaged_copies(dir: &Path, name: &str) -> Vec<PathBuf> {
    let prefix = format!("{name}.damaged-");
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The records of a ledger file (lines that parse as JSON).
fn ledger_records(path: &Path) -> Vec<Value> {
    std::fs::read(path)
        .unwrap_or_default()
        .split(|&b| b == b'\n')
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect()
}

/// A session can still be registered (the daemon's store works).
fn session_works(d: &Daemon) {
    let o = d.in_session("probe", "after damage", "true");
    assert!(
        o.status.success(),
        "registration failed: {}\n--- daemon log ---\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log()
    );
}

/// A small deterministic generator (xorshift64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[derive(Clone, Copy, Debug)]
enum Damage {
    /// Cut to half its length.
    TruncateHalf,
    /// Replaced by random bytes.
    Random,
    /// 32 random bits flipped.
    BitFlips,
    /// A byte in the middle of the last line changed (ledgers).
    FlipLastRecord,
    /// A line of garbage appended (ledgers).
    GarbageLine,
    /// A file that is no ledger put in its place (`mv`), without a final newline.
    Replaced,
}

impl Damage {
    /// Whether the daemon must notice it (a bit flip may land in unused space).
    fn always_detected(self) -> bool {
        !matches!(self, Damage::BitFlips)
    }

    fn apply(self, path: &Path, rng: &mut Rng) {
        let mut b = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match self {
            Damage::TruncateHalf => b.truncate(b.len() / 2),
            Damage::Random => b = rng.bytes(64 * 1024),
            Damage::BitFlips => {
                for _ in 0..32 {
                    let i = (rng.next() % b.len().max(1) as u64) as usize;
                    if let Some(x) = b.get_mut(i) {
                        *x ^= 1 << (rng.next() % 8);
                    }
                }
            }
            Damage::FlipLastRecord => {
                let end = b.len() - 1; // the final newline
                let start = b[..end]
                    .iter()
                    .rposition(|&c| c == b'\n')
                    .map_or(0, |i| i + 1);
                let mid = start + (end - start) / 2;
                b[mid] = if b[mid] == b'7' { b'8' } else { b'7' };
            }
            Damage::GarbageLine => b.extend_from_slice(b"\x1b[31mnot a record \xff\xfe\n"),
            Damage::Replaced => b = b"PermitRootLogin yes".to_vec(),
        }
        std::fs::write(path, &b).unwrap();
    }
}

#[test]
fn damaged_state_files_never_keep_the_daemon_down() {
    if !require_root("damaged_state_files_never_keep_the_daemon_down") {
        return;
    }
    let mut d = Daemon::start();
    session_works(&d);
    let state = d.state_dir();
    let approver = state.join("approver");
    let store_cases = [Damage::TruncateHalf, Damage::Random, Damage::BitFlips];
    let ledger_cases = [
        Damage::FlipLastRecord,
        Damage::GarbageLine,
        Damage::TruncateHalf,
        Damage::Replaced,
        Damage::Random,
        Damage::BitFlips,
    ];
    // Stores first: their damage is recorded in the ledgers, so those have records to damage.
    let mut cases: Vec<(PathBuf, Damage)> = Vec::new();
    for store in [state.join("confgate.redb"), approver.join("approver.redb")] {
        cases.extend(store_cases.iter().map(|c| (store.clone(), *c)));
    }
    for ledger in [state.join("ledger.jsonl"), approver.join("ledger.jsonl")] {
        cases.extend(ledger_cases.iter().map(|c| (ledger.clone(), *c)));
    }
    let mut rng = Rng(0x5eed_0fda_3a6e);
    for (file, damage) in cases {
        let dir = file.parent().unwrap().to_owned();
        let name = file.file_name().unwrap().to_string_lossy().into_owned();
        let copies_before = damaged_copies(&dir, &name).len();
        d.kill();
        damage.apply(&file, &mut rng);
        // Panics with the log if the daemon exits or is not ready in time.
        d.start_again();
        let s = stats(&d);
        let damaged = s["state_damaged_files"].as_u64().unwrap();
        let what = format!("{damage:?} of {}", file.display());
        session_works(&d);
        if !damage.always_detected() {
            continue;
        }
        // Detected: counted, kept aside, a new file in its place, and in a ledger.
        // (A ledger whose torn last line is a plausible cut append is not damage.)
        let torn_only = matches!(damage, Damage::TruncateHalf) && name.ends_with(".jsonl");
        let copies = damaged_copies(&dir, &name);
        if torn_only && copies.len() == copies_before {
            let recs = ledger_records(&file);
            assert!(
                recs.iter().any(|r| r["kind"] == "ledger_recovered"),
                "{what}: neither moved aside nor recovered: {recs:?}"
            );
            continue;
        }
        assert!(damaged >= 1, "{what}: state_damaged_files = {damaged}");
        assert_eq!(copies.len(), copies_before + 1, "{what}: {copies:?}");
        if name.ends_with(".jsonl") {
            assert!(s["ledger_chain_restarts"].as_u64().unwrap() >= 1, "{what}");
            let recs = ledger_records(&file);
            assert_eq!(
                recs[0]["kind"], "ledger_chain_restarted",
                "{what}: {recs:?}"
            );
            assert_eq!(recs[0]["seq"], 1, "{what}");
            let kept = recs[0]["body"]["damaged_file"].as_str().unwrap();
            assert!(copies.iter().any(|c| c.to_string_lossy() == kept), "{what}");
        } else {
            let ledger = dir.join("ledger.jsonl");
            let recs = ledger_records(&ledger);
            assert!(
                recs.iter().any(|r| r["kind"] == "state_file_damaged"
                    && r["body"]["file"] == file.to_string_lossy().as_ref()),
                "{what}: not in {}: {recs:?}",
                ledger.display()
            );
        }
    }
}

#[test]
fn a_session_that_replaces_the_ledger_cannot_keep_the_gate_off() {
    if !require_root("a_session_that_replaces_the_ledger_cannot_keep_the_gate_off") {
        return;
    }
    let mut d = Daemon::start();
    // The host-wide fanotify gate and unconfined sessions (`--no-confine`).
    d.confine_sessions = false;
    let ledger = d.state_dir().join("ledger.jsonl");
    let junk = d.dir.path().join("junk");
    // Renames are not held at the gate: the session can put a file over the ledger.
    let o = d.in_session(
        "redteam",
        "lock the gate out",
        &format!(
            "printf 'not a ledger\\n' > {junk:?} && mv {junk:?} {ledger:?}",
            junk = junk.display().to_string(),
            ledger = ledger.display().to_string()
        ),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.kill();
    d.start_again();
    assert!(counter(&d, "ledger_chain_restarts") >= 1);
    let recs = ledger_records(&ledger);
    assert_eq!(recs[0]["kind"], "ledger_chain_restarted", "{recs:?}");
    let kept = PathBuf::from(recs[0]["body"]["damaged_file"].as_str().unwrap());
    assert_eq!(std::fs::read(&kept).unwrap(), b"not a ledger\n");
    // The daemon works again: sessions register, and the new chain verifies.
    session_works(&d);
    let o = cli_within(&d, &["audit", "verify"], ANSWER_DEADLINE);
    assert!(
        o.status.success(),
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn a_symlink_moved_over_the_ledger_is_never_written_through() {
    if !require_root("a_symlink_moved_over_the_ledger_is_never_written_through") {
        return;
    }
    let mut d = Daemon::start();
    // The host-wide fanotify gate and unconfined sessions (`--no-confine`).
    d.confine_sessions = false;
    let ledger = d.state_dir().join("ledger.jsonl");
    // The daemon runs as root: a ledger opened through a link would append to any file.
    let victim = d.dir.path().join("victim");
    std::fs::write(&victim, b"").unwrap();
    let link = d.dir.path().join("link");
    let o = d.in_session(
        "redteam",
        "ledger through a link",
        &format!(
            "ln -s {victim:?} {link:?} && mv {link:?} {ledger:?}",
            victim = victim.display().to_string(),
            link = link.display().to_string(),
            ledger = ledger.display().to_string()
        ),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    d.kill();
    d.start_again();
    session_works(&d);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"",
        "ledger written through a link"
    );
    assert!(std::fs::symlink_metadata(&ledger).unwrap().is_file());
    let recs = ledger_records(&ledger);
    assert_eq!(recs[0]["kind"], "ledger_chain_restarted", "{recs:?}");
}

/// A tmpfs mounted for a test, detached again when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, options: &str) -> Tmpfs {
        std::fs::create_dir_all(at).unwrap();
        let o = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "confgate-test"])
            .arg(at)
            .output()
            .expect("mount");
        assert!(
            o.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        Tmpfs(at.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a daemon still holding files in it must not keep it mounted.
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

#[test]
fn a_full_disk_fails_registration_with_its_reason_and_heals_without_a_restart() {
    if !require_root("a_full_disk_fails_registration_with_its_reason_and_heals_without_a_restart") {
        return;
    }
    let mut d = Daemon::start();
    d.shut_down();
    let state = d.state_dir();
    let _mnt = Tmpfs::mount(&state, "size=16m,mode=0700");
    d.start_again();
    session_works(&d);
    // (Read leniently here so that the behaviour below is what fails on a daemon without
    // the counter.)
    let failures_before = stats(&d)
        .get("store_commit_failures")
        .and_then(Value::as_u64)
        .unwrap_or(0);

    // Fill the file system.
    let filler = state.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", filler.display()))
        .stderr(Stdio::null())
        .status();
    // Registrations write new pages sooner or later; one of them must fail, and say why.
    let mut refused = None;
    for _ in 0..100 {
        let o = d.in_session("full", "disk full", "true");
        if !o.status.success() {
            refused = Some(o);
            break;
        }
    }
    let o = refused.unwrap_or_else(|| panic!("no registration failed on a full disk\n{}", d.log()));
    assert_eq!(o.status.code(), Some(125));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("No space left on device"),
        "the reason is missing: {err}"
    );

    // Space again: the very next registration works, with the same daemon.
    std::fs::remove_file(&filler).unwrap();
    session_works(&d);
    assert!(counter(&d, "store_commit_failures") > failures_before);
    assert!(d.log().contains("store write failed"), "no log line");
    assert!(counter(&d, "store_reopens") >= 1);
    let o = d.in_session("full", "disk freed", "true");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn a_world_writable_state_dir_is_made_private() {
    if !require_root("a_world_writable_state_dir_is_made_private") {
        return;
    }
    let mut d = Daemon::start();
    d.shut_down();
    let state = d.state_dir();
    // A fresh tmpfs is 1777.
    let _mnt = Tmpfs::mount(&state, "size=16m");
    assert_eq!(mode(&state), 0o1777);
    d.start_again();
    assert_eq!(mode(&state), 0o700);
    assert!(d.log().contains("state directory tightened to 0700"));
    session_works(&d);
}

#[test]
fn a_state_dir_that_cannot_be_made_private_is_refused() {
    if !require_root("a_state_dir_that_cannot_be_made_private_is_refused") {
        return;
    }
    let mut d = Daemon::start();
    d.shut_down();
    let state = d.state_dir();
    let _mnt = Tmpfs::mount(&state, "size=1m,ro");
    assert_eq!(mode(&state), 0o1777);
    let mut child = Command::new(confgate_bin())
        .arg("--config")
        .arg(&d.config)
        .arg("daemon")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > end {
            let _ = child.kill();
            panic!("the daemon kept running on a world-writable state directory");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot be made 0700"), "{err}");
}
