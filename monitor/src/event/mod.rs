//! The event contract (schema version [`SCHEMA_VERSION`]): one JSON object per operation,
//! written as NDJSON. External consumers depend on it: change it only by adding fields,
//! or by bumping the version.
pub mod audit;
pub mod escape;
pub mod excerpt;
pub mod ocsf;
pub mod origin;

use std::sync::Arc;

use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

/// 2: `class`, `host` and `boot_id` on every event; ledger records as `audit` events.
pub const SCHEMA_VERSION: u32 = 2;

/// The `class` of a file operation's event: `"file"` (a ledger record's is `"audit"`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileClass;

impl Serialize for FileClass {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str("file")
    }
}

/// What happened to `path`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// An existing file was opened for writing (or O_CREAT on a file that already existed).
    OpenWrite,
    /// A file was created.
    Create,
    /// Content was written (first write through one open; later writes are folded in).
    Write,
    Rename,
    Unlink,
    Truncate,
    Chmod,
    Chown,
    Link,
    Symlink,
    Mkdir,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::OpenWrite => "open_write",
            Kind::Create => "create",
            Kind::Write => "write",
            Kind::Rename => "rename",
            Kind::Unlink => "unlink",
            Kind::Truncate => "truncate",
            Kind::Chmod => "chmod",
            Kind::Chown => "chown",
            Kind::Link => "link",
            Kind::Symlink => "symlink",
            Kind::Mkdir => "mkdir",
        }
    }
}

/// A value that many events carry (a process's argv and ancestors, a session), rendered
/// to JSON once: cloning it counts a reference, serializing it copies the rendering.
/// (The rendering is used by serde_json, the only serializer of events; should rendering
/// ever fail, the value is serialized each time instead.)
pub struct Shared<T>(Arc<(T, Option<Box<RawValue>>)>);

impl<T: Serialize> Shared<T> {
    pub fn new(value: T) -> Self {
        let json = serde_json::value::to_raw_value(&value).ok();
        Shared(Arc::new((value, json)))
    }
}

impl<T: Serialize> From<T> for Shared<T> {
    fn from(value: T) -> Self {
        Shared::new(value)
    }
}

impl<T> Clone for Shared<T> {
    fn clone(&self) -> Self {
        Shared(Arc::clone(&self.0))
    }
}

impl<T> std::ops::Deref for Shared<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.0.0
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Shared<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.0.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Shared<T> {
    fn eq(&self, other: &Self) -> bool {
        self.0.0 == other.0.0
    }
}

impl<T: Serialize> Serialize for Shared<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match &self.0.1 {
            Some(json) => json.serialize(serializer),
            None => self.0.0.serialize(serializer),
        }
    }
}

/// Which observer saw the operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    Ebpf,
    Fanotify,
    Both,
    /// A confined session's supervisor, which held the operation (and performed it, or
    /// refused it).
    Supervisor,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Ancestor {
    pub pid: u32,
    pub comm: String,
    pub exe: String,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SessionRef {
    pub id: u64,
    pub agent: String,
    pub reason: Option<String>,
    pub root_pid: u32,
}

/// One attributed write-like operation. Byte strings (paths, argv, comm) use the
/// encoding of [`crate::event::escape`].
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Event {
    /// Schema version of this object.
    pub v: u32,
    /// Always `"file"` (ledger records are [`audit::AuditEvent`]s, class `"audit"`).
    pub class: FileClass,
    /// RFC 3339 UTC with nanoseconds.
    pub time: String,
    /// `time` as nanoseconds since the Unix epoch (not serialized: for the pipeline delay
    /// histogram).
    #[serde(skip)]
    pub time_ns: i128,
    /// Unique event id.
    pub id: String,
    /// This host's name and boot id ([`origin::origin`]).
    pub host: &'static str,
    pub boot_id: &'static str,
    pub kind: Kind,
    /// Canonical absolute path of the object.
    pub path: String,
    /// rename: new name; link: new link; symlink: the link's content. Else null.
    pub target: Option<String>,
    /// The syscall's return value: >= 0 on success (the new descriptor for opens), the
    /// negative errno on failure; null when unknown (fanotify only reports operations that
    /// happened, and an exit may never be seen).
    pub result: Option<i64>,
    pub pid: u32,
    pub tid: u32,
    pub ppid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Shared<Vec<String>>,
    pub cwd: Option<String>,
    /// Parent first, up to the root of the process tree (or the first unknown process).
    pub ancestors: Shared<Vec<Ancestor>>,
    pub session: Option<Shared<SessionRef>>,
    pub source: Source,
    /// Operation details, present where they apply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Details>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Details {
    /// Open flags as names, e.g. "O_WRONLY|O_CREAT|O_TRUNC".
    #[serde(skip_serializing_if = "Option::is_none")]
    pub flags: Option<String>,
    /// New mode (chmod) or creation mode, octal.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// chown: new owner (-1 means unchanged).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<i64>,
    /// truncate: new length.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length: Option<u64>,
    /// write: byte count (or iovec count for writev) of the first write.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// The object is a directory (rmdir, mkdir, rename of a directory).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub dir: bool,
    /// The path could not be fully resolved (process gone, fd unknown): `path` is the
    /// best effort, e.g. relative to an unknown directory.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub unresolved: bool,
    /// A confined session's declared scope refused the operation at once (`result` is
    /// `-EACCES`; nothing was written). Ledgered as `scope_denied`.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub scope_denied: bool,
    /// What kind of file: `"iac"` for infrastructure-as-code under a project root
    /// (`*.tf`, `*.tfvars`, `*.hcl`, `Dockerfile`, `*.service`, `*.timer`, Helm and
    /// Kustomize manifests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<&'static str>,
}

/// Render `O_*` flags of an open as names.
pub fn open_flag_names(flags: u32) -> String {
    const NAMES: &[(u32, &str)] = &[
        (0o100, "O_CREAT"),
        (0o200, "O_EXCL"),
        (0o1000, "O_TRUNC"),
        (0o2000, "O_APPEND"),
        (0o4000, "O_NONBLOCK"),
        (0o200000, "O_DIRECTORY"),
        (0o400000, "O_NOFOLLOW"),
        (0o2000000, "O_CLOEXEC"),
        (0o20200000, "O_TMPFILE"),
    ];
    let mut out = String::from(match flags & 0o3 {
        0 => "O_RDONLY",
        1 => "O_WRONLY",
        _ => "O_RDWR",
    });
    for (bit, name) in NAMES {
        if flags & bit == *bit {
            out.push('|');
            out.push_str(name);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flag_names() {
        assert_eq!(open_flag_names(0o1101), "O_WRONLY|O_CREAT|O_TRUNC");
        assert_eq!(open_flag_names(0o2002), "O_RDWR|O_APPEND");
    }

    #[test]
    fn shared_values_serialize_like_the_values() {
        let argv = vec!["sed".to_string(), "a\"b\n\\x".to_string()];
        let shared = Shared::new(argv.clone());
        assert_eq!(
            serde_json::to_string(&shared).ok(),
            serde_json::to_string(&argv).ok()
        );
        let r = SessionRef {
            id: 3,
            agent: "claude".into(),
            reason: None,
            root_pid: 9,
        };
        assert_eq!(
            serde_json::to_value(Shared::new(r.clone())).ok(),
            serde_json::to_value(&r).ok()
        );
        assert_eq!(*shared.clone(), argv);
    }

    #[test]
    fn kinds_serialize_as_contract_names() {
        for k in [
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
        ] {
            assert_eq!(
                serde_json::to_string(&k).ok(),
                Some(format!("\"{}\"", k.as_str()))
            );
        }
    }
}
