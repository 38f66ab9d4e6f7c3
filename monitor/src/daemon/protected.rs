//! What the daemon's built-in self-protection rule covers for a loaded configuration.
//!
//! The paths come from the configuration (its file, the approval client's credentials, the
//! state directory), so they are gathered here, where the daemon holds both, and handed to
//! the policy as a [`ProtectedPaths`]: the policy does not depend on the configuration's
//! schema.
use std::path::{Path, PathBuf};

use crate::config::{Config, DEFAULT_CONFIG_PATH};
use crate::policy::ProtectedPaths;
use crate::policy::builtin::CONFIG_DIR;

/// What the daemon protects: `/etc/confgate` (configuration, and by convention the
/// PKI and tokens), the configuration file in use (`config_path`, wherever it is), the
/// approval client's CA, certificate and key files and the in-process approval
/// service's settings file (`[approval]`, wherever they are), the state directory
/// (store, ledger, pre-images), and the running confgate binary. The directories
/// holding the credential files are not protected as a whole: a key under
/// `/etc/ssl/private` protects that file, not every key beside it.
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

pub fn protected_paths(config: &Config, config_path: &Path) -> ProtectedPaths {
    let mut p = ProtectedPaths::new();
    p.tree(CONFIG_DIR);
    if config_path.as_os_str() != DEFAULT_CONFIG_PATH {
        p.file(config_path);
    }
    for file in client_files(config) {
        p.file(file);
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
/// approval credentials and the state directory (the binaries stay visible: sessions may
/// run `confgate`).
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
        assert!(p.files().contains(&exe));
        // The default config path is inside CONFIG_DIR already.
        let p = protected_paths(&config, Path::new(DEFAULT_CONFIG_PATH));
        assert!(!p.files().contains(&PathBuf::from(DEFAULT_CONFIG_PATH)));
        assert!(Builtin::new(&p).matches(DEFAULT_CONFIG_PATH.as_bytes()));
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
