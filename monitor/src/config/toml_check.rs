//! The TOML span checker every confgate TOML file shares (the daemon's configuration and
//! the approval service's settings): [`ConfigError`] with the file, line and column of a
//! problem, [`parse_checked`] (parse, then validate, then point each problem at its field
//! in the text) and the [`Checker`] that collects validation problems.
use std::fmt;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use toml::Spanned;

/// An error in loading or checking the configuration. `Display` gives
/// `path:line:column: message` when the position is known.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The cause is part of the message (not a `#[source]`), so that error chains do not
    // print it twice.
    #[error("{}: {cause}", path.display())]
    Io { path: PathBuf, cause: io::Error },
    /// Not TOML, or TOML that does not fit the schema (unknown key, wrong type).
    /// `line` and `column` are 1-based; the column counts characters.
    #[error("{}:{line}:{column}: {message}", path.display())]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    /// Well-formed but not acceptable. `field` is a path into the file such as
    /// `watch.paths[2]`; `location` is its (line, column) when it could be found, and
    /// `path` is empty when the configuration did not come from a file.
    #[error("{}", DisplayInvalid { path, field, message, location })]
    Invalid {
        path: PathBuf,
        field: String,
        message: String,
        location: Option<(usize, usize)>,
    },
}

struct DisplayInvalid<'a> {
    path: &'a Path,
    field: &'a str,
    message: &'a str,
    location: &'a Option<(usize, usize)>,
}

impl fmt::Display for DisplayInvalid<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.path.as_os_str().is_empty() {
            write!(f, "{}:", self.path.display())?;
            if let Some((line, column)) = self.location {
                write!(f, "{line}:{column}:")?;
            }
            f.write_str(" ")?;
        }
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl ConfigError {
    /// An [`ConfigError::Invalid`] not tied to a file.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: PathBuf::new(),
            field: field.into(),
            message: message.into(),
            location: None,
        }
    }

    /// Attach the file and, for `Invalid`, the position of its field in `text`.
    fn in_file(self, origin: &Path, text: &str) -> Self {
        match self {
            ConfigError::Invalid { field, message, .. } => {
                let location = locate_field(text, &field);
                ConfigError::Invalid {
                    path: origin.to_owned(),
                    field,
                    message,
                    location,
                }
            }
            other => other,
        }
    }
}

/// Collects validation problems.
#[derive(Default)]
pub(crate) struct Checker {
    pub(crate) problems: Vec<ConfigError>,
}

impl Checker {
    pub(crate) fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.problems.push(ConfigError::invalid(field, message));
    }

    /// An absolute, normalised path without NUL; returns whether it is one.
    pub(crate) fn abs_path(&mut self, field: &str, p: &Path) -> bool {
        let bytes = p.as_os_str().as_bytes();
        let problem = if !bytes.starts_with(b"/") {
            Some(format!("{} is not an absolute path", p.display()))
        } else if bytes.contains(&0) {
            Some(format!("{} contains a NUL byte", p.display()))
        } else if bytes.split(|b| *b == b'/').any(|c| c == b"." || c == b"..") {
            Some(format!(
                "{} has a `.` or `..` component; write it normalised",
                p.display()
            ))
        } else {
            None
        };
        match problem {
            Some(message) => {
                self.fail(field, message);
                false
            }
            None => true,
        }
    }
}

/// Parses `text` as TOML into `T`, then runs `problems` on it. Parse errors carry their
/// line and column; validation errors get the position of their field in `text`. Shared
/// by every TOML file of confgate. Never returns an empty error list.
pub(crate) fn parse_checked<T: serde::de::DeserializeOwned>(
    text: &str,
    origin: &Path,
    problems: impl FnOnce(&T) -> Vec<ConfigError>,
) -> Result<T, Vec<ConfigError>> {
    let value: T = toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => line_column(text, span.start),
            None => (1, 1),
        };
        vec![ConfigError::Parse {
            path: origin.to_owned(),
            line,
            column,
            // One line: toml's messages may span several.
            message: e.message().trim().lines().collect::<Vec<_>>().join("; "),
        }]
    })?;
    let problems = problems(&value);
    if problems.is_empty() {
        Ok(value)
    } else {
        Err(problems
            .into_iter()
            .map(|e| e.in_file(origin, text))
            .collect())
    }
}

pub(crate) fn read_text(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|cause| ConfigError::Io {
        path: path.to_owned(),
        cause,
    })?;
    decode_text(path, bytes)
}

/// The bytes read from `path` as text (TOML is UTF-8; else an error with the line and
/// column of the first invalid byte).
pub(crate) fn decode_text(path: &Path, bytes: Vec<u8>) -> Result<String, ConfigError> {
    String::from_utf8(bytes).map_err(|e| {
        let valid = e.utf8_error().valid_up_to();
        let text = String::from_utf8_lossy(e.as_bytes());
        // Lossy decoding keeps the valid prefix intact, so the offset still holds.
        let (line, column) = line_column(&text, valid);
        ConfigError::Parse {
            path: path.to_owned(),
            line,
            column,
            message: "the file is not valid UTF-8 (TOML must be)".to_owned(),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` of `text`.
pub fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text.as_bytes()[..offset.min(text.len())];
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    // Count characters: every byte that does not continue a UTF-8 sequence.
    let column = before[line_start..]
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count()
        + 1;
    (line, column)
}

// ---------------------------------------------------------------------------------------
// Locating a field in the source text.

/// A TOML value tree that keeps the span of every value (toml fills `Spanned` for any
/// value it deserializes, at any depth).
enum Node {
    Table(Vec<(String, Spanned<Node>)>),
    Array(Vec<Spanned<Node>>),
    Leaf,
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any TOML value")
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Node, E> {
        Ok(Node::Leaf)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            entries.push((key, map.next_value::<Spanned<Node>>()?));
        }
        Ok(Node::Table(entries))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Array(items))
    }
}

/// Position of `field` (`watch.paths[2]`, `detect[0].comm[1]`) in `text`: the value
/// itself, or the deepest enclosing value present in the file.
fn locate_field(text: &str, field: &str) -> Option<(usize, usize)> {
    let root: Node = toml::from_str(text).ok()?;
    let mut node = &root;
    let mut found: Option<usize> = None;
    for step in field_steps(field) {
        let next = match (node, step) {
            (Node::Table(entries), Step::Key(key)) => {
                entries.iter().find(|(k, _)| k == key).map(|(_, v)| v)
            }
            (Node::Array(items), Step::Index(i)) => items.get(i),
            _ => None,
        };
        match next {
            Some(v) => {
                found = Some(v.span().start);
                node = v.get_ref();
            }
            None => break,
        }
    }
    found.map(|offset| line_column(text, offset))
}

#[derive(Clone, Copy)]
enum Step<'a> {
    Key(&'a str),
    Index(usize),
}

fn field_steps(field: &str) -> Vec<Step<'_>> {
    let mut steps = Vec::new();
    for part in field.split('.') {
        let mut pieces = part.split('[');
        if let Some(key) = pieces.next().filter(|k| !k.is_empty()) {
            steps.push(Step::Key(key));
        }
        for index in pieces {
            match index.trim_end_matches(']').parse() {
                Ok(i) => steps.push(Step::Index(i)),
                Err(_) => return steps,
            }
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_counts_characters() {
        assert_eq!(line_column("ab\ncdé f", 9), (2, 6));
        assert_eq!(line_column("", 0), (1, 1));
        assert_eq!(line_column("abc", 99), (1, 4));
    }

    #[test]
    fn field_missing_from_file_points_at_its_section() {
        // `exclude` is not in the file; the error points at the enclosing `[watch]`.
        let text = "# c\n[watch]\npaths = []\n";
        assert_eq!(
            locate_field(text, "watch.exclude[0]"),
            locate_field(text, "watch")
        );
        assert!(locate_field(text, "watch").is_some());
        assert_eq!(locate_field(text, "watch.paths"), Some((3, 9)));
        assert_eq!(locate_field("x = 1\n", "watch.paths[0]"), None);
    }
}
