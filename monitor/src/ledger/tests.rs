//! Ledger tests on real files: chain round trip, every kind of tampering, reopen, torn
//! tails, concurrent appends.
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use super::*;

fn ledger_with(n: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state/ledger.jsonl");
    let mut l = Ledger::open(&path).unwrap();
    for i in 1..=n {
        l.append("change", json!({"i": i, "path": format!("/etc/file{i}")}))
            .unwrap();
    }
    (dir, path)
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect()
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).unwrap();
}

fn problems(path: &Path) -> Vec<Problem> {
    verify(path).unwrap().problems
}

/// Replaces a field of the JSON line `i` (0-based) with `value`, keeping the stored hash.
fn edit(path: &Path, i: usize, f: impl FnOnce(&mut LedgerRecord)) {
    let mut ls = lines(path);
    let mut r = LedgerRecord::parse_line(ls[i].as_bytes()).unwrap();
    f(&mut r);
    ls[i] = r.to_line();
    write_lines(path, &ls);
}

#[test]
fn chain_round_trips() {
    let (_d, path) = ledger_with(0);
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(l.head(), (0, GENESIS_PREV));
    let tricky = json!({
        "path": "/etc/evil\nname\r\u{0}",
        "bytes": "\\xff\\xfe",
        "nested": {"z": 1, "a": [1.5, -2, null, true]},
    });
    let a = l.append("request", tricky.clone()).unwrap();
    let b = l.append("decision", json!({"approve": true})).unwrap();
    assert_eq!((a.seq, b.seq), (1, 2));
    assert_eq!(a.prev, GENESIS_PREV);
    assert_eq!(b.prev, a.hash);
    assert_eq!(l.head(), (2, b.hash.as_str()));
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text.lines().count(), 2, "one line per record: {text}");
    let back = read(&path, None).unwrap();
    assert_eq!(back, vec![a.clone(), b.clone()]);
    assert_eq!(back[0].body, tricky);
    let report = verify(&path).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!((report.lines, report.records), (2, 2));
    let head = report.head.unwrap();
    assert_eq!((head.seq, head.hash, head.line), (2, b.hash, 2));
    assert!(parse_time(&a.time).is_some());
    assert!(a.time.ends_with('Z') && a.time.len() == "2024-01-01T00:00:00.000Z".len());
}

#[test]
fn creates_directory_0750_and_file_0640() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/ledger.jsonl");
    let _l = Ledger::open(&path).unwrap();
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode(&dir.path().join("a/b")), 0o750);
    assert_eq!(mode(&path), 0o640);
}

#[test]
fn rejects_bad_kind_body_and_size_without_writing() {
    let (_d, path) = ledger_with(1);
    let mut l = Ledger::open(&path).unwrap();
    assert!(matches!(
        l.append("Bad Kind", json!({})),
        Err(LedgerError::InvalidKind(_))
    ));
    assert!(matches!(
        l.append("x\n", json!({})),
        Err(LedgerError::InvalidKind(_))
    ));
    assert!(matches!(
        l.append("ok", json!([1])),
        Err(LedgerError::BodyNotObject)
    ));
    let huge = "x".repeat(MAX_LINE_BYTES);
    assert!(matches!(
        l.append("ok", json!({ "s": huge })),
        Err(LedgerError::TooLarge { .. })
    ));
    let c: std::collections::HashMap<_, _> = l.counters().into_iter().collect();
    assert_eq!(c["ledger_append_failed"], 4);
    assert_eq!(lines(&path).len(), 1);
    let r = l.append("ok", json!({})).unwrap();
    assert_eq!(r.seq, 2);
    assert!(verify(&path).unwrap().is_intact());
}

#[test]
fn a_second_writer_is_refused() {
    let (_d, path) = ledger_with(1);
    let _l = Ledger::open(&path).unwrap();
    assert!(matches!(
        Ledger::open(&path),
        Err(LedgerError::Locked { .. })
    ));
}

#[test]
fn edited_body_field_is_a_content_change() {
    let (_d, path) = ledger_with(5);
    edit(&path, 2, |r| r.body["path"] = json!("/etc/other"));
    let p = problems(&path);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        matches!(
            &p[0],
            Problem::HashMismatch {
                line: 3,
                seq: 3,
                ..
            }
        ),
        "{p:?}"
    );
    assert!(p[0].to_string().contains("content changed"));
}

#[test]
fn edited_time_is_a_content_change() {
    let (_d, path) = ledger_with(3);
    edit(&path, 0, |r| r.time = "2001-01-01T00:00:00.000Z".into());
    let p = problems(&path);
    assert!(
        matches!(
            p.as_slice(),
            [Problem::HashMismatch {
                line: 1,
                seq: 1,
                ..
            }]
        ),
        "{p:?}"
    );
}

#[test]
fn replaced_record_with_recomputed_hash_breaks_the_next_link() {
    let (_d, path) = ledger_with(4);
    edit(&path, 1, |r| {
        r.body = json!({"forged": true});
        r.hash = r.computed_hash();
    });
    let p = problems(&path);
    assert!(
        matches!(
            p.as_slice(),
            [Problem::BrokenLink {
                line: 3,
                seq: 3,
                prev_line: Some(2),
                ..
            }]
        ),
        "{p:?}"
    );
    assert!(p[0].to_string().contains("changed or replaced"));
}

#[test]
fn deleted_middle_record_is_reported_missing() {
    let (_d, path) = ledger_with(5);
    let mut ls = lines(&path);
    ls.remove(2); // seq 3
    write_lines(&path, &ls);
    let p = problems(&path);
    assert_eq!(
        p,
        vec![Problem::Missing {
            first: 3,
            last: 3,
            after_line: Some(2),
            before_line: 3
        }]
    );
    assert_eq!(
        p[0].to_string(),
        "seq 3 is missing (1 record removed) between line 2 (seq 2) and line 3 (seq 4)"
    );
}

#[test]
fn deleted_first_records_are_reported_missing_from_the_start() {
    let (_d, path) = ledger_with(4);
    let mut ls = lines(&path);
    ls.remove(0);
    write_lines(&path, &ls);
    let p = problems(&path);
    assert_eq!(
        p,
        vec![Problem::Missing {
            first: 1,
            last: 1,
            after_line: None,
            before_line: 1
        }]
    );
    assert!(p[0].to_string().contains("from the start"));
    // Two removed from the start.
    ls.remove(0);
    write_lines(&path, &ls);
    assert!(
        problems(&path)[0]
            .to_string()
            .starts_with("seq 1..2 are missing (2 records")
    );
}

#[test]
fn swapped_records_are_reported_out_of_order() {
    let (_d, path) = ledger_with(5);
    let mut ls = lines(&path);
    ls.swap(1, 2); // file order: 1 3 2 4 5
    write_lines(&path, &ls);
    let p = problems(&path);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(
        matches!(&p[0], Problem::OutOfOrder { seq: 3 | 2, .. }),
        "{p:?}"
    );
    assert!(p[0].to_string().contains("out of order"));

    // A distant swap names exactly the two moved records.
    let (_d2, path) = ledger_with(8);
    let mut ls = lines(&path);
    ls.swap(1, 6); // 1 7 3 4 5 6 2 8
    write_lines(&path, &ls);
    let p = problems(&path);
    let moved: Vec<(u64, u64)> = p
        .iter()
        .map(|p| match p {
            Problem::OutOfOrder { line, seq, .. } => (*line, *seq),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(moved, vec![(2, 7), (7, 2)]);
}

#[test]
fn duplicated_record_is_reported() {
    let (_d, path) = ledger_with(3);
    let mut ls = lines(&path);
    let copy = ls[1].clone();
    ls.push(copy);
    write_lines(&path, &ls);
    let p = problems(&path);
    assert_eq!(
        p,
        vec![Problem::Duplicate {
            line: 4,
            seq: 2,
            first_line: 2
        }]
    );
    // The head is still the real end of the chain.
    assert_eq!(verify(&path).unwrap().head.unwrap().seq, 3);
}

#[test]
fn conflicting_record_with_same_seq_is_reported() {
    let (_d, path) = ledger_with(3);
    let mut ls = lines(&path);
    let mut r = LedgerRecord::parse_line(ls[1].as_bytes()).unwrap();
    r.body = json!({"other": 1});
    r.hash = r.computed_hash();
    ls.push(r.to_line());
    write_lines(&path, &ls);
    let p = problems(&path);
    assert_eq!(
        p,
        vec![Problem::ConflictingSeq {
            line: 4,
            seq: 2,
            first_line: 2
        }]
    );
}

#[test]
fn truncation_mid_line_is_reported_and_malformed_lines_too() {
    let (_d, path) = ledger_with(3);
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len - 20).unwrap();
    let p = problems(&path);
    assert!(
        matches!(p.as_slice(), [Problem::IncompleteLastLine { line: 3, bytes }] if *bytes > 0),
        "{p:?}"
    );
    // A cut in the middle of the file (a line damaged, lines after it intact).
    let (_d2, path) = ledger_with(3);
    let mut ls = lines(&path);
    ls[1].truncate(30);
    write_lines(&path, &ls);
    let p = problems(&path);
    assert!(
        matches!(
            p.as_slice(),
            [
                Problem::Malformed { line: 2, .. },
                Problem::Missing {
                    first: 2,
                    last: 2,
                    ..
                }
            ]
        ),
        "{p:?}"
    );
    // Strict read refuses, lenient read skips.
    assert!(matches!(
        read(&path, None),
        Err(LedgerError::Malformed { line: 2, .. })
    ));
    let out = read_lenient(&path, None).unwrap();
    assert_eq!(out.records.len(), 2);
    assert_eq!(out.skipped[0].line, 2);
}

#[test]
fn truncated_end_is_caught_by_an_anchor() {
    let (_d, path) = ledger_with(4);
    let head = verify(&path).unwrap().head.unwrap();
    let anchor = Anchor {
        seq: head.seq,
        hash: head.hash,
    };
    assert!(verify_anchored(&path, &anchor).unwrap().is_intact());
    let mut ls = lines(&path);
    ls.pop();
    write_lines(&path, &ls);
    // The file alone looks intact; the anchor shows the loss.
    assert!(verify(&path).unwrap().is_intact());
    let p = verify_anchored(&path, &anchor).unwrap().problems;
    assert!(
        matches!(p.as_slice(), [Problem::AnchorMissing { .. }]),
        "{p:?}"
    );
}

#[test]
fn reopen_continues_the_chain() {
    let (_d, path) = ledger_with(3);
    let before = verify(&path).unwrap().head.unwrap();
    let mut l = Ledger::open(&path).unwrap();
    assert_eq!(l.head(), (3, before.hash.as_str()));
    let r = l.append("grant", json!({"id": 9})).unwrap();
    assert_eq!(r.seq, 4);
    assert_eq!(r.prev, before.hash);
    drop(l);
    let report = verify(&path).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.records, 4);
}

#[test]
fn torn_tail_is_cut_and_recorded() {
    let (_d, path) = ledger_with(3);
    let mut text = std::fs::read(&path).unwrap();
    let good_len = text.len() as u64;
    let torn = br#"{"seq":4,"time":"2024-01-01T00:00:00.000Z","kind":"cha"#;
    text.extend_from_slice(torn);
    std::fs::write(&path, &text).unwrap();
    assert!(matches!(
        problems(&path).as_slice(),
        [Problem::IncompleteLastLine { line: 4, .. }]
    ));

    let mut l = Ledger::open(&path).unwrap();
    let (seq, _) = l.head();
    assert_eq!(seq, 4, "the recovery record took seq 4");
    let next = l.append("change", json!({})).unwrap();
    assert_eq!(next.seq, 5);
    drop(l);

    let records = read(&path, None).unwrap();
    let rec = &records[3];
    assert_eq!(rec.kind, "ledger_recovered");
    assert_eq!(rec.body["cut_bytes"], json!(torn.len()));
    assert_eq!(rec.body["cut_offset"], json!(good_len));
    assert_eq!(rec.body["cut_sha256"], json!(canonical::sha256_hex(torn)));
    assert!(verify(&path).unwrap().is_intact());
}

#[test]
fn broken_tail_is_refused_unless_repairing() {
    let (_d, path) = ledger_with(3);
    edit(&path, 2, |r| r.body = json!({"forged": 1}));
    let before = std::fs::read(&path).unwrap();
    let refuse = LedgerOptions {
        on_broken_tail: OnBrokenTail::Refuse,
    };
    let err = Ledger::open_with(&path, refuse).unwrap_err();
    assert!(matches!(err, LedgerError::BrokenTail { .. }), "{err}");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "refusal leaves the file alone"
    );

    let mut l = Ledger::open_with(
        &path,
        LedgerOptions {
            on_broken_tail: OnBrokenTail::Repair,
        },
    )
    .unwrap();
    assert_eq!(l.head().0, 4);
    l.append("change", json!({})).unwrap();
    drop(l);
    let records = read(&path, None).unwrap();
    assert_eq!(records[3].kind, "ledger_repaired");
    assert_eq!(records[3].body["linked_seq"], json!(3));
    // The damage stays visible; the repair itself chains on.
    let p = problems(&path);
    assert!(
        matches!(p.as_slice(), [Problem::HashMismatch { seq: 3, .. }]),
        "{p:?}"
    );
}

#[test]
fn garbage_last_line_is_refused_then_repaired() {
    let (_d, path) = ledger_with(2);
    let mut ls = lines(&path);
    ls.push("not json at all".into());
    write_lines(&path, &ls);
    let refuse = LedgerOptions {
        on_broken_tail: OnBrokenTail::Refuse,
    };
    assert!(matches!(
        Ledger::open_with(&path, refuse),
        Err(LedgerError::BrokenTail { .. })
    ));
    let mut l = Ledger::open_with(
        &path,
        LedgerOptions {
            on_broken_tail: OnBrokenTail::Repair,
        },
    )
    .unwrap();
    assert_eq!(l.head().0, 3);
    let c: std::collections::HashMap<_, _> = l.counters().into_iter().collect();
    assert_eq!(c["ledger_repaired"], 1);
    l.append("change", json!({})).unwrap();
    drop(l);
    let p = problems(&path);
    assert!(
        matches!(p.as_slice(), [Problem::Malformed { line: 3, .. }]),
        "{p:?}"
    );
}

#[test]
fn read_since_filters_by_time() {
    let (_d, path) = ledger_with(2);
    let now = SystemTime::now();
    assert_eq!(
        read(&path, Some(now - Duration::from_secs(60)))
            .unwrap()
            .len(),
        2
    );
    assert_eq!(
        read(&path, Some(now + Duration::from_secs(60)))
            .unwrap()
            .len(),
        0
    );
    // Records at their exact time are included (times have ms resolution).
    let recs = read(&path, None).unwrap();
    let t = parse_time(&recs[1].time).unwrap();
    let since = read(&path, Some(t)).unwrap();
    assert!(since.iter().any(|r| r.seq == 2));
}

#[test]
fn concurrent_appends_keep_the_chain_valid() {
    let (_d, path) = ledger_with(0);
    let shared = SharedLedger::open(&path).unwrap();
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let s = shared.clone();
            std::thread::spawn(move || {
                for i in 0..25 {
                    s.append("change", json!({"thread": t, "i": i})).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let last = rt
        .block_on(shared.append_async("change", json!({"async": true})))
        .unwrap();
    assert_eq!(last.seq, 101);
    let c: std::collections::HashMap<_, _> = shared.counters().into_iter().collect();
    assert_eq!(c["ledger_appended"], 101);
    let report = verify(&path).unwrap();
    assert!(report.is_intact(), "{:?}", report.problems);
    assert_eq!(report.records, 101);
    let seqs: Vec<u64> = read(&path, None).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=101).collect::<Vec<_>>());
}

#[test]
fn records_carry_hostile_strings_on_one_line() {
    let (_d, path) = ledger_with(0);
    let mut l = Ledger::open(&path).unwrap();
    let hostile: String = (0u8..=0x7f).map(char::from).collect::<String>() + "\u{2028}\u{feff}";
    l.append("change", json!({ hostile.clone(): hostile.clone() }))
        .unwrap();
    drop(l);
    assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 1);
    let r = &read(&path, None).unwrap()[0];
    assert_eq!(r.body[&hostile], Value::String(hostile.clone()));
    assert!(verify(&path).unwrap().is_intact());
}

/// A small tmpfs, unmounted on drop (needs root, as the kernel-facing tests do).
struct SmallFs {
    dir: tempfile::TempDir,
}

impl SmallFs {
    fn new(size: &str) -> SmallFs {
        let dir = tempfile::tempdir().unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            dir.path(),
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size}").as_str()),
        )
        .expect("mount tmpfs (run the tests as root)");
        SmallFs { dir }
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = nix::mount::umount(self.dir.path());
    }
}

#[test]
fn a_failed_append_is_cut_back_and_the_chain_continues() {
    let fs = SmallFs::new("64k");
    let path = fs.dir.path().join("ledger.jsonl");
    let mut l = Ledger::open(&path).unwrap();
    l.append("change", json!({"first": true})).unwrap();
    let good = std::fs::metadata(&path).unwrap().len();
    // Fill the file system, then ask for a record larger than what is left.
    let filler = fs.dir.path().join("filler");
    let _ = std::fs::write(&filler, vec![0u8; 60 * 1024]);
    let err = l
        .append("change", json!({"big": "y".repeat(16 * 1024)}))
        .unwrap_err();
    assert!(
        matches!(&err, LedgerError::Io { op: "append", .. }),
        "{err}"
    );
    assert_eq!(
        std::fs::metadata(&path).unwrap().len(),
        good,
        "the partial line was cut"
    );
    std::fs::remove_file(&filler).unwrap();
    let r = l.append("change", json!({"after": true})).unwrap();
    assert_eq!(r.seq, 2);
    drop(l);
    assert!(verify(&path).unwrap().is_intact());
}

fn damaged_copies(path: &Path) -> Vec<PathBuf> {
    let name = path.file_name().unwrap().to_string_lossy().into_owned();
    let mut v: Vec<PathBuf> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("{name}.damaged-"))
        })
        .collect();
    v.sort();
    v
}

/// The daemon's open after a broken tail: the file moves aside untouched, a new chain
/// starts whose first record links to the last record that verifies.
fn assert_restarted(path: &Path, before: &[u8], linked_seq: u64) {
    let restarts = crate::state::counters()
        .ledger_chain_restarts
        .load(std::sync::atomic::Ordering::Relaxed);
    let mut l = Ledger::open(path).expect("a broken ledger still opens");
    assert!(
        crate::state::counters()
            .ledger_chain_restarts
            .load(std::sync::atomic::Ordering::Relaxed)
            > restarts
    );
    l.append("change", json!({"after": true})).unwrap();
    drop(l);
    let copies = damaged_copies(path);
    assert_eq!(copies.len(), 1, "{copies:?}");
    assert_eq!(std::fs::read(&copies[0]).unwrap(), before, "kept as it was");
    let records = read(path, None).unwrap();
    assert_eq!(records[0].kind, "ledger_chain_restarted");
    assert_eq!(records[0].seq, 1);
    assert_eq!(records[0].body["linked_seq"], json!(linked_seq));
    assert_eq!(
        records[0].body["damaged_file"],
        json!(copies[0].to_string_lossy())
    );
    if linked_seq > 0 {
        let old = read_lenient(&copies[0], None).unwrap();
        let (_, linked) = old
            .records
            .iter()
            .find(|(_, r)| r.seq == linked_seq)
            .unwrap();
        assert_eq!(records[0].body["linked_hash"], json!(linked.hash));
    } else {
        assert_eq!(records[0].body["linked_hash"], json!(GENESIS_PREV));
    }
    assert_eq!(records[1].kind, "change");
    assert!(verify(path).unwrap().is_intact());
}

#[test]
fn changed_last_record_starts_a_new_chain() {
    let (_d, path) = ledger_with(3);
    edit(&path, 2, |r| r.body = json!({"forged": 1}));
    let before = std::fs::read(&path).unwrap();
    assert_restarted(&path, &before, 2);
}

#[test]
fn garbage_last_line_starts_a_new_chain() {
    let (_d, path) = ledger_with(2);
    let mut ls = lines(&path);
    ls.push("not json at all".into());
    write_lines(&path, &ls);
    let before = std::fs::read(&path).unwrap();
    assert_restarted(&path, &before, 2);
}

#[test]
fn a_file_moved_over_the_ledger_starts_a_new_chain() {
    let (_d, path) = ledger_with(2);
    std::fs::write(&path, b"x=1\ny=2\n\xff\xfe binary\n").unwrap();
    let before = std::fs::read(&path).unwrap();
    assert_restarted(&path, &before, 0);
}

#[test]
fn the_ledger_opens_whatever_its_bytes() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut rnd = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for round in 0..60 {
        let (_d, path) = ledger_with(5);
        let mut bytes = std::fs::read(&path).unwrap();
        match round % 3 {
            0 => {
                let n = (rnd() % bytes.len() as u64) as usize;
                bytes.truncate(n);
            }
            1 => {
                for _ in 0..1 + rnd() % 8 {
                    let i = (rnd() % bytes.len() as u64) as usize;
                    bytes[i] ^= 1 << (rnd() % 8);
                }
            }
            _ => bytes = (0..rnd() % 5000).map(|_| rnd() as u8).collect(),
        }
        std::fs::write(&path, &bytes).unwrap();
        let mut l = Ledger::open(&path).unwrap_or_else(|e| panic!("round {round}: {e}"));
        l.append("change", json!({})).unwrap();
        drop(l);
        // Whatever happened, the live file's tail chains again.
        let refuse = LedgerOptions {
            on_broken_tail: OnBrokenTail::Refuse,
        };
        Ledger::open_with(&path, refuse).unwrap_or_else(|e| panic!("round {round}: {e}"));
    }
}

#[test]
fn a_symlink_or_fifo_in_the_ledgers_place_is_moved_aside_never_followed() {
    let (d, path) = ledger_with(2);
    let victim = d.path().join("victim");
    std::fs::write(&victim, b"").unwrap();
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(&victim, &path).unwrap();
    let mut l = Ledger::open(&path).expect("opens");
    l.append("change", json!({})).unwrap();
    drop(l);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"",
        "never written through"
    );
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    let copies = damaged_copies(&path);
    assert_eq!(copies.len(), 1);
    assert!(
        std::fs::symlink_metadata(&copies[0])
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let records = read(&path, None).unwrap();
    assert_eq!(records[0].kind, "ledger_chain_restarted");
    assert!(
        records[0].body["problem"]
            .as_str()
            .unwrap()
            .contains("symbolic link"),
        "{:?}",
        records[0].body
    );

    // A FIFO would block every reader and writer.
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let l = Ledger::open(&path).expect("opens");
    drop(l);
    assert!(std::fs::symlink_metadata(&path).unwrap().is_file());
    assert_eq!(damaged_copies(&path).len(), 2);
}
