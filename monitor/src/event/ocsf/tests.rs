//! Every kind's OCSF output checked against the vendored schema facts of OCSF 1.8.0
//! (`schema-1.8.0.json`: required attributes after `extends`, their dictionary types,
//! `at_least_one` constraints and enums, from github.com/ocsf/ocsf-schema).
use serde_json::{Value, json};

use super::*;
use crate::event::{Ancestor, Details, FileClass, SCHEMA_VERSION, SessionRef};
use crate::ledger::Ledger;

const SCHEMA: &str = include_str!("schema-1.8.0.json");

fn schema() -> Value {
    serde_json::from_str(SCHEMA).expect("vendored schema parses")
}

/// Whether `v` has the dictionary type `t` (scalars; an object type is any object).
fn typed(v: &Value, t: &str) -> bool {
    match t {
        "integer_t" | "long_t" | "timestamp_t" | "port_t" => v.is_i64() || v.is_u64(),
        "float_t" => v.is_number(),
        "boolean_t" => v.is_boolean(),
        // The other scalar types (string_t, hostname_t, file_name_t, ...) are strings.
        t if t.ends_with("_t") => v.is_string(),
        _ => v.is_object(),
    }
}

/// Checks the attributes of `obj` (an instance of schema entry `entry`, with the
/// dictionary's types for those written), and recurses into the objects confgate writes.
fn check(s: &Value, entry: &Value, obj: &Value, at: &str, errors: &mut Vec<String>) {
    check_with(s, entry, obj, at, &[], errors)
}

/// [`check`] with the attributes of the event's `profiles` (metadata.profiles) allowed.
fn check_with(
    s: &Value,
    entry: &Value,
    obj: &Value,
    at: &str,
    profiles: &[&str],
    errors: &mut Vec<String>,
) {
    let Some(map) = obj.as_object() else {
        errors.push(format!("{at}: not an object"));
        return;
    };
    for (name, spec) in entry["required"].as_object().expect("required") {
        match map.get(name) {
            None => errors.push(format!("{at}.{name}: required, missing")),
            Some(v) => {
                let t = spec["type"].as_str().unwrap_or("object");
                if !typed(v, t) {
                    errors.push(format!("{at}.{name}: not a {t}: {v}"));
                }
            }
        }
    }
    for group in entry["at_least_one"].as_array().expect("at_least_one") {
        let names: Vec<&str> = group
            .as_array()
            .expect("group")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        if !names.iter().any(|n| map.contains_key(*n)) {
            errors.push(format!("{at}: needs one of {names:?}"));
        }
    }
    for (name, v) in map {
        if name == "unmapped" {
            continue;
        }
        let defined = entry["attributes"].as_array().expect("attributes");
        let profiled = profiles.iter().any(|p| {
            entry["profiles"][*p]["attributes"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a == name))
        });
        if !defined.iter().any(|a| a == name) && !profiled {
            errors.push(format!(
                "{at}.{name}: not an attribute of this class or object"
            ));
            continue;
        }
        let Some(d) = s["dictionary"].get(name) else {
            errors.push(format!(
                "{at}.{name}: not an attribute the vendored dictionary lists"
            ));
            continue;
        };
        let t = d["type"].as_str().unwrap_or("object");
        let is_array = d["is_array"].as_bool() == Some(true);
        let items: Vec<&Value> = if is_array {
            match v.as_array() {
                Some(a) => a.iter().collect(),
                None => {
                    errors.push(format!("{at}.{name}: not an array"));
                    continue;
                }
            }
        } else {
            vec![v]
        };
        for item in items {
            if s["objects"].get(t).is_some() {
                check(s, &s["objects"][t], item, &format!("{at}.{name}"), errors);
            } else if !typed(item, t) {
                errors.push(format!("{at}.{name}: not a {t}: {item}"));
            }
        }
    }
}

/// Checks one OCSF event of `class` (`file_activity` or `base_event`): the class's
/// required attributes and every object in it, the enums, and `type_uid`.
fn validate(class: &str, ev: &Value) -> Vec<String> {
    let s = schema();
    let entry = &s["classes"][class];
    let mut errors = Vec::new();
    let profiles: Vec<&str> = ev["metadata"]["profiles"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    for p in &profiles {
        if entry["profiles"].get(*p).is_none() {
            errors.push(format!(
                "metadata.profiles: {p} is not a profile of {class}"
            ));
        }
    }
    check_with(&s, entry, ev, class, &profiles, &mut errors);
    if ev["class_uid"] != entry["class_uid"] {
        errors.push(format!(
            "class_uid {} is not {}",
            ev["class_uid"], entry["class_uid"]
        ));
    }
    let activity = ev["activity_id"].as_u64().unwrap_or(u64::MAX);
    match s["enums"][format!("{class}.activity_id")].get(activity.to_string()) {
        Some(caption) if ev["activity_name"] == *caption || class == "base_event" => {}
        other => errors.push(format!(
            "activity_id {activity} is {other:?}, named {}",
            ev["activity_name"]
        )),
    }
    if ev["type_uid"].as_u64() != ev["class_uid"].as_u64().map(|c| c * 100 + activity) {
        errors.push(format!(
            "type_uid {} is not class_uid*100+activity_id",
            ev["type_uid"]
        ));
    }
    let sev = ev["severity_id"].as_u64().unwrap_or(u64::MAX).to_string();
    if s["enums"][format!("{class}.severity_id")].get(&sev) != Some(&ev["severity"]) {
        errors.push(format!("severity_id {sev} named {}", ev["severity"]));
    }
    for f in ["file", "file_result"] {
        if let Some(t) = ev[f]["type_id"].as_u64() {
            let known = s["enums"]["file.type_id"].get(t.to_string());
            if known != Some(&ev[f]["type"]) {
                errors.push(format!("{f}.type_id {t} named {}", ev[f]["type"]));
            }
        }
    }
    if ev["metadata"]["version"] != s["ocsf_version"] {
        errors.push(format!("metadata.version {}", ev["metadata"]["version"]));
    }
    errors
}

const ALL: [Kind; 11] = [
    Kind::OpenWrite,
    Kind::Create,
    Kind::Write,
    Kind::Rename,
    Kind::Unlink,
    Kind::Truncate,
    Kind::Chmod,
    Kind::Chown,
    Kind::Link,
    Kind::Symlink,
    Kind::Mkdir,
];

fn event(kind: Kind, session: bool, known: bool) -> Event {
    Event {
        v: SCHEMA_VERSION,
        class: FileClass,
        time: "2026-12-07T10:00:00.123456789Z".into(),
        time_ns: 1_796_637_600_123_456_789,
        id: "18f-42".into(),
        host: "web-1",
        boot_id: "2b1f9d3e-6c0a-4a53-9a59-1d2c3b4a5f60",
        kind,
        path: "/etc/app/bad\nname\\xff.conf".into(),
        target: matches!(kind, Kind::Rename | Kind::Link | Kind::Symlink)
            .then(|| "/etc/app/new.conf".into()),
        result: known.then_some(if kind == Kind::Rename { -17 } else { 3 }),
        pid: 4242,
        tid: 4243,
        ppid: known.then_some(4000),
        uid: known.then_some(0),
        comm: "sed".into(),
        exe: known.then(|| "/usr/bin/sed".into()),
        argv: if known {
            vec!["sed".into(), "-i".into(), "s/a/b/".into()]
        } else {
            Vec::new()
        }
        .into(),
        cwd: known.then(|| "/root".into()),
        ancestors: if known {
            vec![
                Ancestor {
                    pid: 4000,
                    comm: "bash".into(),
                    exe: "/usr/bin/bash".into(),
                },
                Ancestor {
                    pid: 1,
                    comm: "systemd".into(),
                    exe: "/usr/lib/systemd/systemd".into(),
                },
            ]
        } else {
            Vec::new()
        }
        .into(),
        session: session.then(|| {
            SessionRef {
                id: 9,
                agent: "claude".into(),
                reason: Some("tune".into()),
                root_pid: 4000,
            }
            .into()
        }),
        source: Source::Both,
        details: (kind == Kind::Mkdir || kind == Kind::Chmod).then(|| Details {
            mode: Some("0644".into()),
            dir: kind == Kind::Mkdir,
            ..Details::default()
        }),
    }
}

#[test]
fn every_kind_is_a_valid_file_system_activity() {
    for kind in ALL {
        for (session, known) in [(true, true), (false, false), (true, false)] {
            let out = file_activity(&event(kind, session, known));
            let errors = validate("file_activity", &out);
            assert!(
                errors.is_empty(),
                "{kind:?} session={session} known={known}: {errors:#?}\n{out:#}"
            );
            assert_eq!(out["category_uid"], 1);
            assert_eq!(out["device"]["hostname"], "web-1");
            assert_eq!(out["time"], 1_796_637_600_123_i64);
            assert_eq!(out["unmapped"]["confgate"]["kind"], kind.as_str());
            assert_eq!(
                out["unmapped"]["confgate"]["boot_id"],
                "2b1f9d3e-6c0a-4a53-9a59-1d2c3b4a5f60"
            );
        }
    }
}

#[test]
fn activity_ids_are_the_schemas() {
    let s = schema();
    let expected = [
        (Kind::OpenWrite, 14),
        (Kind::Create, 1),
        (Kind::Write, 3),
        (Kind::Rename, 5),
        (Kind::Unlink, 4),
        (Kind::Truncate, 3),
        (Kind::Chmod, 7),
        (Kind::Chown, 7),
        (Kind::Link, 1),
        (Kind::Symlink, 1),
        (Kind::Mkdir, 1),
    ];
    for (kind, id) in expected {
        let (got, name) = activity(kind);
        assert_eq!(got, id, "{kind:?}");
        assert_eq!(
            s["enums"]["file_activity.activity_id"][id.to_string()],
            name,
            "{kind:?}"
        );
    }
}

#[test]
fn process_ancestry_session_and_what_ocsf_has_no_place_for() {
    let out = file_activity(&event(Kind::Rename, true, true));
    let p = &out["actor"]["process"];
    assert_eq!(p["pid"], 4242);
    assert_eq!(p["cmd_line"], "sed -i s/a/b/");
    assert_eq!(
        p["parent_process"],
        json!({"pid": 4000, "name": "bash", "path": "/usr/bin/bash"})
    );
    assert_eq!(p["ancestry"][1]["name"], "systemd");
    assert_eq!(p["ancestry"].as_array().map(Vec::len), Some(2));
    assert_eq!(out["actor"]["session"]["uid"], "9");
    assert_eq!(out["actor"]["app_name"], "claude");
    assert_eq!(out["actor"]["user"]["uid"], "0");
    assert_eq!(out["file"]["name"], "bad\nname\\xff.conf");
    assert_eq!(out["file_result"]["path"], "/etc/app/new.conf");
    assert_eq!(out["status_id"], 2);
    assert_eq!(out["status_code"], "-17");
    assert_eq!(out["type_uid"], 100105);
    let u = &out["unmapped"]["confgate"];
    assert_eq!(u["session"]["reason"], "tune");
    assert_eq!(u["source"], "both");
    assert_eq!(u["result"], -17);
}

#[test]
fn ledger_records_are_valid_base_events() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut l = Ledger::open(&dir.path().join("l.jsonl")).expect("ledger");
    for (kind, body) in [
        (
            "request",
            json!({"host_request_id": 3, "path": "/etc/x", "session": 9}),
        ),
        (
            "decision",
            json!({"host_request_id": 3, "verdict": "allow", "by": "ann"}),
        ),
        ("grant", json!({"grant": 1, "path": "/etc/x"})),
        ("change_flagged", json!({"path": "/etc/x"})),
        ("baseline_revert", json!({"path": "/etc/x"})),
        (
            "unapproved_rename",
            json!({"path": "/etc/x", "action": "flag"}),
        ),
        ("drift_detected", json!({"path": "/etc/x"})),
        ("daemon_started", json!({})),
    ] {
        let rec = l.append(kind, body).expect("append");
        let a = AuditEvent::from_record(&rec);
        let out = audit_event(&a);
        let errors = validate("base_event", &out);
        assert!(errors.is_empty(), "{kind}: {errors:#?}\n{out:#}");
        assert_eq!(out["activity_name"], kind);
        assert_eq!(
            out["unmapped"]["confgate"]["ledger"]["hash"],
            rec.hash.as_str()
        );
        let ms = crate::ledger::parse_time(&rec.time)
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_millis() as i64);
        assert_eq!(out["time"].as_i64(), ms);
    }
}

#[test]
fn the_validator_catches_what_is_missing() {
    let mut out = file_activity(&event(Kind::Create, true, true));
    out.as_object_mut().map(|o| o.remove("device"));
    out["actor"]["process"] = json!({"tid": 1});
    out["activity_name"] = json!("Read");
    out["file"]["hostname"] = json!("x");
    out["type_uid"] = json!(100103);
    let errors = validate("file_activity", &out);
    let text = errors.join("\n");
    for want in [
        "file_activity.device: required",
        "file_activity.actor.process: needs one of",
        "activity_id 1",
        "type_uid 100103",
        "file.hostname: not an attribute",
    ] {
        assert!(text.contains(want), "{want} not in {text}");
    }
}
