//! Tests of [`Policy`] compilation and evaluation.
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::*;

fn rule(name: &str, paths: &[&str], verdict: Verdict) -> RuleConfig {
    RuleConfig {
        name: name.into(),
        paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        agents: vec![],
        ops: vec![],
        verdict,
        fail: FailVerdict::Deny,
        mode: Mode::Hold,
        timeout: None,
        on_expiry: OnExpiry::Flag,
        outside_sessions: false,
        approvals: None,
        approvers: vec![],
        four_eyes: false,
        notify: vec![],
        within_scope: None,
    }
}

fn gate(rules: Vec<RuleConfig>) -> GateConfig {
    GateConfig {
        rules,
        ..GateConfig::default()
    }
}

fn protected() -> ProtectedPaths {
    let mut p = ProtectedPaths::new();
    p.tree("/etc/confgate")
        .tree("/var/lib/confgate")
        .executable("/usr/local/bin/confgate");
    p
}

fn compile(rules: Vec<RuleConfig>) -> Policy {
    Policy::compile(&gate(rules), &protected()).unwrap()
}

const CODEX: SessionRef<'static> = SessionRef {
    id: 7,
    agent: "codex",
    within_scope: None,
};

fn write(path: &[u8]) -> GateQuery<'_> {
    GateQuery {
        path,
        session: Some(CODEX),
        ops: OpSet::WRITE,
        write: true,
    }
}

/// Name of the deciding rule, `-` for none.
fn decide(p: &Policy, q: &GateQuery<'_>) -> String {
    match p.evaluate(q) {
        Some(m) => {
            assert_eq!(m.builtin, m.rule.name == BUILTIN_RULE_NAME);
            m.rule.name.clone()
        }
        None => "-".into(),
    }
}

#[test]
fn first_matching_rule_wins() {
    let p = compile(vec![
        rule("hosts", &["/etc/hosts"], Verdict::Allow),
        rule(
            "sudo",
            &["/etc/sudoers", "/etc/sudoers.d/**"],
            Verdict::Deny,
        ),
        rule("etc", &["/etc/**"], Verdict::Ask),
    ]);
    assert_eq!(decide(&p, &write(b"/etc/hosts")), "hosts");
    assert_eq!(decide(&p, &write(b"/etc/sudoers")), "sudo");
    assert_eq!(decide(&p, &write(b"/etc/sudoers.d/90-agent")), "sudo");
    assert_eq!(decide(&p, &write(b"/etc/ssh/sshd_config")), "etc");
    assert_eq!(decide(&p, &write(b"/srv/app/.env")), "-");
    let m = p.evaluate(&write(b"/etc/hosts")).unwrap();
    assert_eq!(m.rule.verdict, Verdict::Allow);
    assert!(!m.builtin);

    // The same rules in another order decide differently.
    let p = compile(vec![
        rule("etc", &["/etc/**"], Verdict::Ask),
        rule("hosts", &["/etc/hosts"], Verdict::Allow),
    ]);
    assert_eq!(decide(&p, &write(b"/etc/hosts")), "etc");
}

#[test]
fn globs_star_and_double_star() {
    let p = compile(vec![
        rule("one", &["/srv/*/config.toml"], Verdict::Ask),
        rule("deep", &["/home/**/.env"], Verdict::Ask),
        rule("ext", &["/opt/app/*.conf"], Verdict::Deny),
    ]);
    assert_eq!(decide(&p, &write(b"/srv/app/config.toml")), "one");
    // `*` does not cross `/`.
    assert_eq!(decide(&p, &write(b"/srv/a/b/config.toml")), "-");
    assert_eq!(decide(&p, &write(b"/home/u/.env")), "deep");
    assert_eq!(decide(&p, &write(b"/home/u/p/q/.env")), "deep");
    assert_eq!(decide(&p, &write(b"/home/u/p/q/.envrc")), "-");
    assert_eq!(decide(&p, &write(b"/opt/app/x.conf")), "ext");
    assert_eq!(decide(&p, &write(b"/opt/app/sub/x.conf")), "-");
    // Paths are bytes: invalid UTF-8 and newlines match like anything else.
    assert_eq!(decide(&p, &write(b"/opt/app/\xff\n.conf")), "ext");
    assert_eq!(decide(&p, &write(b"/home/\xc3(/.env")), "deep");
}

#[test]
fn agent_globs() {
    let mut codex_only = rule("codex", &["/etc/**"], Verdict::Deny);
    codex_only.agents = vec!["codex*".into()];
    let mut claude = rule("claude", &["/etc/**"], Verdict::Allow);
    claude.agents = vec!["claude-code".into(), "env:*".into()];
    let p = compile(vec![
        codex_only,
        claude,
        rule("rest", &["/etc/**"], Verdict::Ask),
    ]);
    let q = |agent: &'static str| GateQuery {
        session: Some(SessionRef {
            id: 1,
            agent,
            within_scope: None,
        }),
        ..write(b"/etc/x")
    };
    assert_eq!(decide(&p, &q("codex")), "codex");
    assert_eq!(decide(&p, &q("codex-nightly")), "codex");
    assert_eq!(decide(&p, &q("claude-code")), "claude");
    assert_eq!(decide(&p, &q("env:my/bot")), "claude");
    assert_eq!(decide(&p, &q("aider")), "rest");
    assert_eq!(decide(&p, &q("")), "rest");
}

#[test]
fn op_matching() {
    let mut create = rule("create", &["/etc/**"], Verdict::Deny);
    create.ops = vec!["create".into()];
    let mut trunc_or_rename = rule("tr", &["/etc/**"], Verdict::Ask);
    trunc_or_rename.ops = vec!["truncate".into(), "rename".into()];
    let mut write_only = rule("w", &["/etc/**"], Verdict::Allow);
    write_only.ops = vec!["write".into()];
    let p = compile(vec![create, trunc_or_rename, write_only]);
    let q = |ops: OpSet| GateQuery {
        ops,
        ..write(b"/etc/a")
    };
    assert_eq!(decide(&p, &q(OpSet::WRITE)), "w");
    assert_eq!(decide(&p, &q(OpSet::WRITE | OpSet::CREATE)), "create");
    assert_eq!(decide(&p, &q(OpSet::WRITE | OpSet::TRUNCATE)), "tr");
    assert_eq!(decide(&p, &q(OpSet::RENAME)), "tr");
    assert_eq!(p.rule("w").unwrap().ops, OpSet::WRITE);

    // A rule without `ops` covers every operation, even a query that names none.
    let p = compile(vec![rule("all", &["/etc/**"], Verdict::Ask)]);
    assert_eq!(decide(&p, &q(OpSet::RENAME)), "all");
    assert_eq!(decide(&p, &q(OpSet::EMPTY)), "all");
    assert_eq!(p.rule("all").unwrap().ops, OpSet::ALL);
}

#[test]
fn builtin_precedes_and_cannot_be_overridden() {
    let mut allow_all = rule(
        "allow-confgate",
        &["/etc/confgate/**", "/var/lib/confgate/**"],
        Verdict::Allow,
    );
    allow_all.agents = vec!["*".into()];
    let p = compile(vec![
        allow_all,
        rule("bin", &["/usr/local/bin/**"], Verdict::Allow),
        rule("etc", &["/etc/**"], Verdict::Allow),
    ]);
    for path in [
        &b"/etc/confgate/config.toml"[..],
        b"/etc/confgate",
        b"/etc/confgate/pki/host.key",
        b"/var/lib/confgate/confgate.redb",
        b"/usr/local/bin/confgate",
    ] {
        let m = p.evaluate(&write(path)).unwrap();
        assert!(m.builtin, "{}", String::from_utf8_lossy(path));
        assert_eq!(m.rule.verdict, Verdict::Deny);
        assert_eq!(m.rule.name, BUILTIN_RULE_NAME);
        assert!(p.is_protected(path));
    }
    // Only those paths: a neighbour with a shared prefix is not protected.
    assert_eq!(decide(&p, &write(b"/etc/confgate2/x")), "etc");
    assert!(!p.is_protected(b"/etc/confgate2/x"));
    assert_eq!(decide(&p, &write(b"/usr/local/bin/confgate-helper")), "bin");
}

#[test]
fn reads_only_match_the_builtin_rule() {
    let p = compile(vec![rule("etc", &["/etc/**"], Verdict::Deny)]);
    let read = |path: &'static [u8]| GateQuery {
        path,
        session: Some(CODEX),
        ops: OpSet::EMPTY,
        write: false,
    };
    assert_eq!(decide(&p, &read(b"/etc/shadow")), "-");
    assert_eq!(decide(&p, &read(b"/etc/confgate/token")), BUILTIN_RULE_NAME);
    assert_eq!(
        decide(&p, &read(b"/var/lib/confgate/ledger")),
        BUILTIN_RULE_NAME
    );
    assert_eq!(decide(&p, &write(b"/etc/shadow")), "etc");
    // confgate's binary: sessions run it (an exec is an open without a write intent).
    assert_eq!(decide(&p, &read(b"/usr/local/bin/confgate")), "-");
    assert_eq!(
        decide(&p, &write(b"/usr/local/bin/confgate")),
        BUILTIN_RULE_NAME
    );
}

#[test]
fn unheld_rule_skips_allow_rules_and_ungated_paths() {
    let mut allow = rule("hosts", &["/etc/hosts"], Verdict::Allow);
    allow.agents = vec!["*".into()];
    let p = compile(vec![
        allow,
        rule("sudo", &["/etc/sudoers"], Verdict::Deny),
        rule("etc", &["/etc/**"], Verdict::Ask),
    ]);
    let rename = |path: &'static [u8]| GateQuery {
        path,
        session: Some(CODEX),
        ops: OpSet::RENAME,
        write: true,
    };
    let unheld = |path: &'static [u8]| p.unheld_rule(&rename(path)).map(|m| m.rule.name.clone());
    // Nothing gates it, or an allow rule lets it through: the gate has nothing to say.
    assert_eq!(unheld(b"/var/tmp/work/a.txt"), None);
    assert_eq!(unheld(b"/etc/hosts"), None);
    // Ask and deny rules, and the built-in rule (even under an allow rule's glob).
    assert_eq!(unheld(b"/etc/ssh/sshd_config").as_deref(), Some("etc"));
    assert_eq!(unheld(b"/etc/sudoers").as_deref(), Some("sudo"));
    assert_eq!(
        unheld(b"/etc/confgate/config.toml").as_deref(),
        Some(BUILTIN_RULE_NAME)
    );
    // The same decision as `evaluate` wherever it is not an allow rule.
    for path in [&b"/etc/ssh/sshd_config"[..], b"/etc/sudoers", b"/tmp/x"] {
        let q = GateQuery {
            path,
            session: Some(CODEX),
            ops: OpSet::RENAME,
            write: true,
        };
        assert_eq!(p.unheld_rule(&q), p.evaluate(&q));
    }
}

#[test]
fn outside_sessions() {
    let mut everyone = rule("everyone", &["/etc/sudoers"], Verdict::Ask);
    everyone.outside_sessions = true;
    let p = compile(vec![rule("etc", &["/etc/**"], Verdict::Ask), everyone]);
    assert!(p.gates_outside_sessions());
    let outside = |path: &'static [u8], write: bool| GateQuery {
        path,
        session: None,
        ops: OpSet::WRITE,
        write,
    };
    // Only rules marked outside_sessions apply, in order.
    assert_eq!(decide(&p, &outside(b"/etc/hosts", true)), "-");
    assert_eq!(decide(&p, &outside(b"/etc/sudoers", true)), "everyone");
    // Sessions still meet the first matching rule.
    assert_eq!(decide(&p, &write(b"/etc/sudoers")), "etc");
    // The built-in rule is for sessions only: the administrator edits confgate's config.
    assert_eq!(
        decide(&p, &outside(b"/etc/confgate/config.toml", true)),
        "-"
    );
    assert_eq!(
        decide(&p, &outside(b"/etc/confgate/config.toml", false)),
        "-"
    );

    assert!(!compile(vec![rule("etc", &["/etc/**"], Verdict::Ask)]).gates_outside_sessions());
}

#[test]
fn compile_errors_name_the_field() {
    let err = |rules: Vec<RuleConfig>| match Policy::compile(&gate(rules), &protected()) {
        Err(PolicyError::Invalid { field, message }) => (field, message),
        Ok(_) => panic!("compiled"),
    };
    let (field, message) = err(vec![
        rule("a", &["/etc/**"], Verdict::Ask),
        rule("b", &["/etc/{x"], Verdict::Ask),
    ]);
    assert_eq!(field, "gate.rule[1].paths[0]");
    assert!(message.contains("invalid glob"), "{message}");
    let (field, message) = err(vec![rule("a", &["etc/**"], Verdict::Ask)]);
    assert_eq!(field, "gate.rule[0].paths[0]");
    assert!(message.contains("not an absolute"), "{message}");
}

#[test]
fn mark_roots_are_derived() {
    let mut g = gate(vec![
        rule("a", &["/etc/**", "/etc/cron.d/*"], Verdict::Ask),
        rule(
            "b",
            &["/var/spool/cron/crontabs/*", "/srv/*/app.toml"],
            Verdict::Ask,
        ),
        rule("c", &["/opt/tool/config.yaml"], Verdict::Ask),
    ]);
    g.trees = vec![
        PathBuf::from("/usr/lib/systemd/system"),
        PathBuf::from("/srv/app"),
    ];
    g.files = vec![PathBuf::from("/etc/shadow")];
    let p = Policy::compile(&g, &protected()).unwrap();
    let roots: Vec<&Path> = p.mark_roots.iter().map(PathBuf::as_path).collect();
    assert_eq!(
        roots,
        [
            // /etc/cron.d and /etc/confgate are inside /etc; /srv/app inside /srv.
            Path::new("/etc"),
            Path::new("/etc/shadow"),
            Path::new("/opt/tool/config.yaml"),
            Path::new("/srv"),
            Path::new("/usr/lib/systemd/system"),
            Path::new("/usr/local/bin/confgate"),
            Path::new("/var/lib/confgate"),
            Path::new("/var/spool/cron/crontabs"),
        ]
    );
    assert_eq!(p.mark_roots(), p.mark_roots);
}

#[test]
fn gated_for_lists_only_what_applies_to_the_agent() {
    let mut codex = rule("codex-only", &["/srv/codex/**"], Verdict::Ask);
    codex.agents = vec!["codex*".into()];
    let mut scoped = rule("own", &["/opt/app/**"], Verdict::Allow);
    scoped.within_scope = Some(true);
    let mut g = gate(vec![
        codex,
        scoped,
        rule("all", &["/etc/ssh/**"], Verdict::Ask),
    ]);
    g.files = vec![PathBuf::from("/root/.bashrc")];
    let p = Policy::compile(&g, &protected()).unwrap();
    let (trees, rules) = p.gated_for("claude-code", false);
    assert_eq!(rules, ["all"]);
    let trees: Vec<&str> = trees.iter().filter_map(|t| t.to_str()).collect();
    assert_eq!(
        trees,
        [
            "/etc/confgate",
            "/etc/ssh",
            "/root/.bashrc",
            "/usr/local/bin/confgate",
            "/var/lib/confgate"
        ]
    );
    let (trees, rules) = p.gated_for("codex-nightly", true);
    assert_eq!(rules, ["codex-only", "own", "all"]);
    assert!(trees.contains(&PathBuf::from("/srv/codex")));
    assert!(trees.contains(&PathBuf::from("/opt/app")));
}

#[test]
fn default_policy() {
    let p = Policy::compile(&GateConfig::default(), &protected()).unwrap();
    assert!(!p.gates_outside_sessions());
    assert_eq!(decide(&p, &write(b"/etc/ssh/sshd_config")), "system-config");
    assert_eq!(
        decide(&p, &write(b"/var/spool/cron/crontabs/root")),
        "crontab-spool"
    );
    assert_eq!(
        decide(&p, &write(b"/run/systemd/system/x.service")),
        "systemd-units"
    );
    assert_eq!(decide(&p, &write(b"/home/u/notes.txt")), "-");
    let r = p.rule("system-config").unwrap();
    assert_eq!(
        (r.verdict, r.fail, r.mode, r.on_expiry, r.timeout),
        (
            Verdict::Ask,
            FailVerdict::Deny,
            Mode::Hold,
            OnExpiry::Flag,
            Duration::from_secs(30)
        )
    );
    assert_eq!(p.request_ttl(), Duration::from_secs(3600));
    assert_eq!(p.max_preimage_bytes(), 16 << 20);
    assert_eq!(p.rules().count(), 3);
    assert!(p.rule(BUILTIN_RULE_NAME).is_some());
    assert!(p.rule("nope").is_none());
}

#[test]
fn rule_timeout_overrides_default() {
    let mut r = rule("t", &["/etc/**"], Verdict::Ask);
    r.timeout = Some(HumanDuration(Duration::from_secs(5)));
    let mut g = gate(vec![r, rule("d", &["/srv/**"], Verdict::Ask)]);
    g.default_timeout = HumanDuration(Duration::from_secs(12));
    let p = Policy::compile(&g, &protected()).unwrap();
    assert_eq!(p.rule("t").unwrap().timeout, Duration::from_secs(5));
    assert_eq!(p.rule("d").unwrap().timeout, Duration::from_secs(12));
}

/// The section as the daemon reads it: errors name the field and its position.
#[test]
fn config_file_errors_name_the_field() {
    use crate::config::{Config, ConfigError};
    let origin = Path::new("/etc/confgate/config.toml");
    let parse = |text: &str| Config::parse(text, origin);

    let text = "[gate]\ndefault_timeout = \"5s\"\n\n[[gate.rule]]\nname = \"a\"\npaths = [\"/etc/**\", \"etc/x\"]\nverdict = \"ask\"\n";
    assert_eq!(
        parse(text).unwrap_err().to_string(),
        "/etc/confgate/config.toml:6:21: gate.rule[0].paths[1]: \"etc/x\" is not an absolute path glob (start it with `/`)"
    );

    let rule = "[[gate.rule]]\nname = \"a\"\npaths = [\"/etc/[x\"]\nverdict = \"ask\"\n";
    let located = |text: &str| match parse(text).unwrap_err() {
        ConfigError::Invalid {
            field, location, ..
        } => (field, location),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        located(&format!("[gate]\n{rule}")),
        ("gate.rule[0].paths[0]".to_owned(), Some((4, 10)))
    );
    // Without an explicit `[gate]` table the field is still named, but the position
    // finder (toml's `Spanned`) cannot read dotted table headers: no line and column.
    assert_eq!(located(rule), ("gate.rule[0].paths[0]".to_owned(), None));

    // An unknown verdict is a parse error at the value that says what it is.
    let text = "[[gate.rule]]\nname = \"a\"\npaths = [\"/etc/**\"]\nverdict = \"maybe\"\n";
    match parse(text).unwrap_err() {
        ConfigError::Parse {
            line,
            column,
            message,
            ..
        } => {
            assert_eq!((line, column), (4, 11));
            assert!(message.contains("unknown verdict \"maybe\""), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let text =
        "[[gate.rule]]\nname = \"a\"\npaths = [\"/etc/**\"]\nverdict = \"ask\"\nmode = \"wait\"\n";
    assert!(
        parse(text)
            .unwrap_err()
            .to_string()
            .contains("unknown mode \"wait\"")
    );
    let text = "[gate]\nrequest_ttl = \"soon\"\n";
    assert!(
        parse(text)
            .unwrap_err()
            .to_string()
            .contains("invalid duration \"soon\"")
    );
    // Unknown keys are errors, in rules too.
    let text =
        "[[gate.rule]]\nname = \"a\"\npaths = [\"/etc/**\"]\nverdict = \"ask\"\nverdit = \"ask\"\n";
    assert!(matches!(
        parse(text),
        Err(ConfigError::Parse { line: 5, .. })
    ));
    // Rules in the file replace the defaults; other gate keys keep theirs.
    let c = parse("[[gate.rule]]\nname = \"only\"\npaths = [\"/srv/**\"]\nverdict = \"deny\"\n")
        .unwrap();
    assert_eq!(c.gate.rules.len(), 1);
    assert_eq!(c.gate.request_ttl, GateConfig::default().request_ttl);
    assert!(Policy::compile(&c.gate, &protected()).is_ok());
}

#[test]
fn within_scope_conditions() {
    let mut inside = rule("inside", &["/etc/**"], Verdict::Allow);
    inside.within_scope = Some(true);
    let mut outside = rule("outside", &["/etc/**"], Verdict::Ask);
    outside.within_scope = Some(false);
    let p = compile(vec![
        inside,
        outside,
        rule("rest", &["/etc/**"], Verdict::Deny),
    ]);
    let q = |within_scope| GateQuery {
        session: Some(SessionRef {
            id: 1,
            agent: "codex",
            within_scope,
        }),
        ..write(b"/etc/x")
    };
    assert_eq!(decide(&p, &q(Some(true))), "inside");
    assert_eq!(decide(&p, &q(Some(false))), "outside");
    // A session that declared no scope: neither condition applies.
    assert_eq!(decide(&p, &q(None)), "rest");
    // A rule for processes outside sessions cannot test a scope.
    let mut bad = rule("bad", &["/etc/**"], Verdict::Ask);
    bad.outside_sessions = true;
    bad.within_scope = Some(true);
    let e = Policy::compile(&gate(vec![bad]), &protected()).unwrap_err();
    assert!(e.to_string().contains("within_scope"), "{e}");
}

#[test]
fn review_rules_wait_like_requests_and_cannot_fail_open() {
    let mut r = rule("app", &["/srv/**"], Verdict::Ask);
    r.mode = Mode::Review;
    // Default: the request lifetime, not the hold timeout.
    let p = compile(vec![r.clone()]);
    let got = p.rule("app").unwrap();
    assert_eq!(got.mode, Mode::Review);
    assert_eq!(got.timeout, GateConfig::default().request_ttl.0);
    // Longer than a hold may last: allowed (nothing waits on a review).
    r.timeout = Some(HumanDuration(Duration::from_secs(7 * 24 * 3600)));
    assert!(Policy::compile(&gate(vec![r.clone()]), &protected()).is_ok());
    let mut hold = r.clone();
    hold.mode = Mode::Hold;
    assert!(Policy::compile(&gate(vec![hold]), &protected()).is_err());
    // No answer restores the baseline: `fail = "allow"` is refused, by field.
    r.fail = FailVerdict::Allow;
    let problems = gate(vec![r]).problems();
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].to_string().contains("gate.rule[0].fail"),
        "{problems:?}"
    );
    assert_eq!("review".parse::<Mode>(), Ok(Mode::Review));
}
