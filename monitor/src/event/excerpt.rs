//! What a person sees of a file's content: a short excerpt or a unified diff, bounded,
//! escaped and with secrets masked.
//!
//! Approvers decide better when they see the change, not only its hash; but file content
//! comes from a watched, possibly hostile process and may hold credentials. So what leaves
//! the daemon for requests, notifications and the ledger's diffs is:
//! - **bounded**: at most [`MAX_LINES`] lines and [`MAX_BYTES`] bytes, with a last line
//!   `[confgate: ... cut, N more lines not shown]` when anything was cut;
//! - **escaped**: each line through [`escape::for_terminal`] (control characters, invalid
//!   UTF-8 and escape sequences made visible), lines joined with `\n`, so the text holds no
//!   control character but the line breaks;
//! - **masked**: in lines of the `KEY=value` / `KEY: value` / `"key": value` shapes
//!   (`.env`, shell, YAML, INI, JSON), a value whose key matches one of `gate.mask`
//!   (case-insensitive globs such as `*TOKEN*`) is replaced by [`MASK`]. A changed secret
//!   still shows as a changed line. The baseline and pre-images keep the real bytes.
//! - **withheld** for paths matching `gate.no_excerpt` (shadow files, private keys):
//!   approvers see the hash only.
use std::borrow::Cow;

use globset::{Candidate, GlobBuilder, GlobSet, GlobSetBuilder};

use super::escape;

/// Most lines of an excerpt or diff.
pub const MAX_LINES: usize = 60;
/// Most bytes of an excerpt or diff (escaped text).
pub const MAX_BYTES: usize = 4096;
/// What a masked value becomes.
pub const MASK: &str = "********";

/// Default `gate.mask`: key names whose values are never shown.
pub fn default_masks() -> Vec<String> {
    [
        "*KEY*",
        "*SECRET*",
        "*TOKEN*",
        "*PASSWORD*",
        "*PASSWD*",
        "*CREDENTIAL*",
    ]
    .map(String::from)
    .to_vec()
}

/// Default `gate.no_excerpt`: paths whose content is never shown.
pub fn default_no_excerpt() -> Vec<String> {
    [
        "/etc/shadow*",
        "/etc/gshadow*",
        "/etc/security/opasswd",
        "/etc/ssh/ssh_host_*",
        "**/*.key",
        "**/*.pem",
        "**/*.p12",
        "**/id_rsa*",
        "**/id_ecdsa*",
        "**/id_ed25519*",
    ]
    .map(String::from)
    .to_vec()
}

/// A bad `gate.mask` or `gate.no_excerpt` entry.
#[derive(Debug, thiserror::Error)]
#[error("{field} entry {pattern:?}: {reason}")]
pub struct MaskError {
    pub field: &'static str,
    pub pattern: String,
    pub reason: String,
}

/// The masking and withholding policy (`gate.mask`, `gate.no_excerpt`).
#[derive(Clone, Debug)]
pub struct Masker {
    keys: GlobSet,
    withheld: GlobSet,
}

impl Default for Masker {
    fn default() -> Self {
        // The defaults are valid globs (checked by a test); an empty policy otherwise.
        Masker::new(&default_masks(), &default_no_excerpt()).unwrap_or(Masker {
            keys: GlobSet::empty(),
            withheld: GlobSet::empty(),
        })
    }
}

fn set(
    field: &'static str,
    patterns: &[String],
    case_insensitive: bool,
) -> Result<GlobSet, MaskError> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = GlobBuilder::new(p)
            .case_insensitive(case_insensitive)
            .literal_separator(!case_insensitive)
            .build()
            .map_err(|e| MaskError {
                field,
                pattern: p.clone(),
                reason: e.kind().to_string(),
            })?;
        b.add(glob);
    }
    b.build().map_err(|e| MaskError {
        field,
        pattern: patterns.join(", "),
        reason: e.to_string(),
    })
}

impl Masker {
    /// `masks`: key-name globs, matched case-insensitively; `no_excerpt`: path globs.
    pub fn new(masks: &[String], no_excerpt: &[String]) -> Result<Masker, MaskError> {
        Ok(Masker {
            keys: set("gate.mask", masks, true)?,
            withheld: set("gate.no_excerpt", no_excerpt, false)?,
        })
    }

    /// Whether the content of `path` is never shown.
    pub fn withholds(&self, path: &[u8]) -> bool {
        self.withheld
            .is_match_candidate(&Candidate::from_bytes(path))
    }

    /// `line` with the value masked when its key matches.
    pub fn mask_line<'a>(&self, line: &'a str) -> Cow<'a, str> {
        match split_assignment(line) {
            Some((key, value_at)) if self.keys.is_match(key) => {
                let value = line[value_at..].trim();
                if value.is_empty() {
                    Cow::Borrowed(line)
                } else {
                    Cow::Owned(format!("{}{MASK}", &line[..value_at]))
                }
            }
            _ => Cow::Borrowed(line),
        }
    }
}

impl Masker {
    /// `text` (one command-line entry, a stated reason) with the value of every
    /// `KEY=VALUE` whose key matches masked (`API_TOKEN=abc`, `--password=abc`,
    /// `PGPASSWORD='a b'`): the value runs to the next space, quote or shell operator, or
    /// within its quotes when quoted.
    pub fn mask_words<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let b = text.as_bytes();
        let is_key = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'-' | b'.');
        let is_end = |c: u8| {
            c.is_ascii_whitespace() || matches!(c, b'"' | b'\'' | b';' | b'&' | b'|' | b')' | b'`')
        };
        let (mut out, mut last, mut i) = (String::new(), 0, 0);
        while let Some(off) = text[i..].find('=') {
            let eq = i + off;
            let mut k = eq;
            while k > 0 && is_key(b[k - 1]) {
                k -= 1;
            }
            // The value: quoted (to its closing quote) or bare.
            let (from, to) = match b.get(eq + 1) {
                Some(&q @ (b'"' | b'\'')) => {
                    let end = text[eq + 2..]
                        .find(q as char)
                        .map_or(b.len(), |e| eq + 2 + e);
                    (eq + 2, end)
                }
                _ => {
                    let mut v = eq + 1;
                    while v < b.len() && !is_end(b[v]) {
                        v += 1;
                    }
                    (eq + 1, v)
                }
            };
            let key = text[k..eq].trim_start_matches('-');
            if !key.is_empty() && to > from && self.keys.is_match(key) {
                out.push_str(&text[last..from]);
                out.push_str(MASK);
                last = to;
                i = to;
            } else {
                // An unmasked value may hold another assignment (`A=1\nAPI_TOKEN=x`).
                i = eq + 1;
            }
        }
        if last == 0 {
            return Cow::Borrowed(text);
        }
        out.push_str(&text[last..]);
        Cow::Owned(out)
    }

    /// A command line (`argv` entries) with secrets masked: [`Masker::mask_words`] in each
    /// entry, and the entry after a flag whose name matches (`--password hunter2`,
    /// `-token x`) replaced whole.
    pub fn mask_argv(&self, argv: &[String]) -> Vec<String> {
        let mut out = Vec::with_capacity(argv.len());
        let mut mask_next = false;
        for a in argv {
            if mask_next {
                out.push(MASK.to_owned());
                mask_next = false;
                continue;
            }
            let flag = a.strip_prefix('-').map(|f| f.trim_start_matches('-'));
            mask_next =
                flag.is_some_and(|f| !f.is_empty() && !f.contains('=') && self.keys.is_match(f));
            out.push(self.mask_words(a).into_owned());
        }
        out
    }
}

/// The key of an assignment line and where its value starts (after the separator and
/// spaces): `KEY=v`, `export KEY=v`, `key: v`, `key = v`, `"key": v`, `- key: v`.
fn split_assignment(line: &str) -> Option<(&str, usize)> {
    let start = line.len() - line.trim_start().len();
    let mut rest = &line[start..];
    let mut at = start;
    for prefix in ["export ", "- "] {
        if let Some(r) = rest.strip_prefix(prefix) {
            at += prefix.len();
            rest = r.trim_start();
            at += r.len() - rest.len();
        }
    }
    let quoted = rest.starts_with('"') || rest.starts_with('\'');
    let key_start = at + usize::from(quoted);
    let body = &line[key_start..];
    let key_len = body
        .find(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
        .unwrap_or(body.len());
    if key_len == 0 {
        return None;
    }
    let key = &body[..key_len];
    let mut after = key_start + key_len;
    if quoted {
        let q = line[at..].chars().next()?;
        if !line[after..].starts_with(q) {
            return None;
        }
        after += 1;
    }
    let tail = &line[after..];
    let sep_at = after + (tail.len() - tail.trim_start().len());
    let sep = line[sep_at..].chars().next()?;
    if sep != '=' && sep != ':' {
        return None;
    }
    let value = &line[sep_at + 1..];
    Some((key, sep_at + 1 + (value.len() - value.trim_start().len())))
}

/// A bounded, escaped, masked text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Excerpt {
    pub text: String,
    /// Lines (or bytes) were left out; the text's last line says how many.
    pub truncated: bool,
    /// Values masked.
    pub masked: usize,
}

fn is_text(b: &[u8]) -> bool {
    !b.contains(&0) && std::str::from_utf8(b).is_ok()
}

/// Collects lines within [`MAX_LINES`] and [`MAX_BYTES`].
struct Bounded<'m> {
    masker: &'m Masker,
    out: Excerpt,
    lines: usize,
    left_out: usize,
    max_lines: usize,
    max_bytes: usize,
}

impl Bounded<'_> {
    /// Adds `line` (one line of text, no `\n`) after `prefix` (a diff's `+`, `-`, ` `).
    fn push(&mut self, prefix: &str, line: &str) {
        if self.left_out > 0 {
            self.left_out += 1;
            return;
        }
        let masked = self.masker.mask_line(line);
        if matches!(masked, Cow::Owned(_)) {
            self.out.masked += 1;
        }
        let shown = escape::for_terminal(masked.as_bytes());
        let need = prefix.len() + shown.len() + 1;
        if self.lines >= self.max_lines || self.out.text.len() + need > self.max_bytes {
            self.left_out = 1;
            return;
        }
        self.out.text.push_str(prefix);
        self.out.text.push_str(&shown);
        self.out.text.push('\n');
        self.lines += 1;
    }

    fn finish(mut self, what: &str) -> Excerpt {
        if self.left_out > 0 {
            self.out.truncated = true;
            self.out.text.push_str(&format!(
                "[confgate: {what} cut, {} more lines not shown]\n",
                self.left_out
            ));
        }
        self.out
    }
}

impl Masker {
    fn bounded(&self, max_lines: usize, max_bytes: usize) -> Bounded<'_> {
        Bounded {
            masker: self,
            out: Excerpt::default(),
            lines: 0,
            left_out: 0,
            max_lines,
            max_bytes,
        }
    }

    /// The start of `content` as an approver sees it; `None` when the path is withheld or
    /// the content is not text.
    pub fn excerpt(&self, path: &[u8], content: &[u8]) -> Option<Excerpt> {
        if self.withholds(path) || !is_text(content) {
            return None;
        }
        let text = String::from_utf8_lossy(content);
        let mut b = self.bounded(MAX_LINES, MAX_BYTES);
        for line in text.lines() {
            b.push("", line);
        }
        Some(b.finish("excerpt"))
    }

    /// The unified diff (3 lines of context) from `before` to `after` as an approver sees
    /// it; `None` when the path is withheld or either side is not text.
    pub fn diff(&self, path: &[u8], before: &[u8], after: &[u8]) -> Option<Excerpt> {
        self.diff_within(path, before, after, MAX_LINES, MAX_BYTES)
    }

    /// [`Masker::diff`] within other bounds (the ledger keeps longer diffs).
    pub fn diff_within(
        &self,
        path: &[u8],
        before: &[u8],
        after: &[u8],
        max_lines: usize,
        max_bytes: usize,
    ) -> Option<Excerpt> {
        if self.withholds(path) || !is_text(before) || !is_text(after) {
            return None;
        }
        let (b, a) = (
            String::from_utf8_lossy(before),
            String::from_utf8_lossy(after),
        );
        let diff = similar::TextDiff::from_lines(b.as_ref(), a.as_ref());
        let mut out = self.bounded(max_lines, max_bytes);
        out.push("", "--- before");
        out.push("", "+++ after");
        for hunk in diff.unified_diff().context_radius(3).iter_hunks() {
            out.push("", &hunk.header().to_string());
            for change in hunk.iter_changes() {
                let sign = match change.tag() {
                    similar::ChangeTag::Delete => "-",
                    similar::ChangeTag::Insert => "+",
                    similar::ChangeTag::Equal => " ",
                };
                let line = change.value();
                out.push(sign, line.strip_suffix('\n').unwrap_or(line));
            }
        }
        Some(out.finish("diff"))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn secrets_in_command_lines_are_masked() {
        let m = Masker::default();
        let argv: Vec<String> = [
            "sh",
            "-c",
            "echo API_TOKEN=new-secret > f; PGPASSWORD='a b' psql",
            "--password",
            "hunter2",
            "--db-secret=s3",
            "PATH=/bin",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let out = m.mask_argv(&argv).join(" ");
        for secret in ["new-secret", "a b", "hunter2", "s3"] {
            assert!(!out.contains(secret), "{secret} in {out}");
        }
        assert!(out.contains("API_TOKEN=******** > f"), "{out}");
        assert!(out.contains("PGPASSWORD='********' psql"), "{out}");
        assert!(out.contains("--password ********"), "{out}");
        assert!(out.contains("PATH=/bin"), "{out}");
        assert_eq!(m.mask_words("no secrets = here"), "no secrets = here");
        assert_eq!(m.mask_words("TOKEN="), "TOKEN=");
        assert_eq!(
            m.mask_words(r"printf 'A=1\nAPI_TOKEN=s\n' > f"),
            r"printf 'A=1\nAPI_TOKEN=********' > f"
        );
    }

    use super::*;

    fn m() -> Masker {
        Masker::new(&default_masks(), &default_no_excerpt()).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        Masker::new(&default_masks(), &default_no_excerpt()).unwrap();
    }

    #[test]
    fn masks_values_of_secret_keys_in_common_shapes() {
        let m = m();
        for (line, want) in [
            ("API_KEY=abc123", "API_KEY=********"),
            (
                "export AWS_SECRET_ACCESS_KEY=\"x y\"",
                "export AWS_SECRET_ACCESS_KEY=********",
            ),
            ("db_password: hunter2", "db_password: ********"),
            ("  token = 'abc'", "  token = ********"),
            (
                "\"client_secret\": \"s3cr3t\",",
                "\"client_secret\": ********",
            ),
            ("- github_token: ghp_x", "- github_token: ********"),
            ("DEBUG=true", "DEBUG=true"),
            ("PASSWORD=", "PASSWORD="),
            (
                "# the api_key is rotated weekly",
                "# the api_key is rotated weekly",
            ),
            ("url: https://user:pass@host", "url: https://user:pass@host"),
        ] {
            assert_eq!(m.mask_line(line), want, "{line}");
        }
    }

    #[test]
    fn excerpt_masks_escapes_and_bounds() {
        let m = m();
        let content = b"A=1\nSECRET_TOKEN=topsecret\n\x1b[31mred\tx\n";
        let e = m.excerpt(b"/etc/app/.env", content).unwrap();
        assert_eq!(e.text, "A=1\nSECRET_TOKEN=********\n\\u{1b}[31mred\\tx\n");
        assert_eq!(e.masked, 1);
        assert!(!e.truncated);
        assert!(!e.text.contains("topsecret"));
        assert!(!e.text.chars().any(|c| c.is_control() && c != '\n'));

        let long: String = (0..1000).map(|i| format!("line {i}\n")).collect();
        let e = m.excerpt(b"/etc/x", long.as_bytes()).unwrap();
        assert!(e.truncated);
        assert_eq!(e.text.lines().count(), MAX_LINES + 1);
        assert!(
            e.text
                .ends_with("[confgate: excerpt cut, 940 more lines not shown]\n")
        );

        let wide = "x".repeat(MAX_BYTES * 2);
        let e = m.excerpt(b"/etc/x", wide.as_bytes()).unwrap();
        assert!(
            e.truncated && e.text.len() <= MAX_BYTES + 80,
            "{}",
            e.text.len()
        );
    }

    #[test]
    fn withheld_paths_and_binary_content_show_nothing() {
        let m = m();
        assert!(m.excerpt(b"/etc/shadow", b"root:x:1").is_none());
        assert!(m.excerpt(b"/etc/ssl/private/site.key", b"k").is_none());
        assert!(m.excerpt(b"/etc/x", b"a\0b").is_none());
        assert!(m.excerpt(b"/etc/x", b"\xff\xfe").is_none());
        assert!(m.diff(b"/etc/gshadow-", b"a", b"b").is_none());
        assert!(m.excerpt(b"/etc/app.conf", b"ok").is_some());
    }

    #[test]
    fn diff_shows_a_changed_secret_without_its_value() {
        let m = m();
        let d = m
            .diff(
                b"/srv/app/.env",
                b"DEBUG=false\nAPI_KEY=old\nPORT=80\n",
                b"DEBUG=true\nAPI_KEY=new\nPORT=80\n",
            )
            .unwrap();
        assert_eq!(
            d.text,
            "--- before\n+++ after\n@@ -1,3 +1,3 @@\n-DEBUG=false\n-API_KEY=********\n+DEBUG=true\n+API_KEY=********\n PORT=80\n"
        );
        assert!(!d.text.contains("old") && !d.text.contains("new"));
    }

    #[test]
    fn bad_globs_are_named() {
        let e = Masker::new(&["[".into()], &[]).unwrap_err();
        assert_eq!(e.field, "gate.mask");
    }
}
