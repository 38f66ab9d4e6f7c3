//! Infrastructure-as-code file names: watched under project roots by default
//! (`watch.project_globs`) and labelled `details.class = "iac"` in events there, so that
//! security teams can route agent-authored IaC changes (see `WatchSet::is_iac`).
use std::sync::LazyLock;

use globset::{Candidate, GlobSet, GlobSetBuilder};

/// File-name globs of IaC files: Terraform/OpenTofu, HCL (Packer, Nomad, Vault), container
/// builds, systemd units and timers, Helm and Kustomize manifests.
pub const IAC_GLOBS: &[&str] = &[
    "*.tf",
    "*.tfvars",
    "*.hcl",
    "Dockerfile",
    "Dockerfile.*",
    "*.service",
    "*.timer",
    "values*.yaml",
    "values*.yml",
    "Chart.yaml",
    "kustomization.yaml",
    "kustomization.yml",
];

static IAC: LazyLock<GlobSet> = LazyLock::new(|| {
    let mut b = GlobSetBuilder::new();
    for g in IAC_GLOBS {
        if let Ok(g) = globset::Glob::new(g) {
            b.add(g);
        }
    }
    b.build().unwrap_or_else(|_| GlobSet::empty())
});

/// Whether a file name (the last component, bytes) is an IaC file's.
pub fn is_iac_name(name: &[u8]) -> bool {
    !name.is_empty() && IAC.is_match_candidate(&Candidate::from_bytes(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iac_names() {
        for yes in [
            "main.tf",
            "prod.tfvars",
            "packer.pkr.hcl",
            "Dockerfile",
            "Dockerfile.dev",
            "app.service",
            "backup.timer",
            "values.yaml",
            "values-prod.yaml",
            "Chart.yaml",
            "kustomization.yaml",
        ] {
            assert!(is_iac_name(yes.as_bytes()), "{yes}");
        }
        for no in ["main.tf.bak", "app.conf", "chart.yaml", "", "x.yaml", "tf"] {
            assert!(!is_iac_name(no.as_bytes()), "{no}");
        }
    }
}
