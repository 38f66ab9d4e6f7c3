//! The events in OCSF 1.x (`output.format = "ocsf"`): a file operation is a File System
//! Activity (class_uid 1001, category_uid 1 System Activity), a ledger record ([`AuditEvent`])
//! a Base Event (class_uid 0, activity 99 Other: OCSF has no class for an approval) with
//! the Host profile (for `device`). What OCSF has no attribute for is kept under
//! `unmapped.confgate`.
//!
//! Checked against OCSF [`VERSION`]: the schema's required attributes, their types and the
//! enums used are vendored in `schema-1.8.0.json` (from github.com/ocsf/ocsf-schema,
//! `scripts/ocsf-vendor.py`) and the tests validate every kind's output against them.
use serde_json::{Map, Value, json};

use super::audit::AuditEvent;
use super::{Event, Kind, Source};

/// The OCSF version the output follows (`metadata.version`).
pub const VERSION: &str = "1.8.0";

/// File System Activity.
pub const FILE_ACTIVITY: u32 = 1001;
/// System Activity.
pub const SYSTEM_CATEGORY: u32 = 1;

/// OCSF `activity_id` and its caption for a kind (checked against the schema's enum in
/// the tests): create 1, update 3 (content written, truncated), delete 4, rename 5, set
/// security 7 (mode, owner: a file's permissions on Linux), open 14 (a handle opened for
/// writing). Links, symbolic links and directories are created (1).
pub fn activity(kind: Kind) -> (u32, &'static str) {
    match kind {
        Kind::Create | Kind::Link | Kind::Symlink | Kind::Mkdir => (1, "Create"),
        Kind::Write | Kind::Truncate => (3, "Update"),
        Kind::Unlink => (4, "Delete"),
        Kind::Rename => (5, "Rename"),
        Kind::Chmod | Kind::Chown => (7, "Set Security"),
        Kind::OpenWrite => (14, "Open"),
    }
}

/// OCSF `severity_id` of an audit record's kind: a change nobody approved, a drift, a
/// refusal or a failure to put something back is Medium (3); the rest Informational (1).
pub fn audit_severity(kind: &str) -> (u32, &'static str) {
    match kind {
        "drift_detected" | "unapproved_rename" | "change_flagged" | "denied_by_policy"
        | "denied_builtin" | "revert_failed" | "hold_lost" | "request_rejected"
        | "fallback_verdict" => (3, "Medium"),
        _ => (1, "Informational"),
    }
}

/// `profiles`: the Base Event names its Host profile (that is what allows `device`).
fn metadata(uid: &str, host: &str, profiles: &[&str]) -> Value {
    json!({
        "version": VERSION,
        "uid": uid,
        "profiles": profiles,
        "reporter": {"hostname": host, "name": "confgate"},
        "product": {
            "name": "confgate",
            "vendor_name": "confgate",
            "version": env!("CARGO_PKG_VERSION"),
        },
    })
}

fn device(host: &str) -> Value {
    // type_id 0: Unknown (a server, a desktop or a VM: confgate cannot tell).
    json!({"hostname": host, "name": host, "type_id": 0, "type": "Unknown"})
}

/// The last component of an encoded path (the whole path for `/`).
fn base_name(path: &str) -> &str {
    match path.trim_end_matches('/').rsplit_once('/') {
        Some((_, name)) if !name.is_empty() => name,
        _ => path,
    }
}

fn file(path: &str, type_id: u32) -> Value {
    let type_name = match type_id {
        1 => "Regular File",
        2 => "Folder",
        7 => "Symbolic Link",
        _ => "Unknown",
    };
    json!({"path": path, "name": base_name(path), "type_id": type_id, "type": type_name})
}

/// The File System Activity of `e`.
pub fn file_activity(e: &Event) -> Value {
    let (activity_id, activity_name) = activity(e.kind);
    let dir = e.details.as_ref().is_some_and(|d| d.dir);
    let type_id = match e.kind {
        Kind::Mkdir => 2,
        Kind::Symlink => 7,
        _ if dir => 2,
        Kind::Unlink | Kind::Rename | Kind::Chmod | Kind::Chown | Kind::Link => 0,
        _ => 1,
    };
    let (status_id, status) = match e.result {
        Some(r) if r < 0 => (2, "Failure"),
        Some(_) => (1, "Success"),
        None => (0, "Unknown"),
    };
    let mut process = Map::new();
    process.insert("pid".into(), json!(e.pid));
    process.insert("tid".into(), json!(e.tid));
    process.insert("name".into(), json!(e.comm));
    if !e.argv.is_empty() {
        process.insert("cmd_line".into(), json!(e.argv.join(" ")));
    }
    if let Some(exe) = &e.exe {
        process.insert("path".into(), json!(exe));
    }
    if let Some(cwd) = &e.cwd {
        process.insert("working_directory".into(), json!(cwd));
    }
    if let Some(uid) = e.uid {
        process.insert("user".into(), json!({"uid": uid.to_string()}));
    }
    if let Some(ppid) = e.ppid {
        let mut parent = Map::new();
        parent.insert("pid".into(), json!(ppid));
        if let Some(a) = e.ancestors.first().filter(|a| a.pid == ppid) {
            parent.insert("name".into(), json!(a.comm));
            parent.insert("path".into(), json!(a.exe));
        }
        process.insert("parent_process".into(), Value::Object(parent));
    }
    let ancestry: Vec<Value> = e
        .ancestors
        .iter()
        .map(|a| json!({"pid": a.pid, "name": a.comm, "path": a.exe}))
        .collect();
    process.insert("ancestry".into(), Value::Array(ancestry));
    let mut actor = Map::new();
    if let Some(s) = &e.session {
        let session = json!({"uid": s.id.to_string(), "issuer": "confgate"});
        process.insert("session".into(), session.clone());
        actor.insert("session".into(), session);
        // The agent is the application that initiated the activity.
        actor.insert("app_name".into(), json!(s.agent));
    }
    if let Some(uid) = e.uid {
        actor.insert("user".into(), json!({"uid": uid.to_string()}));
    }
    actor.insert("process".into(), Value::Object(process));

    let mut out = Map::new();
    out.insert("class_uid".into(), json!(FILE_ACTIVITY));
    out.insert("class_name".into(), json!("File System Activity"));
    out.insert("category_uid".into(), json!(SYSTEM_CATEGORY));
    out.insert("category_name".into(), json!("System Activity"));
    out.insert("activity_id".into(), json!(activity_id));
    out.insert("activity_name".into(), json!(activity_name));
    out.insert(
        "type_uid".into(),
        json!(u64::from(FILE_ACTIVITY) * 100 + u64::from(activity_id)),
    );
    out.insert(
        "type_name".into(),
        json!(format!("File System Activity: {activity_name}")),
    );
    out.insert("time".into(), json!(time_ms(e.time_ns)));
    out.insert("severity_id".into(), json!(1));
    out.insert("severity".into(), json!("Informational"));
    out.insert("status_id".into(), json!(status_id));
    out.insert("status".into(), json!(status));
    if let Some(r) = e.result {
        out.insert("status_code".into(), json!(r.to_string()));
    }
    out.insert("metadata".into(), metadata(&e.id, e.host, &[]));
    out.insert("device".into(), device(e.host));
    out.insert("actor".into(), Value::Object(actor));
    out.insert("file".into(), file(&e.path, type_id));
    // Where the operation put the file: a rename's new name, a link's new link.
    if let (Kind::Rename | Kind::Link, Some(t)) = (e.kind, &e.target) {
        out.insert("file_result".into(), file(t, if dir { 2 } else { 0 }));
    }
    out.insert("unmapped".into(), json!({"confgate": unmapped(e)}));
    Value::Object(out)
}

/// What the File System Activity has no attribute for.
fn unmapped(e: &Event) -> Value {
    let mut u = Map::new();
    u.insert("v".into(), json!(e.v));
    u.insert("id".into(), json!(e.id));
    u.insert("kind".into(), json!(e.kind));
    u.insert("boot_id".into(), json!(e.boot_id));
    u.insert("time".into(), json!(e.time));
    u.insert(
        "source".into(),
        json!(match e.source {
            Source::Ebpf => "ebpf",
            Source::Fanotify => "fanotify",
            Source::Both => "both",
            Source::Supervisor => "supervisor",
        }),
    );
    if let Some(t) = &e.target {
        u.insert("target".into(), json!(t));
    }
    if let Some(r) = e.result {
        u.insert("result".into(), json!(r));
    }
    if let Some(s) = &e.session {
        u.insert(
            "session".into(),
            json!({"id": s.id, "agent": s.agent, "reason": s.reason, "root_pid": s.root_pid}),
        );
    }
    if let Some(d) = &e.details {
        u.insert("details".into(), json!(d));
    }
    Value::Object(u)
}

/// Milliseconds since the epoch (OCSF `timestamp_t`).
fn time_ms(ns: i128) -> i64 {
    i64::try_from(ns.div_euclid(1_000_000)).unwrap_or(0)
}

/// The Base Event of a ledger record.
pub fn audit_event(a: &AuditEvent) -> Value {
    let (severity_id, severity) = audit_severity(&a.kind);
    let ms = crate::ledger::parse_time(&a.time)
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    let message = match a.path() {
        Some(p) => format!("confgate {} {}", a.kind, p),
        None => format!("confgate {}", a.kind),
    };
    json!({
        "class_uid": 0,
        "class_name": "Base Event",
        "category_uid": 0,
        "category_name": "Uncategorized",
        "activity_id": 99,
        "activity_name": a.kind,
        "type_uid": 99,
        "type_name": "Base Event: Other",
        "time": ms,
        "severity_id": severity_id,
        "severity": severity,
        "message": message,
        "metadata": metadata(&a.id, a.host, &["host"]),
        "device": device(a.host),
        "unmapped": {"confgate": a},
    })
}

#[cfg(test)]
mod tests;
