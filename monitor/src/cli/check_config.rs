//! `confgate check-config [PATH]`: load and check a configuration file, and show what it
//! amounts to (watched trees, kernel prefixes, detection rules).
use std::io::{self, Write};
use std::path::Path;

use crate::config::watch::WatchSet;
use crate::config::{Config, ConfigError, DEFAULT_CONFIG_PATH};

/// Check the configuration at `path` (or the default path). Prints `ok: <path>` and a
/// summary on stdout and returns 0, or prints every problem (`path:line:column: ...`) on
/// stderr and returns 1.
///
/// An approval service's `approver.toml` is checked as one when `approver` is set or the
/// file is recognisably one ([`super::check_approver::looks_like_approver`]).
pub fn run(path: Option<&Path>, approver: bool) -> anyhow::Result<i32> {
    let stdout = io::stdout();
    let stderr = io::stderr();
    let (mut out, mut err) = (stdout.lock(), stderr.lock());
    if let Some(p) = path {
        let is_approver = approver
            || std::fs::read_to_string(p)
                .is_ok_and(|t| super::check_approver::looks_like_approver(&t));
        if is_approver {
            return Ok(super::check_approver::run_to(p, &mut out, &mut err)?);
        }
    } else if approver {
        let p = Path::new(crate::approver::config::DEFAULT_SERVICE_CONFIG);
        return Ok(super::check_approver::run_to(p, &mut out, &mut err)?);
    }
    Ok(run_to(path, &mut out, &mut err)?)
}

/// [`run`] writing to `out` and `err` (public for the fuzz targets in `fuzz/`).
pub fn run_to(path: Option<&Path>, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<i32> {
    let (path, is_explicit) = match path {
        Some(p) => (p, true),
        None => (Path::new(DEFAULT_CONFIG_PATH), false),
    };
    let (config, note) = match Config::load_all(path) {
        Ok(config) => (config, ""),
        Err(errors) if !is_explicit && is_not_found(&errors) => (
            Config::default(),
            " (no such file: the built-in defaults apply)",
        ),
        Err(errors) => {
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            writeln!(err, "{}: {} problem(s)", path.display(), errors.len())?;
            return Ok(1);
        }
    };
    let watch = match WatchSet::new(&config.watch) {
        Ok(w) => w,
        Err(e) => {
            writeln!(err, "{}: {e}", path.display())?;
            return Ok(1);
        }
    };

    writeln!(out, "ok: {}{note}", path.display())?;
    let d = &config.daemon;
    writeln!(
        out,
        "  socket: {} (mode {:#o})",
        d.socket.display(),
        d.socket_mode
    )?;
    if let Some(group) = &d.admin_group {
        let known = matches!(nix::unistd::Group::from_name(group), Ok(Some(_)));
        let warn = if known {
            ""
        } else {
            " (warning: no such group on this host)"
        };
        writeln!(out, "  admin group: {group}{warn}")?;
    }
    writeln!(
        out,
        "  events file: {}",
        config.output.events_file.display()
    )?;
    let trees = watch.fanotify_trees();
    let files = watch.fanotify_files();
    writeln!(
        out,
        "  fanotify trees ({}): {}",
        trees.len(),
        join(trees.iter().map(|p| p.display()))
    )?;
    writeln!(
        out,
        "  fanotify files ({}): {}",
        files.len(),
        join(files.iter().map(|p| p.display()))
    )?;
    writeln!(
        out,
        "  project roots: {} (files: {})",
        join(config.watch.project_roots.iter()),
        join(config.watch.project_globs.iter())
    )?;
    if !config.watch.exclude.is_empty() {
        writeln!(out, "  excluded: {}", join(config.watch.exclude.iter()))?;
    }
    let prefixes = watch.kernel_prefixes();
    let filter = if config.kernel.path_filter {
        ""
    } else {
        ", path_filter off"
    };
    writeln!(
        out,
        "  kernel prefixes ({}{filter}): {}",
        prefixes.len(),
        join(prefixes.iter().map(|p| p.escape_ascii()))
    )?;
    if !config.kernel.skip_programs.is_empty() {
        writeln!(
            out,
            "  eBPF programs not attached: {}",
            join(config.kernel.skip_programs.iter())
        )?;
    }
    writeln!(
        out,
        "  detect rules ({}): {}",
        config.detect.len(),
        join(config.detect.iter().map(|r| &r.agent))
    )?;
    let g = &config.gate;
    if !g.enabled {
        writeln!(out, "  gate: off (writes are only observed)")?;
    } else if g.rules.is_empty() {
        // `rule = []` means no rules, not the defaults: say so.
        writeln!(
            out,
            "  gate rules (0): none (`rule = []`): nothing is held but the built-in \
             protection of confgate's own files"
        )?;
    } else {
        writeln!(
            out,
            "  gate rules ({}): {}",
            g.rules.len(),
            join(g.rules.iter().map(|r| &r.name))
        )?;
    }
    Ok(0)
}

fn is_not_found(errors: &[ConfigError]) -> bool {
    matches!(errors, [ConfigError::Io { cause: source, .. }] if source.kind() == io::ErrorKind::NotFound)
}

fn join<T: std::fmt::Display>(items: impl Iterator<Item = T>) -> String {
    let v: Vec<String> = items.map(|i| i.to_string()).collect();
    if v.is_empty() {
        "-".to_owned()
    } else {
        v.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(path: Option<&Path>) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_to(path, &mut out, &mut err).unwrap();
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn good_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[watch]\npaths = [\"/etc\", \"/etc/cron.d\"]\n").unwrap();
        let (code, out, err) = check(Some(&file));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with(&format!("ok: {}\n", file.display())),
            "{out}"
        );
        assert!(out.contains("kernel prefixes ("), "{out}");
        assert!(out.contains(" /etc/ "), "{out}");
        assert!(!out.contains("/etc/cron.d/"), "{out}");
        assert!(out.contains("detect rules (8): claude-code codex"), "{out}");
        assert!(err.is_empty());
    }

    #[test]
    fn gate_rules_are_shown_and_an_empty_list_means_none() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(&file, "[gate]\nrule = []\n").unwrap();
        let (code, out, err) = check(Some(&file));
        assert_eq!(code, 0, "{err}");
        assert!(
            out.contains("  gate rules (0): none (`rule = []`)"),
            "{out}"
        );
        std::fs::write(&file, "").unwrap();
        let (_, out, _) = check(Some(&file));
        let defaults = crate::policy::default_gate_rules();
        assert!(
            out.contains(&format!("  gate rules ({}): ", defaults.len())),
            "{out}"
        );
        std::fs::write(&file, "[gate]\nenabled = false\n").unwrap();
        let (_, out, _) = check(Some(&file));
        assert!(out.contains("  gate: off"), "{out}");
    }

    #[test]
    fn root_and_remote_without_client_are_errors_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[watch]\npaths = [\"/\"]\n[approval]\nmode = \"remote\"\n",
        )
        .unwrap();
        let (code, out, err) = check(Some(&file));
        assert_eq!(code, 1, "{out}");
        let f = file.display();
        assert!(
            err.contains(&format!("{f}:2:10: watch.paths[0]: / would watch")),
            "{err}"
        );
        assert!(
            err.contains(&format!(
                "{f}:4:8: approval.mode: \"remote\" needs an [approval.client]"
            )),
            "{err}"
        );
    }

    #[test]
    fn bad_file_reports_every_problem_with_positions() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.toml");
        std::fs::write(
            &file,
            "[kernel]\nringbuf_bytes = 1000\n[watch]\npaths = [\"etc\"]\n",
        )
        .unwrap();
        let (code, out, err) = check(Some(&file));
        assert_eq!(code, 1);
        assert!(out.is_empty());
        let f = file.display();
        assert!(
            err.contains(&format!("{f}:2:17: kernel.ringbuf_bytes: ")),
            "{err}"
        );
        assert!(
            err.contains(&format!("{f}:4:10: watch.paths[0]: ")),
            "{err}"
        );
        assert!(err.ends_with("2 problem(s)\n"), "{err}");

        std::fs::write(&file, "[kernel]\npath_filter = 1\n").unwrap();
        let (code, _, err) = check(Some(&file));
        assert_eq!(code, 1);
        assert!(err.starts_with(&format!("{f}:2:15: invalid type")), "{err}");
    }

    #[test]
    fn default_path_missing_means_defaults() {
        if Path::new(DEFAULT_CONFIG_PATH).exists() {
            return; // this host has a real configuration; nothing to learn here
        }
        let (code, out, err) = check(None);
        assert_eq!(code, 0, "{err}");
        assert!(
            out.starts_with("ok: /etc/confgate/config.toml (no such file"),
            "{out}"
        );
        println!("{out}");
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let (code, _, err) = check(Some(&dir.path().join("nope.toml")));
        assert_eq!(code, 1);
        assert!(err.contains("No such file"), "{err}");
    }
}
