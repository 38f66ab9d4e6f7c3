//! `confgate check-config --approver [PATH]`: check an approval service's `approver.toml`
//! (also chosen without the flag when the file is one: see [`looks_like_approver`]).
use std::io::{self, Write};
use std::path::Path;

use crate::approver::config::ServiceConfig;

/// Top-level keys only an `approver.toml` has.
const APPROVER_KEYS: &[&str] = &[
    "listen",
    "socket_mode",
    "allow_plaintext",
    "store",
    "ledger",
    "max_ttl_secs",
    "default_lifetime_secs",
    "tls",
    "token",
    "workstation_approvers",
    "http",
    "web",
    "notify",
];
/// Top-level tables of the daemon's `config.toml`.
const DAEMON_KEYS: &[&str] = &[
    "daemon",
    "output",
    "kernel",
    "watch",
    "correlation",
    "detect",
    "gate",
    "approval",
];

/// Whether `text` is an approval service configuration: it has a key only those have, and
/// none of the daemon's tables. Text that does not parse is left to the daemon's checker
/// (which reports where it breaks).
pub fn looks_like_approver(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    table.keys().any(|k| APPROVER_KEYS.contains(&k.as_str()))
        && !table.keys().any(|k| DAEMON_KEYS.contains(&k.as_str()))
}

/// Checks the approver configuration at `path`: `ok: <path>` and a summary on `out` (0),
/// or every problem (`path:line:column: ...`) on `err` (1).
pub fn run_to(path: &Path, out: &mut dyn Write, err: &mut dyn Write) -> io::Result<i32> {
    let cfg = match ServiceConfig::load_all(path) {
        Ok(c) => c,
        Err(errors) => {
            for e in &errors {
                writeln!(err, "{e}")?;
            }
            writeln!(err, "{}: {} problem(s)", path.display(), errors.len())?;
            return Ok(1);
        }
    };
    writeln!(out, "ok: {} (approval service)", path.display())?;
    writeln!(out, "  listen: {}", cfg.listen.join(", "))?;
    writeln!(out, "  store: {}", cfg.store_display())?;
    writeln!(out, "  ledger: {}", cfg.ledger.display())?;
    let show = |p: &Option<std::path::PathBuf>| {
        p.as_ref()
            .map_or_else(|| "-".to_owned(), |p| p.display().to_string())
    };
    writeln!(
        out,
        "  tls: cert {}, key {}, client CA {}",
        show(&cfg.tls.cert),
        show(&cfg.tls.key),
        show(&cfg.tls.client_ca)
    )?;
    for f in [&cfg.tls.cert, &cfg.tls.key, &cfg.tls.client_ca]
        .into_iter()
        .flatten()
    {
        if !f.exists() {
            writeln!(out, "  warning: {} does not exist (yet)", f.display())?;
        }
    }
    writeln!(out, "  approver tokens: {}", cfg.tokens.len())?;
    writeln!(out, "  longest grant: {} s", cfg.max_ttl_secs)?;
    if let Some(listen) = &cfg.http.listen {
        let sign_in = cfg.web.oidc.as_ref().map_or_else(
            || "no sign-in (action links only)".to_owned(),
            |o| format!("sign-in at {}", o.issuer),
        );
        writeln!(
            out,
            "  web page: {listen} (public {}), {sign_in}",
            cfg.http.base_url().unwrap_or_default()
        )?;
        if let Some(f) = cfg
            .web
            .oidc
            .as_ref()
            .and_then(|o| o.client_secret_file.as_ref())
            && !f.exists()
        {
            writeln!(out, "  warning: {} does not exist (yet)", f.display())?;
        }
    }
    notify_summary(&cfg, out)?;
    Ok(0)
}

/// The notification sinks, and a warning for each secret file that cannot be read now.
fn notify_summary(cfg: &ServiceConfig, out: &mut dyn Write) -> io::Result<()> {
    let routes = cfg.notify.routes();
    if routes.is_empty() {
        return Ok(());
    }
    let ids: Vec<String> = routes.into_iter().map(|r| r.id).collect();
    writeln!(out, "  notify: {}", ids.join(", "))?;
    let n = &cfg.notify;
    if !n.slack.is_empty() && cfg.http.listen.is_none() {
        writeln!(
            out,
            "  warning: Slack's buttons call back to [http] listen + /slack/interactive, which is not set"
        )?;
    }
    let secrets = n
        .webhook
        .iter()
        .map(|w| &w.secret_file)
        .chain(
            n.slack
                .iter()
                .flat_map(|s| [&s.bot_token_file, &s.signing_secret_file]),
        )
        .chain(n.teams.iter().map(|t| &t.url_file));
    for f in secrets {
        if let Err(e) = crate::approver::sinks::read_secret(f) {
            writeln!(out, "  warning: secret {e}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> (i32, String, String) {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("approver.toml");
        std::fs::write(&f, text).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = run_to(&f, &mut out, &mut err).unwrap();
        (
            code,
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn the_shipped_file_is_recognised_and_valid() {
        let text = include_str!("../../../deploy/approver.toml");
        assert!(looks_like_approver(text));
        let (code, out, err) = check(text);
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("https://0.0.0.0:7443"), "{out}");
    }

    #[test]
    fn daemon_configs_are_not_taken_for_approver_ones() {
        assert!(!looks_like_approver(include_str!(
            "../../../deploy/config.toml"
        )));
        assert!(!looks_like_approver("[gate]\nenabled = true\n"));
        assert!(!looks_like_approver("not toml ["));
    }

    #[test]
    fn notify_sinks_are_listed_and_unreadable_secrets_warned() {
        let (code, out, err) = check(
            "[[notify.webhook]]\nname = \"siem\"\nurl = \"https://siem.example/in\"\nsecret_file = \"/nonexistent/key\"\n",
        );
        assert_eq!(code, 0, "{err}");
        assert!(out.contains("notify: webhook:siem"), "{out}");
        assert!(out.contains("warning: secret /nonexistent/key"), "{out}");
    }

    #[test]
    fn every_problem_is_reported_with_its_place() {
        let (code, _, err) = check("listen = [\"http://0.0.0.0:7080\"]\nbogus = 1\n");
        assert_eq!(code, 1);
        assert!(err.contains("approver.toml:"), "{err}");
        assert!(err.contains("problem(s)"), "{err}");
    }
}
