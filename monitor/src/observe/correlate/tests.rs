use std::{
    os::unix::ffi::OsStrExt,
    time::{Duration, Instant},
};

use super::*;
use crate::{
    event::{Details, Kind, Source},
    kernel::decode::Comm,
};

fn obs(kind: Kind, path: &str, source: Source, at: Instant) -> Observation {
    Observation {
        kind,
        path: path.as_bytes().into(),
        target: None,
        tid: 7,
        tgid: 7,
        result: if source == Source::Fanotify {
            None
        } else {
            Some(0)
        },
        source,
        time_ns: 0,
        details: Details::default(),
        session: 0,
        uid: None,
        comm: Comm::default(),
        open_flags: 0,
        attrib: false,
        arrived: at,
    }
}

const W: Duration = Duration::from_millis(100);
const NONE: Watermarks = Watermarks {
    ebpf: None,
    fanotify: None,
};

fn idle(_: u32) -> bool {
    false
}

#[test]
fn drained_sources_release_observations_before_the_window() {
    let t0 = Instant::now();
    let mut c = Correlator::new(Duration::from_secs(60));
    let f = obs(Kind::Write, "/w/e", Source::Fanotify, t0);
    c.push_fanotify(f);
    let after = t0 + Duration::from_millis(1);
    let ebpf_only = Watermarks {
        ebpf: Some(after),
        fanotify: None,
    };
    // The thread still has a syscall in flight: its eBPF twin may be on the way.
    assert!(c.flush(after, &ebpf_only, &|tid| tid == 7).is_empty());
    let out = c.flush(after, &ebpf_only, &idle);
    assert_eq!(
        out.len(),
        1,
        "ring buffer drained after it arrived: nothing can merge any more"
    );
    c.push_ebpf(obs(Kind::Unlink, "/w/e", Source::Ebpf, after));
    let later = after + Duration::from_millis(1);
    assert!(
        c.flush(
            later,
            &Watermarks {
                ebpf: Some(later),
                fanotify: Some(after)
            },
            &idle
        )
        .is_empty()
    );
    assert_eq!(
        c.flush(
            later,
            &Watermarks {
                ebpf: Some(later),
                fanotify: Some(later)
            },
            &idle
        )
        .len(),
        1
    );
}

#[test]
fn a_fanotify_twin_names_an_unresolved_relative_path_in_either_order() {
    let t0 = Instant::now();
    let unresolved = |path: &str| {
        let mut o = obs(Kind::Mkdir, path, Source::Ebpf, t0);
        o.details.unresolved = true;
        o
    };
    for ebpf_first in [true, false] {
        let mut c = Correlator::new(W);
        if ebpf_first {
            c.push_ebpf(unresolved("b"));
            c.push_fanotify(obs(Kind::Mkdir, "/w/a/b", Source::Fanotify, t0));
        } else {
            c.push_fanotify(obs(Kind::Mkdir, "/w/a/b", Source::Fanotify, t0));
            c.push_ebpf(unresolved("b"));
        }
        // Not a twin: a name that merely ends with the same bytes.
        c.push_fanotify(obs(Kind::Mkdir, "/w/ab", Source::Fanotify, t0));
        let out = c.flush(t0 + W, &NONE, &idle);
        let got: Vec<(&[u8], Source, bool)> = out
            .iter()
            .map(|o| (&o.path[..], o.source, o.details.unresolved))
            .collect();
        assert_eq!(
            got,
            vec![
                (&b"/w/a/b"[..], Source::Both, false),
                (&b"/w/ab"[..], Source::Fanotify, false)
            ],
            "ebpf first: {ebpf_first}"
        );
        assert_eq!(c.pending(), 0);
    }
    // Without a twin it is reported as it is, unresolved.
    let mut c = Correlator::new(W);
    c.push_ebpf(unresolved("b"));
    let out = c.flush(t0 + W, &NONE, &idle);
    assert_eq!(
        (&out[0].path[..], out[0].details.unresolved),
        (&b"b"[..], true)
    );
}

#[test]
fn ebpf_open_absorbs_fanotify_create_and_becomes_create() {
    let t0 = Instant::now();
    let mut c = Correlator::new(W);
    c.push_fanotify(obs(Kind::Create, "/w/a", Source::Fanotify, t0));
    c.push_ebpf(Observation {
        open_flags: 0o101,
        ..obs(Kind::OpenWrite, "/w/a", Source::Ebpf, t0)
    });
    c.push_ebpf(obs(Kind::Write, "/w/a", Source::Ebpf, t0));
    c.push_fanotify(obs(Kind::Write, "/w/a", Source::Fanotify, t0));
    c.push_fanotify(obs(Kind::Write, "/w/a", Source::Fanotify, t0)); // second MODIFY: folded
    c.push_fanotify(obs(Kind::OpenWrite, "/w/a", Source::Fanotify, t0)); // CLOSE_WRITE: folded
    let out = c.flush(t0 + W, &NONE, &idle);
    let kinds: Vec<(Kind, Source)> = out.iter().map(|o| (o.kind, o.source)).collect();
    assert_eq!(
        kinds,
        vec![(Kind::Create, Source::Both), (Kind::Write, Source::Both)]
    );
    assert_eq!(c.pending(), 0);
}

#[test]
fn pairs_first_in_first_out_per_thread_and_path() {
    // A loop re-creating one file: each open takes its own CREATE, whatever the order
    // in which the two sources were read.
    let t0 = Instant::now();
    let mut c = Correlator::new(W);
    for _ in 0..3 {
        c.push_ebpf(Observation {
            open_flags: 0o1101,
            ..obs(Kind::OpenWrite, "/w/loop", Source::Ebpf, t0)
        });
    }
    for _ in 0..3 {
        c.push_fanotify(obs(Kind::Create, "/w/loop", Source::Fanotify, t0));
    }
    let out = c.flush(t0 + W, &NONE, &idle);
    let kinds: Vec<(Kind, Source)> = out.iter().map(|o| (o.kind, o.source)).collect();
    assert_eq!(kinds, vec![(Kind::Create, Source::Both); 3]);
    assert_eq!(c.pending(), 0);
}

#[test]
fn a_flood_cannot_grow_the_buffer_without_bound() {
    let t0 = Instant::now();
    let mut c = Correlator::new(Duration::from_secs(3600));
    for i in 0..MAX_BUFFERED + 50 {
        c.push_fanotify(obs(Kind::Unlink, &format!("/w/f{i}"), Source::Fanotify, t0));
    }
    // Nothing is ready (no watermark, window not passed), yet the excess is released.
    let out = c.flush(t0, &NONE, &idle);
    assert_eq!(out.len(), 50);
    assert_eq!(c.stats().forced, 50);
    assert_eq!(c.pending(), MAX_BUFFERED);
}

#[test]
fn fanotify_alone_is_emitted_after_the_window() {
    let t0 = Instant::now();
    let mut c = Correlator::new(W);
    c.push_fanotify(obs(Kind::Write, "/w/b", Source::Fanotify, t0));
    c.push_fanotify(obs(Kind::OpenWrite, "/w/b", Source::Fanotify, t0));
    assert!(
        c.flush(t0 + W / 2, &NONE, &idle).is_empty(),
        "held during the window"
    );
    let out = c.flush(t0 + W, &NONE, &idle);
    assert_eq!(out.len(), 1, "close-write after a write is folded: {out:?}");
    assert_eq!(
        (out[0].kind, out[0].source),
        (Kind::Write, Source::Fanotify)
    );
}

#[test]
fn rename_matches_on_both_paths_only() {
    let t0 = Instant::now();
    let mut c = Correlator::new(W);
    let mut e = obs(Kind::Rename, "/w/tmp", Source::Ebpf, t0);
    e.target = Some(b"/w/conf"[..].into());
    let mut f = obs(Kind::Rename, "/w/tmp", Source::Fanotify, t0);
    f.target = Some(b"/w/other"[..].into());
    c.push_ebpf(e.clone());
    c.push_fanotify(f);
    assert_eq!(
        c.flush(t0 + W, &NONE, &idle).len(),
        2,
        "different targets are different operations"
    );
    let mut f2 = obs(Kind::Rename, "/w/tmp", Source::Fanotify, t0 + W);
    f2.target = Some(b"/w/conf"[..].into());
    let e2 = Observation {
        arrived: t0 + W,
        ..e
    };
    c.push_ebpf(e2);
    c.push_fanotify(f2);
    let out = c.flush(t0 + 2 * W, &NONE, &idle);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].source, Source::Both);
}

#[test]
fn other_threads_and_failed_syscalls_do_not_merge() {
    let t0 = Instant::now();
    let mut c = Correlator::new(W);
    c.push_ebpf(Observation {
        result: Some(-13),
        ..obs(Kind::Unlink, "/w/c", Source::Ebpf, t0)
    });
    c.push_fanotify(Observation {
        tid: 8,
        ..obs(Kind::Unlink, "/w/c", Source::Fanotify, t0)
    });
    let out = c.flush(t0 + W, &NONE, &idle);
    assert_eq!(out.len(), 2);
}

#[test]
fn attrib_is_classified_by_what_changed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let f = dir.path().join("x.conf");
    std::fs::write(&f, b"x").expect("write");
    let mut c = Correlator::new(W);
    c.prime_attributes(dir.path(), 100);
    let p = f.to_str().expect("utf8");
    let t0 = Instant::now();
    // A timestamp-only change is not reported.
    c.push_fanotify(Observation {
        attrib: true,
        ..obs(Kind::Chmod, p, Source::Fanotify, t0)
    });
    assert!(c.flush(t0 + W, &NONE, &idle).is_empty());
    assert_eq!(c.stats().attrib_ignored, 1);
    std::fs::set_permissions(&f, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    c.push_fanotify(Observation {
        attrib: true,
        ..obs(Kind::Chmod, p, Source::Fanotify, t0 + W)
    });
    let out = c.flush(t0 + 2 * W, &NONE, &idle);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].kind, Kind::Chmod);
}

#[test]
fn renamed_file_keeps_its_known_attributes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (dir.path().join("a.tmp"), dir.path().join("b.conf"));
    std::fs::write(&a, b"x").expect("write");
    let mut c = Correlator::new(W);
    c.prime_attributes(dir.path(), 100);
    std::fs::rename(&a, &b).expect("rename");
    let t0 = Instant::now();
    let mut e = obs(Kind::Rename, a.to_str().expect("utf8"), Source::Ebpf, t0);
    e.target = Some(b.as_os_str().as_bytes().into());
    c.push_ebpf(e);
    assert_eq!(c.flush(t0 + W, &NONE, &idle).len(), 1);
    // A timestamp-only ATTRIB on the new name: known attributes, nothing changed.
    c.push_fanotify(Observation {
        attrib: true,
        ..obs(
            Kind::Chmod,
            b.to_str().expect("utf8"),
            Source::Fanotify,
            t0 + W,
        )
    });
    assert!(c.flush(t0 + 2 * W, &NONE, &idle).is_empty());
    assert_eq!(c.stats().attrib_ignored, 1);
}

#[test]
fn a_pile_of_unmatched_observations_under_one_key_is_scanned_boundedly() {
    // After ring-buffer losses, fanotify observations of one busy file whose eBPF
    // twins were lost pile up under its key; a lookup looks at SCAN_LIMIT of them.
    let t0 = Instant::now();
    let mut c = Correlator::new(Duration::from_secs(3600));
    c.push_ebpf(Observation {
        target: Some(b"/w/new"[..].into()),
        ..obs(Kind::Rename, "/w/busy", Source::Ebpf, t0)
    });
    for _ in 0..1000 {
        c.push_fanotify(obs(Kind::Unlink, "/w/busy", Source::Fanotify, t0));
    }
    let marks = Watermarks {
        ebpf: Some(t0 + W),
        fanotify: Some(t0 + W),
    };
    let out = c.flush(t0 + W, &marks, &idle);
    assert_eq!(out.len(), 1001, "nothing merged, nothing lost");
    assert!(c.stats().scan_limited >= 1);
    assert_eq!(c.pending(), 0);
}

#[test]
fn late_fanotify_twin_of_emitted_event_is_absorbed() {
    let t0 = Instant::now();
    let mut c = Correlator::new(W);
    c.push_ebpf(obs(Kind::Unlink, "/w/d", Source::Ebpf, t0));
    assert_eq!(c.flush(t0 + W, &NONE, &idle).len(), 1);
    c.push_fanotify(obs(Kind::Unlink, "/w/d", Source::Fanotify, t0 + W));
    assert!(c.flush(t0 + 2 * W, &NONE, &idle).is_empty());
}
