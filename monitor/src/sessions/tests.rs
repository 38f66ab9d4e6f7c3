//! The session registry, its records in the store, and the checks of its inputs.
use super::text::truncate_bytes;
use super::*;
use crate::store::{STORE_FILE, Store};

fn new(agent: &str) -> NewSession {
    NewSession {
        agent: agent.into(),
        reason: Some("fix the build".into()),
        root_pid: 4242,
        uid: 0,
        source: SessionSource::Wrapper,
        command: vec!["claude".into(), "-p".into(), "hi".into()],
        cwd: "/home/dev/project".into(),
        scope: vec![],
    }
}

fn open(dir: &tempfile::TempDir) -> SessionRegistry {
    SessionRegistry::open(Store::open(&dir.path().join(STORE_FILE)).unwrap()).unwrap()
}

#[test]
fn create_assigns_ids_and_fills_fields() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    let a = reg.create(new("claude-code")).unwrap();
    let b = reg.create(new("codex")).unwrap();
    assert_eq!((a.id, b.id), (1, 2));
    assert_eq!(a.agent, "claude-code");
    assert_eq!(a.reason.as_deref(), Some("fix the build"));
    assert_eq!(a.user, "root");
    assert_eq!(a.root_pid, 4242);
    assert_eq!(a.events, 0);
    assert_eq!(a.ended, None);
    // e.g. 2026-11-22T02:52:00Z
    let b_ = a.started.as_bytes();
    assert!(
        b_.len() == 20 && b_[4] == b'-' && b_[10] == b'T' && b_[19] == b'Z',
        "{}",
        a.started
    );
    assert_eq!(reg.get(1), Some(a.clone()));
    assert_eq!(reg.live(), vec![a, b]);
}

#[test]
fn created_session_is_persisted_before_return() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let reg = SessionRegistry::open(store.clone()).unwrap();
    let s = reg.create(new("aider")).unwrap();
    assert_eq!(store.get(SESSIONS, s.id).unwrap(), Some(s));
}

#[test]
fn sessions_survive_restart_and_ids_are_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    {
        let reg = open(&dir);
        let a = reg.create(new("a")).unwrap();
        reg.create(new("b")).unwrap();
        for _ in 0..5 {
            reg.note_event(a.id);
        }
        reg.flush().unwrap();
        reg.end(a.id).unwrap();
    }
    let reg = open(&dir);
    let all = reg.all();
    assert_eq!(all.len(), 2);
    assert_eq!(all[0].events, 5);
    assert!(all[0].ended.is_some());
    assert_eq!(
        reg.live()
            .iter()
            .map(|s| s.agent.as_str())
            .collect::<Vec<_>>(),
        ["b"]
    );
    assert_eq!(reg.create(new("c")).unwrap().id, 3);
}

#[test]
fn note_event_is_memory_only_until_flush() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let reg = SessionRegistry::open(store.clone()).unwrap();
    let s = reg.create(new("a")).unwrap();
    reg.note_event(s.id);
    reg.note_event(s.id);
    reg.note_event(999); // unknown: ignored
    assert_eq!(reg.get(s.id).map(|s| s.events), Some(2));
    assert_eq!(
        store.get(SESSIONS, s.id).unwrap().map(|s| s.events),
        Some(0)
    );
    reg.flush().unwrap();
    assert_eq!(
        store.get(SESSIONS, s.id).unwrap().map(|s| s.events),
        Some(2)
    );
    reg.flush().unwrap(); // nothing dirty
}

#[test]
fn end_is_persisted_idempotent_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join(STORE_FILE)).unwrap();
    let reg = SessionRegistry::open(store.clone()).unwrap();
    let s = reg.create(new("a")).unwrap();
    reg.note_event(s.id);
    reg.end(s.id).unwrap();
    let ended = reg.get(s.id).and_then(|s| s.ended).unwrap();
    let stored = store.get(SESSIONS, s.id).unwrap().unwrap();
    assert_eq!(stored.ended.as_deref(), Some(ended.as_str()));
    assert_eq!(stored.events, 1);
    reg.end(s.id).unwrap();
    assert_eq!(reg.get(s.id).and_then(|s| s.ended), Some(ended));
    assert!(reg.live().is_empty());
    assert!(matches!(reg.end(77), Err(SessionError::NotFound(77))));
    // Events after the end are still counted and flushed, the end mark stays.
    reg.note_event(s.id);
    reg.flush().unwrap();
    let stored = store.get(SESSIONS, s.id).unwrap().unwrap();
    assert_eq!((stored.events, stored.ended.is_some()), (2, true));
}

#[test]
fn agent_names_are_validated() {
    for ok in [
        "a",
        "claude-code",
        "Codex CLI",
        "gpt_5.1@openai",
        &"x".repeat(64),
    ] {
        assert!(validate_agent(ok).is_ok(), "{ok:?}");
    }
    for bad in [
        "",
        " a",
        "a ",
        "a\nb",
        "a\u{1b}[31m",
        "é",
        "a\u{202e}b",
        "a\tb",
        &"x".repeat(65),
    ] {
        assert!(
            matches!(validate_agent(bad), Err(SessionError::Invalid(_))),
            "{bad:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    assert!(reg.create(new("bad\u{7}")).is_err());
    let mut n = new("a");
    n.source = SessionSource::Detected {
        rule: "\u{1b}]0;x".into(),
    };
    assert!(reg.create(n).is_err());
    assert!(reg.all().is_empty());
}

#[test]
fn reasons_are_validated() {
    assert!(validate_reason("").is_ok());
    assert!(validate_reason("réparer le build — vite").is_ok());
    assert!(validate_reason(&"r".repeat(MAX_REASON_BYTES)).is_ok());
    for bad in [
        "a\nb",
        "tab\there",
        "\u{1b}[2J",
        "safe\u{202e}txt.exe",
        "zero\u{200b}width",
    ] {
        assert!(
            matches!(validate_reason(bad), Err(SessionError::Invalid(_))),
            "{bad:?}"
        );
    }
    assert!(validate_reason(&"r".repeat(MAX_REASON_BYTES + 1)).is_err());
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    let mut n = new("a");
    n.reason = Some(String::new());
    assert_eq!(reg.create(n).unwrap().reason, None);
}

#[test]
fn command_and_cwd_are_escaped_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let reg = open(&dir);
    let mut n = new("a");
    n.command = vec!["sh".into(), "-c".into(), "echo a\nb\\c\u{1b}".into()];
    n.cwd = "/tmp/x\ry".into();
    let s = reg.create(n).unwrap();
    assert_eq!(s.command, ["sh", "-c", "echo a\\u{a}b\\\\c\\u{1b}"]);
    assert_eq!(s.cwd, "/tmp/x\\u{d}y");

    let mut n = new("a");
    n.command = vec![
        "agent".into(),
        "p".repeat(MAX_COMMAND_BYTES),
        "x".into(),
        "y".into(),
    ];
    let s = reg.create(n).unwrap();
    assert_eq!(s.command.len(), 3);
    assert!(s.command[1].ends_with('…'));
    assert!(s.command.iter().take(2).map(String::len).sum::<usize>() <= MAX_COMMAND_BYTES);
    assert_eq!(
        s.command[2],
        "[confgate: command truncated, 2 more arguments]"
    );
}

#[test]
fn escape_is_identity_on_plain_text() {
    assert_eq!(escape_text("/home/dev/проект"), "/home/dev/проект");
    assert_eq!(truncate_bytes("ééé".into(), 4), "…");
    assert_eq!(truncate_bytes("abcdef".into(), 5), "ab…");
}

#[test]
fn source_string_form() {
    assert_eq!(SessionSource::Wrapper.to_string(), "wrapper");
    let d = SessionSource::Detected {
        rule: "claude-code".into(),
    };
    assert_eq!(d.to_string(), "detect:claude-code");
    assert_eq!("detect:claude-code".parse::<SessionSource>().unwrap(), d);
    assert_eq!(
        "wrapper".parse::<SessionSource>().unwrap(),
        SessionSource::Wrapper
    );
    assert!("manual".parse::<SessionSource>().is_err());
    assert_eq!(serde_json::to_string(&d).unwrap(), "\"detect:claude-code\"");
    assert_eq!(
        serde_json::from_str::<SessionSource>("\"wrapper\"").unwrap(),
        SessionSource::Wrapper
    );
}

#[test]
fn an_undecodable_session_record_is_skipped_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(STORE_FILE);
    {
        let reg = open(&dir);
        reg.create(new("claude-code")).unwrap();
    }
    // An old or damaged record: valid redb, invalid JSON for a session.
    let store = Store::open(&path).unwrap();
    store
        .write(|tx| {
            tx.raw()
                .open_table(redb::TableDefinition::<u64, &[u8]>::new(SESSIONS.name()))?
                .insert(7, b"{\"id\": \"not a number\"}".as_slice())?;
            Ok(())
        })
        .unwrap();
    let reg = SessionRegistry::open(store).expect("loads the good sessions");
    let ids: Vec<u64> = reg.all().iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![1]);
    // New sessions still get fresh ids.
    assert!(reg.create(new("codex")).unwrap().id > 1);
}
