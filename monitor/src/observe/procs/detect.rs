//! Auto-detection of agent processes without the `confgate run` wrapper: rules match the
//! executable path, the comm, argv entries, an environment variable, or the cgroup.
//! A process already in a session is never re-detected (it cannot be relabelled).
use globset::{Glob, GlobSet, GlobSetBuilder};
use std::{ffi::OsStr, os::unix::ffi::OsStrExt, path::Path};
use thiserror::Error;

use crate::{config::DetectRule, observe::procs::proctable::Proc, os::procfs};

#[derive(Debug, Error)]
pub enum DetectError {
    #[error("detect rule {agent:?}: bad glob {glob:?}: {source}")]
    Glob {
        agent: String,
        glob: String,
        #[source]
        source: globset::Error,
    },
}

/// A rule that matched a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detection {
    /// Agent name for the new session.
    pub agent: String,
    /// The rule's name (its configured `agent`).
    pub rule: String,
    /// The rule's `scope` (validated by the configuration check).
    pub scope: Vec<String>,
}

struct Rule {
    agent: String,
    scope: Vec<String>,
    exe: GlobSet,
    comm: Vec<Vec<u8>>,
    argv: GlobSet,
    /// (name, required value)
    env: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    cgroup: GlobSet,
}

pub struct Detector {
    rules: Vec<Rule>,
}

/// Agent name prefix meaning "take the agent name from this environment variable".
const ENV_AGENT_PREFIX: &str = "env:";
const MAX_AGENT_LEN: usize = 64;

fn globs(agent: &str, pats: &[String]) -> Result<GlobSet, DetectError> {
    let mut b = GlobSetBuilder::new();
    for p in pats {
        let g = Glob::new(p).map_err(|source| DetectError::Glob {
            agent: agent.into(),
            glob: p.clone(),
            source,
        })?;
        b.add(g);
    }
    b.build().map_err(|source| DetectError::Glob {
        agent: agent.into(),
        glob: pats.join(","),
        source,
    })
}

/// The cgroup v2 path of a process ("0::/path" line).
fn cgroup_path(pid: u32) -> Option<Vec<u8>> {
    let text = procfs::read(pid, "cgroup")?;
    text.split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"0::").map(<[u8]>::to_vec))
}

fn sanitize_agent(raw: &[u8]) -> Option<String> {
    let s: String = String::from_utf8_lossy(raw)
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_AGENT_LEN)
        .collect();
    (!s.trim().is_empty()).then_some(s)
}

impl Detector {
    pub fn new(rules: &[DetectRule]) -> Result<Self, DetectError> {
        let rules = rules
            .iter()
            .map(|r| {
                Ok(Rule {
                    agent: r.agent.clone(),
                    scope: r.scope.clone(),
                    exe: globs(&r.agent, &r.exe)?,
                    comm: r.comm.iter().map(|c| c.as_bytes().to_vec()).collect(),
                    argv: globs(&r.agent, &r.argv)?,
                    env: r
                        .env
                        .iter()
                        .map(|e| match e.split_once('=') {
                            Some((k, v)) => (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())),
                            None => (e.as_bytes().to_vec(), None),
                        })
                        .collect(),
                    cgroup: globs(&r.agent, &r.cgroup)?,
                })
            })
            .collect::<Result<_, DetectError>>()?;
        Ok(Detector { rules })
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// Match a freshly exec'd process against the rules. Environment and cgroup are read
    /// from `/proc` only when some rule needs them.
    pub fn detect(&self, p: &Proc) -> Option<Detection> {
        if p.session != 0 {
            return None;
        }
        let mut environ: Option<Option<Vec<u8>>> = None;
        let mut cgroup: Option<Option<Vec<u8>>> = None;
        for r in &self.rules {
            let exe_hit = !r.exe.is_empty() && r.exe.is_match(Path::new(OsStr::from_bytes(&p.exe)));
            let comm_hit = r.comm.contains(&p.comm);
            let argv_hit = !r.argv.is_empty()
                && p.argv
                    .iter()
                    .take(4)
                    .any(|a| r.argv.is_match(Path::new(OsStr::from_bytes(a))));
            if exe_hit || comm_hit || argv_hit {
                return Some(Detection {
                    agent: r.agent.clone(),
                    rule: r.agent.clone(),
                    scope: r.scope.clone(),
                });
            }
            if !r.env.is_empty() {
                let env = environ.get_or_insert_with(|| procfs::read(p.pid, "environ"));
                if let Some(env) = env {
                    for var in env.split(|&b| b == 0) {
                        let (k, v) = match var.iter().position(|&b| b == b'=') {
                            Some(i) => (&var[..i], &var[i + 1..]),
                            None => (var, &b""[..]),
                        };
                        for (name, want) in &r.env {
                            if k == name.as_slice() && want.as_deref().is_none_or(|w| w == v) {
                                let agent = match r.agent.strip_prefix(ENV_AGENT_PREFIX) {
                                    Some(_) => sanitize_agent(v)?,
                                    None => r.agent.clone(),
                                };
                                return Some(Detection {
                                    agent,
                                    rule: r.agent.clone(),
                                    scope: r.scope.clone(),
                                });
                            }
                        }
                    }
                }
            }
            if !r.cgroup.is_empty() {
                let cg = cgroup.get_or_insert_with(|| cgroup_path(p.pid));
                if cg
                    .as_ref()
                    .is_some_and(|c| r.cgroup.is_match(Path::new(OsStr::from_bytes(c))))
                {
                    return Some(Detection {
                        agent: r.agent.clone(),
                        rule: r.agent.clone(),
                        scope: r.scope.clone(),
                    });
                }
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(agent: &str) -> DetectRule {
        DetectRule {
            agent: agent.into(),
            ..DetectRule::default()
        }
    }

    #[test]
    fn exe_comm_argv_rules() {
        let d = Detector::new(&[
            DetectRule {
                exe: vec!["**/bin/codex".into()],
                ..rule("codex")
            },
            DetectRule {
                comm: vec!["aider".into()],
                ..rule("aider")
            },
            DetectRule {
                argv: vec!["*claude-code*".into()],
                ..rule("claude")
            },
        ])
        .expect("rules compile");
        let p = |exe: &str, comm: &str, argv: &[&str]| Proc {
            exe: exe.into(),
            comm: comm.into(),
            argv: argv.iter().map(|a| a.as_bytes().to_vec()).collect(),
            ..Proc::default()
        };
        assert_eq!(
            d.detect(&p("/usr/local/bin/codex", "codex", &[]))
                .map(|x| x.agent),
            Some("codex".into())
        );
        assert_eq!(
            d.detect(&p("/usr/bin/python3", "aider", &[]))
                .map(|x| x.agent),
            Some("aider".into())
        );
        let node = p(
            "/usr/bin/node",
            "node",
            &[
                "node",
                "/usr/lib/node_modules/@anthropic-ai/claude-code/cli.js",
            ],
        );
        assert_eq!(d.detect(&node).map(|x| x.agent), Some("claude".into()));
        assert_eq!(d.detect(&p("/usr/bin/vim", "vim", &["vim"])), None);
        let in_session = Proc {
            session: 4,
            ..p("/usr/local/bin/codex", "codex", &[])
        };
        assert_eq!(
            d.detect(&in_session),
            None,
            "never relabel a session member"
        );
    }

    #[test]
    fn env_rule_reads_this_process() {
        // Our own environment cannot be changed after start; PATH is always there.
        let d = Detector::new(&[DetectRule {
            env: vec!["PATH".into()],
            ..rule("env:PATH")
        }])
        .expect("compile");
        let me = Proc {
            pid: std::process::id(),
            ..Proc::default()
        };
        let hit = d.detect(&me).expect("PATH is set");
        assert_eq!(hit.rule, "env:PATH");
        assert!(!hit.agent.is_empty());
    }

    #[test]
    fn bad_glob_is_an_error() {
        assert!(
            Detector::new(&[DetectRule {
                exe: vec!["[".into()],
                ..rule("x")
            }])
            .is_err()
        );
    }
}
