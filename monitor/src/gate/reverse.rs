//! Reverse-applying one change (as `git revert` or `patch -R` do): the edit that turned
//! `pre` into `post` is undone in `now`, leaving every later edit by someone else in place.
//!
//! The edit is split into hunks (runs of changed lines). Each hunk's new lines are looked
//! for in `now`; a block found exactly once (or exactly once with the lines around it
//! unchanged) is put back to the hunk's old lines. A hunk whose lines were changed again
//! since, or that cannot be placed without guessing, is a [`Conflict`]: the caller flags
//! the change instead of reverting it, and says why.
use std::ops::Range;

use similar::{Algorithm, DiffTag};

/// Why a change cannot be reverse-applied.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Conflict(pub String);

/// One run of changed lines: `old` in `pre`, `new` in `post`.
#[derive(Debug)]
struct Hunk {
    old: Range<usize>,
    new: Range<usize>,
}

fn lines(s: &str) -> Vec<&str> {
    s.split_inclusive('\n').collect()
}

fn hunks(pre: &[&str], post: &[&str]) -> Vec<Hunk> {
    let mut out: Vec<Hunk> = Vec::new();
    let mut open: Option<Hunk> = None;
    for op in similar::capture_diff_slices(Algorithm::Myers, pre, post) {
        if op.tag() == DiffTag::Equal {
            out.extend(open.take());
            continue;
        }
        let (o, n) = (op.old_range(), op.new_range());
        open = Some(match open.take() {
            Some(h) => Hunk {
                old: h.old.start..o.end,
                new: h.new.start..n.end,
            },
            None => Hunk { old: o, new: n },
        });
    }
    out.extend(open);
    out
}

/// Where in `now` the hunk's new lines stand (start, length).
fn place(h: &Hunk, post: &[&str], now: &[&str]) -> Result<usize, Conflict> {
    let block = &post[h.new.clone()];
    let before = h.new.start.checked_sub(1).map(|i| post[i]);
    let after = post.get(h.new.end).copied();
    let anchored = |p: usize| {
        let b = match before {
            None => p == 0,
            Some(l) => p > 0 && now[p - 1] == l,
        };
        let a = match after {
            None => p + block.len() == now.len(),
            Some(l) => now.get(p + block.len()) == Some(&l),
        };
        b && a
    };
    let candidates: Vec<usize> = (0..=now.len().saturating_sub(block.len()))
        .filter(|&p| now.len() >= block.len() && now[p..p + block.len()] == *block)
        .collect();
    let pick = |c: Vec<usize>| match c.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let found = if block.is_empty() {
        pick(candidates.into_iter().filter(|&p| anchored(p)).collect())
    } else {
        match candidates.len() {
            0 => None,
            1 => Some(candidates[0]),
            _ => pick(candidates.into_iter().filter(|&p| anchored(p)).collect()),
        }
    };
    found.ok_or_else(|| {
        let what = match block.first() {
            Some(l) => format!("the lines it wrote (from {:?})", l.trim_end()),
            None => "the place of the lines it removed".to_owned(),
        };
        Conflict(format!(
            "{what} changed again or cannot be found exactly once in the file now"
        ))
    })
}

/// Undoes in `now` the edit that turned `pre` into `post`.
pub fn reverse_apply(pre: &str, post: &str, now: &str) -> Result<String, Conflict> {
    let (pre, post, now) = (lines(pre), lines(post), lines(now));
    let mut edits: Vec<(usize, usize, &[&str])> = Vec::new();
    for h in hunks(&pre, &post) {
        let at = place(&h, &post, &now)?;
        edits.push((at, h.new.len(), &pre[h.old.clone()]));
    }
    edits.sort_by_key(|&(at, len, _)| (at, len));
    for w in edits.windows(2) {
        let ((a, alen, _), (b, _, _)) = (w[0], w[1]);
        if a + alen > b || (alen == 0 && a == b) {
            return Err(Conflict(
                "two parts of the change overlap in the file now".to_owned(),
            ));
        }
    }
    let mut out: Vec<&str> = now.clone();
    for (at, len, old) in edits.into_iter().rev() {
        out.splice(at..at + len, old.iter().copied());
    }
    Ok(out.concat())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_append_by_someone_else_survives() {
        let got = reverse_apply("base=0\n", "base=0\na=1\n", "base=0\na=1\nb=1\n").unwrap();
        assert_eq!(got, "base=0\nb=1\n");
    }

    #[test]
    fn the_first_change_survives_the_revert_of_the_second() {
        let got =
            reverse_apply("base=0\na=1\n", "base=0\na=1\nb=1\n", "base=0\na=1\nb=1\n").unwrap();
        assert_eq!(got, "base=0\na=1\n");
        // ... and after the other change was reverted already, nothing comes back.
        let got = reverse_apply("base=0\na=1\n", "base=0\na=1\nb=1\n", "base=0\nb=1\n").unwrap();
        assert_eq!(got, "base=0\n");
    }

    #[test]
    fn replaced_and_removed_lines_come_back_between_other_edits() {
        let pre = "x=1\ndebug=false\ny=2\nkeep=1\nz=3\n";
        let post = "x=1\ndebug=true\ny=2\nz=3\n";
        let now = "top=0\nx=1\ndebug=true\ny=2\nz=3\nend=9\n";
        assert_eq!(
            reverse_apply(pre, post, now).unwrap(),
            "top=0\nx=1\ndebug=false\ny=2\nkeep=1\nz=3\nend=9\n"
        );
    }

    #[test]
    fn lines_changed_again_are_a_conflict() {
        let err = reverse_apply("pool=10\n", "pool=50\n", "pool=80\n").unwrap_err();
        assert!(err.0.contains("pool=50"), "{err}");
    }

    #[test]
    fn an_ambiguous_place_is_a_conflict_not_a_guess() {
        // The added line occurs twice now and neither place keeps the old neighbours.
        let err = reverse_apply("a\n", "a\nx\n", "x\nb\nx\n").unwrap_err();
        assert!(err.0.contains("exactly once"), "{err}");
        // With its neighbours intact the right one is taken.
        assert_eq!(
            reverse_apply("a\nb\n", "a\nx\nb\n", "x\na\nx\nb\n").unwrap(),
            "x\na\nb\n"
        );
    }

    #[test]
    fn no_change_is_no_edit_and_text_without_a_final_newline_works() {
        assert_eq!(reverse_apply("a\n", "a\n", "a\nb\n").unwrap(), "a\nb\n");
        assert_eq!(reverse_apply("a\n", "a\nb", "a\nb").unwrap(), "a\n");
    }
}
