//! Every difference between the live tree and the baseline: content, mode, owner, kind,
//! created, deleted, and renamed (a created file whose content hash is a deleted one's),
//! each with a bounded, masked unified diff. Who made it is [`super::attribute`]'s.
use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt as _;

use serde::Serialize;

use super::attribute::Attribution;
use super::{Baseline, BaselineError, Entry, FileKind, read_live};
use crate::event::escape::encode;
use crate::event::excerpt::Masker;
use crate::ledger::canonical::sha256_hex;

/// Longest diff shown per file, in lines and bytes.
pub const MAX_DIFF_LINES: usize = 400;
pub const MAX_DIFF_BYTES: usize = 16 * 1024;

/// A file's state as `drift` shows it.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct State {
    pub kind: FileKind,
    /// Octal permission bits.
    pub mode: String,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub sha256: String,
    pub mtime_ms: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl From<&Entry> for State {
    fn from(e: &Entry) -> State {
        State {
            kind: e.kind,
            mode: format!("{:04o}", e.mode),
            uid: e.uid,
            gid: e.gid,
            size: e.size,
            sha256: e.sha256.clone(),
            mtime_ms: e.mtime_ms,
            target: e.target.as_deref().map(encode),
        }
    }
}

/// One difference.
#[derive(Clone, Debug, Serialize)]
pub struct Item {
    pub path: String,
    #[serde(skip)]
    pub raw: Vec<u8>,
    /// `modified`, `created`, `deleted`, `renamed`.
    pub change: &'static str,
    /// What differs: `content`, `mode`, `owner`, `kind`.
    pub what: Vec<&'static str>,
    /// A renamed file's old path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    pub baseline: Option<State>,
    pub live: Option<State>,
    /// When the baseline's state was approved, and by what.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_since_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_source: Option<String>,
    /// Unified diff (text), masked and cut at [`MAX_DIFF_BYTES`].
    #[serde(skip_serializing_if = "Option::is_none")]
    pub diff: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub diff_truncated: bool,
    /// No diff: binary content, content kept by hash only, or withheld by `gate.no_excerpt`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub no_diff: Option<&'static str>,
    /// Identity of this distinct change (the periodic check reports each once).
    pub key: String,
    pub attribution: Attribution,
}

fn item(path: &[u8], base: Option<&Entry>, live: Option<&Entry>) -> Option<Item> {
    let (change, what) = match (base, live) {
        (None, None) => return None,
        (None, Some(_)) => ("created", vec![]),
        (Some(_), None) => ("deleted", vec![]),
        (Some(b), Some(l)) => {
            let mut w = Vec::new();
            if b.kind != l.kind {
                w.push("kind");
            }
            if b.sha256 != l.sha256 {
                w.push("content");
            }
            if b.mode != l.mode {
                w.push("mode");
            }
            if (b.uid, b.gid) != (l.uid, l.gid) {
                w.push("owner");
            }
            if w.is_empty() {
                return None;
            }
            ("modified", w)
        }
    };
    let key = sha256_hex(
        format!(
            "{}\0{change}\0{:?}\0{:?}",
            encode(path),
            base.map(|b| (&b.sha256, b.mode, b.uid, b.gid)),
            live.map(|l| (&l.sha256, l.mode, l.uid, l.gid)),
        )
        .as_bytes(),
    );
    Some(Item {
        path: encode(path),
        raw: path.to_vec(),
        change,
        what,
        from: None,
        baseline: base.map(State::from),
        live: live.map(State::from),
        baseline_since_ms: base.map(|b| b.since_ms),
        baseline_source: base.map(|b| b.source.clone()),
        diff: None,
        diff_truncated: false,
        no_diff: None,
        key,
        attribution: Attribution::default(),
    })
}

/// Compares the live tree with the baseline under each of `scope` (its roots when
/// empty). A scope path outside the roots is refused.
pub fn compare(
    b: &Baseline,
    scope: &[Vec<u8>],
    masker: &Masker,
    max_file_bytes: u64,
) -> Result<Vec<Item>, BaselineError> {
    let scope: Vec<Vec<u8>> = if scope.is_empty() {
        b.roots()
            .iter()
            .map(|r| r.as_os_str().as_bytes().to_vec())
            .collect()
    } else {
        for s in scope {
            if !b.in_scope(s) {
                return Err(BaselineError::NotInScope(encode(s)));
            }
        }
        scope.to_vec()
    };
    let mut known: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
    let mut live_paths: BTreeMap<Vec<u8>, ()> = BTreeMap::new();
    for s in &scope {
        known.extend(b.entries_under(s)?);
        let p = std::path::Path::new(std::ffi::OsStr::from_bytes(s));
        live_paths.extend(b.live_paths(p).into_iter().map(|p| (p, ())));
    }
    let mut items: Vec<Item> = Vec::new();
    let mut contents: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for p in live_paths.keys() {
        let Some(live) = read_live(p, max_file_bytes)? else {
            continue;
        };
        let base = known.remove(p);
        if let Some(it) = item(p, base.as_ref(), Some(&live.entry)) {
            contents.insert(p.clone(), live.content);
            items.push(it);
        }
    }
    for (p, base) in &known {
        if let Some(it) = item(p, Some(base), None) {
            items.push(it);
        }
    }
    pair_renames(&mut items);
    for it in &mut items {
        let after = contents.remove(&it.raw).flatten();
        add_diff(b, it, after, masker);
    }
    items.sort_by(|a, b| a.raw.cmp(&b.raw));
    Ok(items)
}

/// A created file whose content hash equals a deleted file's is that file renamed.
fn pair_renames(items: &mut Vec<Item>) {
    let mut gone: Vec<usize> = Vec::new();
    for i in 0..items.len() {
        if items[i].change != "created" {
            continue;
        }
        let Some(sha) = items[i].live.as_ref().map(|l| l.sha256.clone()) else {
            continue;
        };
        let found = items.iter().enumerate().position(|(j, d)| {
            d.change == "deleted"
                && !gone.contains(&j)
                && d.baseline.as_ref().is_some_and(|b| b.sha256 == sha)
        });
        if let Some(j) = found {
            let from = items[j].path.clone();
            let base = items[j].baseline.clone();
            let it = &mut items[i];
            it.change = "renamed";
            it.from = Some(from);
            it.baseline = base;
            gone.push(j);
        }
    }
    gone.sort_unstable();
    for j in gone.into_iter().rev() {
        items.remove(j);
    }
}

fn add_diff(b: &Baseline, it: &mut Item, after: Option<Vec<u8>>, masker: &Masker) {
    if it.change == "renamed" || !(it.what.is_empty() || it.what.contains(&"content")) {
        return;
    }
    if masker.withholds(&it.raw) {
        it.no_diff = Some("withheld");
        return;
    }
    let before = match b.get(&it.raw) {
        Ok(Some(e)) if e.kind == FileKind::File => match b.content(&it.raw, &e) {
            Ok(c) => c,
            Err(_) => {
                it.no_diff = Some("content kept by hash only");
                return;
            }
        },
        _ => Some(Vec::new()),
    };
    let after = match (&it.live, after) {
        (None, _) => Some(Vec::new()),
        (Some(l), _) if l.kind != FileKind::File => Some(Vec::new()),
        (Some(_), a) => a,
    };
    let (Some(before), Some(after)) = (before, after) else {
        it.no_diff = Some("content kept by hash only");
        return;
    };
    match masker.diff_within(&it.raw, &before, &after, MAX_DIFF_LINES, MAX_DIFF_BYTES) {
        Some(d) => {
            it.diff = Some(d.text);
            it.diff_truncated = d.truncated;
        }
        None => it.no_diff = Some("binary"),
    }
}
