//! `confgate shim install|remove`: PATH shims that start known agents under `confgate run`,
//! so that they are confined from their first instruction instead of being detected after
//! the fact.
//!
//! A shim is a small `sh` script named like the agent's command, in a directory put first in
//! `PATH` (default [`DEFAULT_DIR`]). It execs `confgate run --agent NAME -- REAL "$@"`,
//! where `REAL` is the agent's binary as found in `PATH` (outside the shim directory, and
//! never another shim) when the shim was installed: re-run `install` after moving an agent.
//! Its second line is [`MARKER`], so `remove` deletes confgate's shims and nothing else, and
//! `install` never overwrites a file that is not one.
use std::ffi::{OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where shims go by default: a directory of its own (so that `remove` and PATH order are
/// simple), under `/usr/local` (local administrator's files, not the package's).
pub const DEFAULT_DIR: &str = "/usr/local/lib/confgate/shims";

/// The line that marks a file as one of confgate's shims.
pub const MARKER: &str = "# confgate-shim v1";

/// An agent confgate knows: the command people type and the agent name its sessions get
/// (the same as the built-in detection rule's, so wrapped and detected sessions of one
/// agent look alike).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KnownAgent {
    pub command: &'static str,
    pub agent: &'static str,
}

/// The agents `confgate shim install` without arguments looks for.
pub const KNOWN: &[KnownAgent] = &[
    KnownAgent {
        command: "claude",
        agent: "claude-code",
    },
    KnownAgent {
        command: "codex",
        agent: "codex",
    },
    KnownAgent {
        command: "aider",
        agent: "aider",
    },
    KnownAgent {
        command: "gemini",
        agent: "gemini-cli",
    },
    KnownAgent {
        command: "cursor-agent",
        agent: "cursor-agent",
    },
    KnownAgent {
        command: "opencode",
        agent: "opencode",
    },
    KnownAgent {
        command: "goose",
        agent: "goose",
    },
    KnownAgent {
        command: "amp",
        agent: "amp",
    },
    KnownAgent {
        command: "qwen",
        agent: "qwen-code",
    },
    KnownAgent {
        command: "crush",
        agent: "crush",
    },
];

/// What `install` needs.
#[derive(Clone, Debug)]
pub struct Install {
    /// Shim directory (made if missing).
    pub dir: PathBuf,
    /// Commands named on the command line (empty: every known agent found in `PATH`).
    pub names: Vec<String>,
    /// The `PATH` to resolve real binaries in.
    pub path_var: OsString,
    /// The `confgate` binary the shims exec (absolute).
    pub confgate: PathBuf,
    /// Global options baked into the shims (`--config FILE`, `--socket PATH`), when given.
    pub global_args: Vec<OsString>,
    /// The declared scope baked into the shims (`--scope GLOB` each).
    pub scope: Vec<String>,
}

/// `confgate shim install`. Returns the exit status: 0, or 1 when a named agent could not
/// be shimmed.
pub fn install(opts: &Install, out: &mut dyn Write) -> anyhow::Result<i32> {
    if !opts.confgate.is_absolute() {
        bail!(
            "the confgate binary path {} is not absolute",
            opts.confgate.display()
        );
    }
    std::fs::create_dir_all(&opts.dir)
        .with_context(|| format!("creating {}", opts.dir.display()))?;
    let explicit = !opts.names.is_empty();
    let wanted: Vec<(String, String)> = if explicit {
        opts.names
            .iter()
            .map(|n| (n.clone(), agent_for(n)))
            .collect()
    } else {
        KNOWN
            .iter()
            .map(|k| (k.command.to_owned(), k.agent.to_owned()))
            .collect()
    };
    let mut status = 0;
    let mut installed = 0;
    for (command, agent) in wanted {
        if command.is_empty() || command.contains('/') || command.starts_with('.') {
            writeln!(out, "{command:?}: not a command name; skipped")?;
            status = 1;
            continue;
        }
        let Some(real) = resolve(&command, &opts.path_var, &opts.dir) else {
            if explicit {
                writeln!(
                    out,
                    "{command}: not found in PATH (outside {}); not shimmed",
                    opts.dir.display()
                )?;
                status = 1;
            } else {
                writeln!(out, "{command}: not installed; skipped")?;
            }
            continue;
        };
        let target = opts.dir.join(&command);
        if target.exists() && !is_shim(&target) {
            writeln!(
                out,
                "{}: exists and is not a confgate shim; left alone",
                target.display()
            )?;
            status = 1;
            continue;
        }
        let text = render(
            &agent,
            &opts.confgate,
            &opts.global_args,
            &opts.scope,
            &real,
        );
        write_executable(&target, &text)?;
        writeln!(
            out,
            "{command}: {} -> confgate run --agent {agent} -- {}",
            target.display(),
            real.display()
        )?;
        installed += 1;
    }
    if installed > 0 {
        writeln!(
            out,
            "Put the shims first in PATH (e.g. in /etc/profile.d/confgate-shims.sh):\n  export PATH={}:$PATH",
            opts.dir.display()
        )?;
    }
    Ok(status)
}

/// `confgate shim remove`: deletes every confgate shim in `dir` (other files stay).
pub fn remove(dir: &Path, out: &mut dyn Write) -> anyhow::Result<i32> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            writeln!(
                out,
                "{}: no such directory; nothing to remove",
                dir.display()
            )?;
            return Ok(0);
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut removed = 0;
    for entry in entries {
        let path = entry?.path();
        if is_shim(&path) {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
            writeln!(out, "removed {}", path.display())?;
            removed += 1;
        }
    }
    writeln!(out, "{removed} shim(s) removed from {}", dir.display())?;
    Ok(0)
}

/// The agent name of command `command`: the known one, else the command itself.
fn agent_for(command: &str) -> String {
    KNOWN
        .iter()
        .find(|k| k.command == command)
        .map_or_else(|| command.to_owned(), |k| k.agent.to_owned())
}

/// The shim's text.
pub fn render(
    agent: &str,
    confgate: &Path,
    global_args: &[OsString],
    scope: &[String],
    real: &Path,
) -> String {
    let globals: String = global_args
        .iter()
        .map(|a| format!(" {}", quote(a)))
        .collect();
    let scope: String = scope
        .iter()
        .map(|g| format!(" --scope {}", quote(OsStr::new(g))))
        .collect();
    format!(
        "#!/bin/sh\n{MARKER} agent={agent}\n# Made by `confgate shim install`; `confgate shim remove` deletes it.\n\
         exec {confgate}{globals} run --agent {agent_q}{scope} -- {real} \"$@\"\n",
        confgate = quote(confgate.as_os_str()),
        agent_q = quote(OsStr::new(agent)),
        real = quote(real.as_os_str()),
    )
}

/// Single-quoted for `sh`.
fn quote(s: &OsStr) -> String {
    format!(
        "'{}'",
        String::from_utf8_lossy(s.as_bytes()).replace('\'', "'\\''")
    )
}

/// Whether `path` is a regular file whose second line is the marker.
pub fn is_shim(path: &Path) -> bool {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return false;
    };
    if !meta.is_file() || meta.len() > 64 * 1024 {
        return false;
    }
    std::fs::read(path).is_ok_and(|b| {
        b.split(|&c| c == b'\n')
            .nth(1)
            .is_some_and(|l| l.starts_with(MARKER.as_bytes()))
    })
}

/// The first executable `command` in `path_var`, skipping the shim directory and shims.
fn resolve(command: &str, path_var: &OsStr, shim_dir: &Path) -> Option<PathBuf> {
    let shim_dir = std::fs::canonicalize(shim_dir).unwrap_or_else(|_| shim_dir.to_path_buf());
    std::env::split_paths(path_var)
        .filter(|d| d.is_absolute())
        .filter(|d| std::fs::canonicalize(d).map_or(true, |c| c != shim_dir))
        .map(|d| d.join(command))
        .find(|p| is_executable(p) && !is_shim(p))
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Write `text` to `target` as an executable (0755), replacing it atomically.
fn write_executable(target: &Path, text: &str) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    let tmp = target.with_file_name(format!(".{name}.confgate-tmp-{}", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o755)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(0o755))?;
        f.sync_all()?;
        std::fs::rename(&tmp, target)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::Error::new(e).context(format!("writing {}", target.display()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bin(dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\necho real\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        p
    }

    fn opts(shims: &Path, bin: &Path, names: &[&str]) -> Install {
        let path = std::env::join_paths([shims, bin]).unwrap();
        Install {
            dir: shims.to_path_buf(),
            names: names.iter().map(|s| (*s).to_owned()).collect(),
            path_var: path,
            confgate: PathBuf::from("/usr/bin/confgate"),
            global_args: vec!["--config".into(), "/etc/x y.toml".into()],
            scope: vec![],
        }
    }

    fn run_install(o: &Install) -> (i32, String) {
        let mut out = Vec::new();
        let code = install(o, &mut out).unwrap();
        (code, String::from_utf8(out).unwrap())
    }

    #[test]
    fn installs_shims_for_installed_agents_only() {
        let t = tempfile::tempdir().unwrap();
        let (shims, bin) = (t.path().join("shims"), t.path().join("bin"));
        std::fs::create_dir(&bin).unwrap();
        let claude = fake_bin(&bin, "claude");
        fake_bin(&bin, "aider");
        let (code, out) = run_install(&opts(&shims, &bin, &[]));
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("codex: not installed; skipped"), "{out}");
        assert!(
            out.contains(&format!("export PATH={}:$PATH", shims.display())),
            "{out}"
        );
        let text = std::fs::read_to_string(shims.join("claude")).unwrap();
        assert_eq!(
            text.lines().last().unwrap(),
            format!(
                "exec '/usr/bin/confgate' '--config' '/etc/x y.toml' run --agent 'claude-code' -- '{}' \"$@\"",
                claude.display()
            )
        );
        assert!(is_shim(&shims.join("claude")));
        assert!(is_shim(&shims.join("aider")));
        assert!(!shims.join("codex").exists());
        let mode = std::fs::metadata(shims.join("claude"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);

        // Installing again resolves past the shims themselves (PATH has the shim dir first).
        let (code, _) = run_install(&opts(&shims, &bin, &[]));
        assert_eq!(code, 0);
        let again = std::fs::read_to_string(shims.join("claude")).unwrap();
        assert!(
            again.contains(&format!("-- '{}'", claude.display())),
            "{again}"
        );
    }

    #[test]
    fn named_agents_must_exist_and_foreign_files_are_kept() {
        let t = tempfile::tempdir().unwrap();
        let (shims, bin) = (t.path().join("shims"), t.path().join("bin"));
        std::fs::create_dir_all(&shims).unwrap();
        std::fs::create_dir(&bin).unwrap();
        fake_bin(&bin, "mytool");
        fake_bin(&bin, "codex");
        std::fs::write(shims.join("codex"), "#!/bin/sh\n# mine\n").unwrap();
        let (code, out) = run_install(&opts(&shims, &bin, &["gemini", "mytool", "codex", "../x"]));
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("gemini: not found in PATH"), "{out}");
        assert!(out.contains("exists and is not a confgate shim"), "{out}");
        assert!(out.contains("not a command name"), "{out}");
        assert_eq!(
            std::fs::read_to_string(shims.join("codex")).unwrap(),
            "#!/bin/sh\n# mine\n"
        );
        let text = std::fs::read_to_string(shims.join("mytool")).unwrap();
        assert!(text.contains("--agent 'mytool'"), "{text}");

        let mut out = Vec::new();
        assert_eq!(remove(&shims, &mut out).unwrap(), 0);
        assert!(!shims.join("mytool").exists());
        assert!(shims.join("codex").exists(), "a foreign file was removed");
        let out = String::from_utf8(out).unwrap();
        assert!(out.contains("1 shim(s) removed"), "{out}");
    }

    #[test]
    fn a_shim_runs_confgate_with_the_arguments() {
        let t = tempfile::tempdir().unwrap();
        let (shims, bin) = (t.path().join("shims"), t.path().join("bin"));
        std::fs::create_dir(&bin).unwrap();
        fake_bin(&bin, "amp");
        // A fake confgate that prints its arguments.
        let fake = t.path().join("confgate");
        std::fs::write(
            &fake,
            "#!/bin/sh\nfor a in \"$@\"; do echo \"[$a]\"; done\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut o = opts(&shims, &bin, &["amp"]);
        o.confgate = fake;
        o.global_args.clear();
        o.scope = vec!["/srv/it's/**".into()];
        assert_eq!(run_install(&o).0, 0);
        let out = std::process::Command::new(shims.join("amp"))
            .args(["-p", "it's"])
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        assert_eq!(
            text,
            format!(
                "[run]\n[--agent]\n[amp]\n[--scope]\n[/srv/it's/**]\n[--]\n[{}]\n[-p]\n[it's]\n",
                bin.join("amp").display()
            )
        );
    }
}
