//! [`OpSet`]: the operations an open (or a rename) performs on a gated file.
//!
//! A small bit set, written in configuration, requests and grants as a list of names:
//! `"write"` (opened for writing), `"create"` (the open or a mkdir/mknod/symlink/link
//! created the name), `"truncate"` (`O_TRUNC` or `truncate(2)`), `"rename"` (a rename into
//! the path), `"remove"` (unlink, rmdir, or a rename away from the path), `"chmod"`,
//! `"chown"`, `"xattr"` (extended attributes, ACLs included) and `"link"` (a new hard link
//! to the gated file elsewhere). Opens name the first three; the session gate's supervisor
//! names the others.
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A set of file operations. `OpSet::EMPTY` is the empty set; in a rule's `ops` it means
/// "every operation".
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct OpSet(u16);

/// One operation's bit and name, in display order.
const NAMES: [(OpSet, &str); 9] = [
    (OpSet::WRITE, "write"),
    (OpSet::CREATE, "create"),
    (OpSet::TRUNCATE, "truncate"),
    (OpSet::RENAME, "rename"),
    (OpSet::REMOVE, "remove"),
    (OpSet::CHMOD, "chmod"),
    (OpSet::CHOWN, "chown"),
    (OpSet::XATTR, "xattr"),
    (OpSet::LINK, "link"),
];

impl OpSet {
    /// No operation.
    pub const EMPTY: OpSet = OpSet(0);
    /// Opened for writing (`O_WRONLY` or `O_RDWR`).
    pub const WRITE: OpSet = OpSet(1);
    /// The open created the file.
    pub const CREATE: OpSet = OpSet(1 << 1);
    /// The open truncates the file (`O_TRUNC`).
    pub const TRUNCATE: OpSet = OpSet(1 << 2);
    /// A rename into the path.
    pub const RENAME: OpSet = OpSet(1 << 3);
    /// The name is removed: unlink, rmdir, or a rename away from it.
    pub const REMOVE: OpSet = OpSet(1 << 4);
    /// Its permission bits change.
    pub const CHMOD: OpSet = OpSet(1 << 5);
    /// Its owner or group changes.
    pub const CHOWN: OpSet = OpSet(1 << 6);
    /// An extended attribute (ACLs included) is set or removed.
    pub const XATTR: OpSet = OpSet(1 << 7);
    /// A new hard link to it is made elsewhere.
    pub const LINK: OpSet = OpSet(1 << 8);
    /// Every operation.
    pub const ALL: OpSet = OpSet(0b1_1111_1111);

    /// The operations of an `open(2)` with `flags`; `created` says whether this open
    /// created the file (which the caller learns from `O_CREAT` plus the file's ctime, or
    /// `O_EXCL`). `O_TRUNC` counts even with `O_RDONLY`: Linux truncates then too.
    pub fn from_open_flags(flags: u32, created: bool) -> OpSet {
        // The flag values are small positive constants; the casts cannot lose bits.
        let accmode = flags & libc::O_ACCMODE as u32;
        let mut ops = OpSet::EMPTY;
        if accmode == libc::O_WRONLY as u32 || accmode == libc::O_RDWR as u32 {
            ops |= OpSet::WRITE;
        }
        if flags & libc::O_TRUNC as u32 != 0 {
            ops |= OpSet::TRUNCATE;
        }
        if created {
            ops |= OpSet::CREATE;
        }
        ops
    }

    /// Whether no operation is in the set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Whether every operation of `other` is in `self`.
    pub const fn contains(self, other: OpSet) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether `self` and `other` share an operation.
    pub const fn intersects(self, other: OpSet) -> bool {
        self.0 & other.0 != 0
    }

    /// The names of the operations in the set, in a fixed order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        NAMES
            .into_iter()
            .filter(move |(op, _)| self.contains(*op))
            .map(|(_, name)| name)
    }

    /// The names as owned strings (for protobuf `repeated string operations`).
    pub fn to_strings(self) -> Vec<String> {
        self.names().map(str::to_owned).collect()
    }

    /// Parse one operation name.
    pub fn parse_one(name: &str) -> Result<OpSet, UnknownOp> {
        NAMES
            .iter()
            .find(|(_, n)| *n == name)
            .map(|(op, _)| *op)
            .ok_or_else(|| UnknownOp(escape_short(name)))
    }

    /// Parse a list of operation names (duplicates are fine).
    pub fn from_names<S: AsRef<str>>(names: &[S]) -> Result<OpSet, UnknownOp> {
        names.iter().try_fold(OpSet::EMPTY, |acc, n| {
            Ok(acc | OpSet::parse_one(n.as_ref())?)
        })
    }
}

/// An operation name that is not one of [`OpSet`]'s. Holds the name, escaped and
/// shortened (it may come from the network).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown operation {0}: expected \"write\", \"create\", \"truncate\", \"rename\", \
     \"remove\", \"chmod\", \"chown\", \"xattr\" or \"link\""
)]
pub struct UnknownOp(pub String);

/// `{:?}` of at most the first 64 characters, so hostile input cannot flood a message.
fn escape_short(s: &str) -> String {
    let mut end = s.len().min(64);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < s.len() { "..." } else { "" };
    format!("{:?}{more}", &s[..end])
}

impl std::ops::BitOr for OpSet {
    type Output = OpSet;
    fn bitor(self, rhs: OpSet) -> OpSet {
        OpSet(self.0 | rhs.0)
    }
}

impl std::ops::BitOrAssign for OpSet {
    fn bitor_assign(&mut self, rhs: OpSet) {
        self.0 |= rhs.0;
    }
}

impl std::ops::BitAnd for OpSet {
    type Output = OpSet;
    fn bitand(self, rhs: OpSet) -> OpSet {
        OpSet(self.0 & rhs.0)
    }
}

/// `write,create` (empty set: `-`).
impl fmt::Display for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("-");
        }
        for (i, name) in self.names().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            f.write_str(name)?;
        }
        Ok(())
    }
}

impl fmt::Debug for OpSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OpSet({self})")
    }
}

/// Parses `write,create` (commas, optional spaces); `""` and `-` are the empty set.
impl FromStr for OpSet {
    type Err = UnknownOp;
    fn from_str(s: &str) -> Result<OpSet, UnknownOp> {
        let s = s.trim();
        if s.is_empty() || s == "-" {
            return Ok(OpSet::EMPTY);
        }
        s.split(',')
            .try_fold(OpSet::EMPTY, |acc, n| Ok(acc | OpSet::parse_one(n.trim())?))
    }
}

/// Serialized as a list of names: `["write", "create"]`.
impl Serialize for OpSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.names())
    }
}

impl<'de> Deserialize<'de> for OpSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<OpSet, D::Error> {
        let names = Vec::<String>::deserialize(d)?;
        OpSet::from_names(&names).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_flags() {
        let o = |f: i32| f as u32;
        assert_eq!(
            OpSet::from_open_flags(o(libc::O_RDONLY), false),
            OpSet::EMPTY
        );
        assert_eq!(
            OpSet::from_open_flags(o(libc::O_WRONLY), false),
            OpSet::WRITE
        );
        assert_eq!(OpSet::from_open_flags(o(libc::O_RDWR), false), OpSet::WRITE);
        assert_eq!(
            OpSet::from_open_flags(o(libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC), true),
            OpSet::WRITE | OpSet::CREATE | OpSet::TRUNCATE
        );
        // O_CREAT on an existing file creates nothing.
        assert_eq!(
            OpSet::from_open_flags(o(libc::O_WRONLY | libc::O_CREAT), false),
            OpSet::WRITE
        );
        assert_eq!(
            OpSet::from_open_flags(o(libc::O_RDONLY | libc::O_TRUNC), false),
            OpSet::TRUNCATE
        );
        // Unrelated flags are ignored.
        assert_eq!(
            OpSet::from_open_flags(o(libc::O_WRONLY | libc::O_CLOEXEC | libc::O_APPEND), false),
            OpSet::WRITE
        );
    }

    #[test]
    fn set_algebra() {
        let wc = OpSet::WRITE | OpSet::CREATE;
        assert!(wc.contains(OpSet::WRITE));
        assert!(!wc.contains(OpSet::WRITE | OpSet::TRUNCATE));
        assert!(wc.intersects(OpSet::CREATE | OpSet::RENAME));
        assert!(!wc.intersects(OpSet::RENAME));
        assert!(wc.contains(OpSet::EMPTY));
        assert!(OpSet::ALL.contains(OpSet::RENAME | wc));
        assert_eq!(wc & OpSet::CREATE, OpSet::CREATE);
    }

    #[test]
    fn strings_round_trip() {
        let all = OpSet::ALL;
        assert_eq!(
            all.to_string(),
            "write,create,truncate,rename,remove,chmod,chown,xattr,link"
        );
        assert_eq!(all.to_string().parse::<OpSet>().unwrap(), all);
        assert_eq!(
            " create , write ".parse::<OpSet>().unwrap(),
            OpSet::WRITE | OpSet::CREATE
        );
        assert_eq!("".parse::<OpSet>().unwrap(), OpSet::EMPTY);
        assert_eq!(OpSet::EMPTY.to_string(), "-");
        assert_eq!("-".parse::<OpSet>().unwrap(), OpSet::EMPTY);
        assert_eq!(
            OpSet::from_names(&["rename", "rename"]).unwrap(),
            OpSet::RENAME
        );
        assert_eq!(
            (OpSet::TRUNCATE | OpSet::WRITE).to_strings(),
            vec!["write".to_owned(), "truncate".to_owned()]
        );
    }

    #[test]
    fn unknown_names_are_errors_and_bounded() {
        let e = "write,chmode".parse::<OpSet>().unwrap_err();
        assert_eq!(e, UnknownOp("\"chmode\"".into()));
        assert!(e.to_string().contains("expected \"write\""), "{e}");
        let long = "x\n".repeat(1000);
        let e = OpSet::parse_one(&long).unwrap_err();
        assert!(e.0.len() < 200, "{}", e.0);
        assert!(!e.0.contains('\n'));
        assert!(OpSet::parse_one("Write").is_err());
    }

    #[test]
    fn serde_as_a_list() {
        let ops = OpSet::WRITE | OpSet::RENAME;
        let json = serde_json::to_string(&ops).unwrap();
        assert_eq!(json, r#"["write","rename"]"#);
        assert_eq!(serde_json::from_str::<OpSet>(&json).unwrap(), ops);
        assert!(serde_json::from_str::<OpSet>(r#"["delete"]"#).is_err());
    }
}
