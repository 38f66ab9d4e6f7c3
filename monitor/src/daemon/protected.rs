//! What the daemon's built-in self-protection rule covers for a loaded configuration.
//!
//! The paths come from the configuration (its file, the approval client's credentials, the
//! state directory), so they are gathered here, where the daemon holds both, and handed to
//! the policy as a [`ProtectedPaths`]: the policy does not depend on the configuration's
//! schema.
use std::path::{Path, PathBuf};

use crate::config::{ApprovalMode, Config, DEFAULT_CONFIG_PATH};
use crate::policy::ProtectedPaths;
use crate::policy::builtin::CONFIG_DIR;

/// The approval client's credentials and the local service's settings file, as configured.
fn client_files(config: &Config) -> impl Iterator<Item = &PathBuf> {
    let client = &config.approval.client;
    [
        &client.ca,
        &client.cert,
        &client.key,
        &config.approval.local_config,
    ]
    .into_iter()
    .flatten()
}

/// Keys of `approver.toml` whose values name secret files, in any section: `[notify]`
/// sinks' `secret_file`, `bot_token_file`, `signing_secret_file`, `url_file`, `[web]
/// link_key_file`, `[web.oidc] client_secret_file`.
const SECRET_KEYS: &[&str] = &[
    "secret_file",
    "bot_token_file",
    "signing_secret_file",
    "url_file",
    "link_key_file",
    "client_secret_file",
];

/// The secret files of the in-process approval service (local mode with
/// `approval.local_config`): every file its settings name under a [`SECRET_KEYS`] key, its
/// TLS key, and the action link key it generates beside its store (unless `[web]
/// link_key_file` names one). A session that read one could sign chat callbacks or action
/// links. Without `local_config` the service keeps everything under the state directory,
/// protected as a whole. The file is read as plain TOML (whatever sections it has), so
/// sections this build does not know still have their secrets covered.
fn approver_secret_files(config: &Config) -> Vec<PathBuf> {
    let Some(file) = &config.approval.local_config else {
        return Vec::new();
    };
    if config.approval.mode != ApprovalMode::Local {
        return Vec::new();
    }
    let Some(table) = std::fs::read_to_string(file)
        .ok()
        .and_then(|t| t.parse::<toml::Table>().ok())
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    collect_secret_files(&toml::Value::Table(table.clone()), &mut out);
    let str_at = |path: &[&str]| -> Option<PathBuf> {
        let mut v = table.get(*path.first()?)?;
        for k in path.get(1..)? {
            v = v.get(k)?;
        }
        v.as_str().map(PathBuf::from)
    };
    if let Some(key) = str_at(&["tls", "key"]) {
        out.push(key);
    }
    if str_at(&["web", "link_key_file"]).is_none() {
        let store = str_at(&["store"])
            .unwrap_or_else(|| crate::approver::config::ServiceConfig::default().store);
        out.push(
            store
                .parent()
                .unwrap_or(Path::new("/"))
                .join("web-link.key"),
        );
    }
    out.retain(|p| p.is_absolute());
    out.sort();
    out.dedup();
    out
}

/// Adds the string values of [`SECRET_KEYS`] keys anywhere under `v` to `out`.
fn collect_secret_files(v: &toml::Value, out: &mut Vec<PathBuf>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                match v.as_str() {
                    Some(s) if SECRET_KEYS.contains(&k.as_str()) => out.push(PathBuf::from(s)),
                    _ => collect_secret_files(v, out),
                }
            }
        }
        toml::Value::Array(a) => a.iter().for_each(|v| collect_secret_files(v, out)),
        _ => {}
    }
}

/// What the daemon protects: `/etc/confgate` (configuration, and by convention the
/// PKI and tokens), the configuration file in use (`config_path`, wherever it is), the
/// approval client's CA, certificate and key files and the in-process approval
/// service's settings file (`[approval]`, wherever they are), the state directory
/// (store, ledger, pre-images), and the running confgate binary (from writes
/// only: sessions run it). The directories
/// holding the credential files are not protected as a whole: a key under
/// `/etc/ssl/private` protects that file, not every key beside it.
pub fn protected_paths(config: &Config, config_path: &Path) -> ProtectedPaths {
    let mut p = ProtectedPaths::new();
    p.tree(CONFIG_DIR);
    if config_path.as_os_str() != DEFAULT_CONFIG_PATH {
        p.file(config_path);
    }
    for file in client_files(config) {
        p.file(file);
    }
    for file in approver_secret_files(config) {
        p.file(&file);
    }
    // Approver credentials an administrator keeps on this host: a directory protects
    // everything below it.
    for cred in &config.approval.protected_credentials {
        p.tree(cred);
    }
    p.tree(&config.daemon.state_dir);
    p.current_binary();
    p
}

/// What a confined session may not write to (`denied`) and does not see (`hidden`):
/// denied are the gate's marked roots (its gated trees and files and everything
/// [`protected_paths`] names), the helper binaries and raw memory devices (block devices
/// are added when each session starts); hidden are confgate's configuration, the
/// approval credentials, the local approval service's secret files and the state
/// directory (the binaries stay visible: sessions may run `confgate`).
pub fn confine_paths(
    config: &Config,
    config_path: &Path,
    mark_roots: &[PathBuf],
) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let protected = protected_paths(config, config_path);
    let mut denied: Vec<PathBuf> = mark_roots.to_vec();
    denied.extend(protected.trees().iter().cloned());
    denied.extend(protected.files().iter().cloned());
    denied.extend(crate::gate::session::confine::helper_candidates());
    denied.extend(["/dev/mem", "/dev/kmem", "/dev/port"].map(PathBuf::from));
    let mut hidden = vec![PathBuf::from(CONFIG_DIR), config_path.to_owned()];
    hidden.extend(client_files(config).cloned());
    hidden.extend(approver_secret_files(config));
    hidden.extend(config.approval.protected_credentials.iter().cloned());
    hidden.push(config.daemon.state_dir.clone());
    for v in [&mut denied, &mut hidden] {
        v.sort();
        v.dedup();
    }
    (denied, hidden)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::builtin::Builtin;
    use std::path::PathBuf;

    #[test]
    fn daemon_set_covers_config_state_and_binary() {
        let mut config = Config::default();
        config.daemon.state_dir = PathBuf::from("/var/lib/confgate-test-state");
        config.approval.client.key = Some(PathBuf::from("/etc/ssl/private/host.key"));
        config.approval.client.ca = Some(PathBuf::from("/srv/pki/ca.pem"));
        config.approval.local_config = Some(PathBuf::from("/opt/cg/approver.toml"));
        let p = protected_paths(&config, Path::new("/opt/cg/custom.toml"));
        assert!(p.trees().contains(&PathBuf::from(CONFIG_DIR)));
        assert!(p.trees().contains(&config.daemon.state_dir));
        assert!(p.files().contains(&PathBuf::from("/opt/cg/custom.toml")));
        for f in [
            "/etc/ssl/private/host.key",
            "/srv/pki/ca.pem",
            "/opt/cg/approver.toml",
        ] {
            assert!(p.files().contains(&PathBuf::from(f)), "{f}");
        }
        let b = Builtin::new(&p);
        assert!(b.matches(b"/etc/ssl/private/host.key"));
        assert!(!b.matches(b"/etc/ssl/private/other.key"));
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(p.files().contains(&exe) && p.readable().contains(&exe));
        // The default config path is inside CONFIG_DIR already.
        let p = protected_paths(&config, Path::new(DEFAULT_CONFIG_PATH));
        assert!(!p.files().contains(&PathBuf::from(DEFAULT_CONFIG_PATH)));
        assert!(Builtin::new(&p).matches(DEFAULT_CONFIG_PATH.as_bytes()));
    }

    #[test]
    fn the_local_services_secret_files_are_protected_and_hidden() {
        let dir = tempfile::tempdir().unwrap();
        let approver = dir.path().join("approver.toml");
        std::fs::write(
            &approver,
            r#"store = "/srv/cg/approver/approver.redb"
[tls]
cert = "/srv/cg/tls/c.pem"
key = "/srv/cg/tls/k.pem"
[web.oidc]
client_secret_file = "/srv/cg/oidc-secret"
[[notify.webhook]]
url = "https://siem.example/hook"
secret_file = "/srv/cg/webhook-secret"
[[notify.slack]]
bot_token_file = "/srv/cg/slack-bot"
signing_secret_file = "/srv/cg/slack-signing"
[[notify.teams]]
url_file = "/srv/cg/teams-url"
"#,
        )
        .unwrap();
        let mut config = Config::default();
        config.approval.mode = ApprovalMode::Local;
        config.approval.local_config = Some(approver.clone());
        let want = [
            "/srv/cg/tls/k.pem",
            "/srv/cg/oidc-secret",
            "/srv/cg/webhook-secret",
            "/srv/cg/slack-bot",
            "/srv/cg/slack-signing",
            "/srv/cg/teams-url",
            // Generated beside the store.
            "/srv/cg/approver/web-link.key",
        ];
        let p = protected_paths(&config, Path::new(DEFAULT_CONFIG_PATH));
        let (denied, hidden) = confine_paths(&config, Path::new(DEFAULT_CONFIG_PATH), &[]);
        for f in want {
            let f = PathBuf::from(f);
            assert!(p.files().contains(&f), "{f:?} not protected");
            assert!(denied.contains(&f), "{f:?} not denied");
            assert!(hidden.contains(&f), "{f:?} not hidden");
        }
        assert!(!hidden.contains(&PathBuf::from("/srv/cg/tls/c.pem")));
        // A configured link key instead of the generated one.
        std::fs::write(&approver, "[web]\nlink_key_file = \"/srv/keys/link.key\"\n").unwrap();
        let (_, hidden) = confine_paths(&config, Path::new(DEFAULT_CONFIG_PATH), &[]);
        assert!(hidden.contains(&PathBuf::from("/srv/keys/link.key")));
        assert!(!hidden.contains(&PathBuf::from("/srv/cg/approver/web-link.key")));
        // Remote mode: no local service, nothing of it.
        config.approval.mode = ApprovalMode::Remote;
        let (_, hidden) = confine_paths(&config, Path::new(DEFAULT_CONFIG_PATH), &[]);
        assert!(!hidden.contains(&PathBuf::from("/srv/keys/link.key")));
    }

    #[test]
    fn confined_sessions_are_denied_and_hidden_confgate_files() {
        let mut config = Config::default();
        config.daemon.state_dir = PathBuf::from("/var/lib/cg-state");
        config.approval.client.key = Some(PathBuf::from("/etc/ssl/private/host.key"));
        let (denied, hidden) = confine_paths(
            &config,
            Path::new("/opt/cg/custom.toml"),
            &[PathBuf::from("/etc/app")],
        );
        for d in [
            "/etc/app",
            "/etc/confgate",
            "/var/lib/cg-state",
            "/etc/ssl/private/host.key",
            "/opt/cg/custom.toml",
            "/dev/mem",
            crate::gate::session::confine::INSTALLED_HELPER,
        ] {
            assert!(denied.contains(&PathBuf::from(d)), "{d}");
        }
        let exe = std::fs::read_link("/proc/self/exe").unwrap();
        assert!(denied.contains(&exe));
        for h in [
            "/etc/confgate",
            "/var/lib/cg-state",
            "/etc/ssl/private/host.key",
            "/opt/cg/custom.toml",
        ] {
            assert!(hidden.contains(&PathBuf::from(h)), "{h}");
        }
        assert!(!hidden.contains(&exe));
    }
}
