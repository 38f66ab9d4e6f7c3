//! Bursts of requests from one session (an installer, an editor, `sed -i`): the likely
//! final name of a temporary file, and a session-scoped glob suggestion (the narrowest
//! common directory of what the session has asked for so far). Pure functions of paths in
//! the event contract's encoding.
use crate::policy::grants::exact_glob;

/// Most paths a suggestion is computed from (the newest).
pub const MAX_SUGGESTION_PATHS: usize = 64;

/// What a temporary file's name says about the file it will become: `Some((final path,
/// what it is))`, where the final path is empty when it cannot be known (`sed -i`).
pub fn likely_final(path: &str) -> Option<(String, String)> {
    let (dir, name) = match path.rfind('/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("", path),
    };
    let dir_shown = if dir.is_empty() { "/" } else { dir };
    let joined = |n: &str| format!("{dir}/{n}");
    for (suffix, what) in [
        (".dpkg-new", "new version unpacked by dpkg"),
        (".dpkg-tmp", "temporary copy made by dpkg"),
        (".dpkg-dist", "package's version kept by dpkg"),
        (".ucf-new", "new version offered by ucf"),
        (".tmp", "temporary file"),
    ] {
        if let Some(base) = name.strip_suffix(suffix)
            && !base.is_empty()
        {
            return Some((joined(base), format!("{what}, likely renamed onto it")));
        }
    }
    if let Some(base) = name.strip_prefix(".#")
        && !base.is_empty()
    {
        return Some((joined(base), "an editor's lock or autosave file".into()));
    }
    if let Some(base) = name.strip_suffix('~')
        && !base.is_empty()
    {
        return Some((joined(base), "backup or temporary copy".into()));
    }
    if let Some(rest) = name.strip_prefix("sed")
        && rest.len() == 6
        && rest.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Some((
            String::new(),
            format!("temp file of sed -i in {dir_shown}: it replaces the edited file there"),
        ));
    }
    None
}

/// One line for people: `/etc/x.dpkg-new` -> `/etc/x (new version unpacked by dpkg, ...)`.
pub fn describe(path: &str) -> Option<String> {
    let (target, what) = likely_final(path)?;
    Some(if target.is_empty() {
        what
    } else {
        format!("{target} ({what})")
    })
}

/// The path a request is really about: its likely final name, else (a `sed -i` temp file)
/// its directory's member, else the path itself.
fn effective(path: &str) -> String {
    match likely_final(path) {
        Some((target, _)) if !target.is_empty() => target,
        _ => path.to_owned(),
    }
}

/// Fewest directory levels a suggested glob is anchored at: `/etc/nginx/**`, never
/// `/etc/**` (every configuration file of the host).
pub const MIN_SUGGESTION_DEPTH: usize = 2;

/// confgate's own files: a suggestion never covers them (a grant there lets the agent
/// change its own gate).
const OWN_DIRS: [&str; 5] = [
    "/etc/confgate",
    "/var/lib/confgate",
    "/run/confgate",
    "/var/log/confgate",
    "/usr/local/bin",
];

/// Why `glob` is too wide to approve a burst with, or `None`: anchored at fewer than
/// [`MIN_SUGGESTION_DEPTH`] literal directories (`/etc/**`, `/etc/*/x`), or covering
/// confgate's own files.
pub fn too_wide(glob: &str) -> Option<String> {
    let literal: Vec<String> = glob
        .split('/')
        .filter(|c| !c.is_empty())
        .map_while(literal_component)
        .collect();
    let parts: Vec<&str> = glob.split('/').filter(|c| !c.is_empty()).collect();
    let wild = literal.len() < parts.len();
    // `/etc/nanorc*`: one file and its temporary names, anchored at that name.
    let file_prefix = (wild && literal.len() + 1 == parts.len())
        .then(|| parts.last().and_then(|c| c.strip_suffix('*')))
        .flatten()
        .and_then(literal_component)
        .filter(|p| !p.is_empty());
    let depth = literal.len() + usize::from(file_prefix.is_some());
    if wild && depth < MIN_SUGGESTION_DEPTH {
        return Some(format!(
            "{glob} is anchored at fewer than {MIN_SUGGESTION_DEPTH} directory levels"
        ));
    }
    let mut anchor = format!("/{}", literal.join("/"));
    if let Some(p) = &file_prefix {
        anchor = format!("{}/{p}", anchor.trim_end_matches('/'));
    }
    for own in OWN_DIRS {
        let inside = anchor == own || anchor.starts_with(&format!("{own}/"));
        let above = match &file_prefix {
            Some(_) => own.starts_with(&anchor),
            None => wild && own.starts_with(&format!("{anchor}/")),
        };
        if inside || above {
            return Some(format!("{glob} covers confgate's own files ({own})"));
        }
    }
    None
}

/// A glob's component as the name it matches, when it matches one name only (escapes
/// such as `[[]` are literal characters).
fn literal_component(c: &str) -> Option<String> {
    let chars: Vec<char> = c.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while let Some(&ch) = chars.get(i) {
        if ch == '[' && chars.get(i + 2) == Some(&']') {
            out.push(*chars.get(i + 1)?);
            i += 3;
        } else if matches!(ch, '*' | '?' | '[' | ']' | '{' | '}' | '\\') {
            return None;
        } else {
            out.push(ch);
            i += 1;
        }
    }
    Some(out)
}

/// The suggestion for a request for `own` from its session's `others` paths, and the
/// paths it covers: the narrowest directory glob of `own` and those of `others` in the
/// same tree [`MIN_SUGGESTION_DEPTH`] levels down (`/etc/nginx/**`); for a temporary file
/// directly in a top-level directory, its final name and its temporary names
/// (`/etc/nanorc*`). `None` when neither applies.
pub fn suggest_for<'a>(
    own: &'a str,
    others: impl IntoIterator<Item = &'a str>,
) -> Option<(String, Vec<String>)> {
    let dirs = |p: &str| -> Vec<String> {
        let eff = effective(p);
        let mut parts: Vec<String> = eff
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        parts.pop();
        parts
    };
    let mine = dirs(own);
    if mine.len() < MIN_SUGGESTION_DEPTH {
        let (target, _) = likely_final(own)?;
        if target.is_empty() {
            return None;
        }
        let glob = format!("{}*", exact_glob(&target));
        return too_wide(&glob)
            .is_none()
            .then(|| (glob, vec![own.to_owned()]));
    }
    let tree = &mine[..MIN_SUGGESTION_DEPTH];
    let mut from = vec![own.to_owned()];
    for o in others {
        if o != own && dirs(o).starts_with(tree) && !from.iter().any(|f| f == o) {
            from.push(o.to_owned());
        }
    }
    let glob = suggest(from.iter().map(String::as_str))?;
    Some((glob, from))
}

/// The narrowest directory glob (`/etc/nginx/**`) covering every path (their likely final
/// names): the common directory of them all. `None` when there are none, or the glob
/// would be [`too_wide`] (`/etc/**`, confgate's own directories).
pub fn suggest<'a>(paths: impl IntoIterator<Item = &'a str>) -> Option<String> {
    let mut common: Option<Vec<String>> = None;
    for p in paths {
        let eff = effective(p);
        let mut parts: Vec<String> = eff
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::to_owned)
            .collect();
        // The directory of the file.
        parts.pop();
        common = Some(match common {
            None => parts,
            Some(c) => c
                .into_iter()
                .zip(parts)
                .take_while(|(a, b)| a == b)
                .map(|(a, _)| a)
                .collect(),
        });
    }
    let common = common?;
    if common.len() < MIN_SUGGESTION_DEPTH {
        return None;
    }
    let glob = format!("{}/**", exact_glob(&format!("/{}", common.join("/"))));
    too_wide(&glob).is_none().then_some(glob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_names_and_their_final_names() {
        let f = |p: &str| likely_final(p).map(|(t, _)| t);
        assert_eq!(
            f("/etc/nginx/nginx.conf.dpkg-new").as_deref(),
            Some("/etc/nginx/nginx.conf")
        );
        assert_eq!(f("/etc/a.dpkg-tmp").as_deref(), Some("/etc/a"));
        assert_eq!(f("/etc/app.conf.tmp").as_deref(), Some("/etc/app.conf"));
        assert_eq!(f("/etc/.#hosts").as_deref(), Some("/etc/hosts"));
        assert_eq!(f("/etc/ld.so.cache~").as_deref(), Some("/etc/ld.so.cache"));
        assert_eq!(f("/etc/sedAb12Cd").as_deref(), Some(""));
        assert!(
            describe("/etc/ssh/sedX1y2Z3")
                .unwrap()
                .contains("sed -i in /etc/ssh")
        );
        assert_eq!(f("/etc/sedation.conf"), None);
        assert_eq!(f("/etc/hosts"), None);
        assert_eq!(f("/etc/.dpkg-new"), None);
        assert_eq!(f("/etc/~"), None);
    }

    #[test]
    fn the_suggestion_is_the_narrowest_common_directory() {
        assert_eq!(
            suggest(["/etc/nginx/nginx.conf.dpkg-new"]).as_deref(),
            Some("/etc/nginx/**")
        );
        assert_eq!(
            suggest([
                "/etc/nginx/nginx.conf.dpkg-new",
                "/etc/nginx/sites-available/default.dpkg-new",
                "/etc/nginx/mime.types"
            ])
            .as_deref(),
            Some("/etc/nginx/**")
        );
        // Never a whole top-level tree, nor confgate's own files.
        assert_eq!(
            suggest(["/etc/nginx/a", "/etc/logrotate.d/nginx.dpkg-new"]),
            None
        );
        assert_eq!(suggest(["/etc/nanorc.dpkg-new"]), None);
        assert_eq!(suggest(["/etc/confgate/config.toml.tmp"]), None);
        assert_eq!(suggest(["/var/lib/a/x", "/var/lib/b/y"]), None);
        assert_eq!(
            suggest(["/var/lib/app/x", "/var/lib/app/y"]).as_deref(),
            Some("/var/lib/app/**")
        );
        assert_eq!(suggest(["/etc/a", "/srv/b"]), None);
        assert_eq!(suggest(["/x"]), None);
        assert_eq!(suggest(std::iter::empty()), None);
        // sed's temp file stands for a file of its directory.
        assert_eq!(
            suggest(["/etc/ssh/sedAb12Cd"]).as_deref(),
            Some("/etc/ssh/**")
        );
        // Glob metacharacters in directory names are escaped.
        assert_eq!(
            suggest(["/etc/a[1]/x"]).as_deref(),
            Some("/etc/a[[]1[]]/**")
        );
    }

    #[test]
    fn wide_globs_are_named() {
        assert!(too_wide("/etc/**").is_some());
        assert!(too_wide("/etc/*/x").is_some());
        assert!(too_wide("/**").is_some());
        assert!(too_wide("/etc/confgate/**").is_some());
        assert!(too_wide("/var/lib/**").is_some());
        assert!(too_wide("/run/confgate/approver.sock").is_some());
        assert_eq!(too_wide("/etc/nginx/**"), None);
        assert_eq!(too_wide("/etc/nanorc"), None);
        assert_eq!(too_wide("/var/lib/app/**"), None);
        assert_eq!(too_wide("/etc/a[[]1[]]/**"), None);
        assert!(too_wide("/etc/conf[g]ate/**").is_some());
        assert_eq!(too_wide("/etc/nanorc*"), None);
        assert!(too_wide("/etc/*").is_some());
        assert!(too_wide("/etc/conf*").is_some());
        assert!(too_wide("/var/li*").is_some());
    }

    #[test]
    fn a_requests_suggestion_stays_in_its_own_tree() {
        let others = ["/etc/nanorc.dpkg-new", "/etc/alternatives/editor.dpkg-tmp"];
        let (glob, from) =
            suggest_for("/etc/alternatives/pico.dpkg-tmp", others.iter().copied()).unwrap();
        assert_eq!(glob, "/etc/alternatives/**");
        assert_eq!(
            from,
            vec![
                "/etc/alternatives/pico.dpkg-tmp".to_owned(),
                "/etc/alternatives/editor.dpkg-tmp".to_owned()
            ]
        );
        let (glob, from) = suggest_for("/etc/nanorc.dpkg-new", others.iter().copied()).unwrap();
        assert_eq!((glob.as_str(), from.len()), ("/etc/nanorc*", 1));
        assert_eq!(suggest_for("/etc/hosts", std::iter::empty()), None);
        assert_eq!(
            suggest_for("/etc/confgate.dpkg-new", std::iter::empty()),
            None
        );
    }
}
