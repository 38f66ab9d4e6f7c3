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

/// The narrowest directory glob (`/etc/nginx/**`) covering every path (their likely final
/// names): the common directory of them all, never `/` itself. `None` when they share only
/// `/` or there are none.
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
    if common.is_empty() {
        return None;
    }
    Some(format!(
        "{}/**",
        exact_glob(&format!("/{}", common.join("/")))
    ))
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
        assert_eq!(
            suggest(["/etc/nginx/a", "/etc/logrotate.d/nginx.dpkg-new"]).as_deref(),
            Some("/etc/**")
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
}
