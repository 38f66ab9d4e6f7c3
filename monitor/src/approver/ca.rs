//! `confgate approver init-ca`: a private CA for the approval service and the
//! certificates it issues (ECDSA P-256, made with rcgen).
//!
//! Files in the directory (created 0700; keys 0600, certificates 0644):
//! - `ca.pem`, `ca.key`: the CA (10 years).
//! - `server.pem`, `server.key`: the service's certificate, SANs = the server names.
//! - `host-<name>.pem/.key`: a host (CN = name, OU = `host`).
//! - `approver-<name>.pem/.key`: an approver (CN = name, OU = `approver`).
//!
//! An existing CA is reused to issue more certificates; it is replaced only with `force`.
//! An existing certificate file is never overwritten without `force`.
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::{Duration, OffsetDateTime};

use super::ApproverError;

/// What to make.
#[derive(Clone, Debug, Default)]
pub struct CaRequest {
    pub dir: PathBuf,
    /// Host names (CN of OU=host certificates).
    pub hosts: Vec<String>,
    /// Approver names (CN of OU=approver certificates).
    pub approvers: Vec<String>,
    /// DNS names / IPs of the service certificate. Empty: `localhost`, `127.0.0.1`, `::1`
    /// and this host's name.
    pub server_names: Vec<String>,
    /// Replace an existing CA and existing certificate files.
    pub force: bool,
}

/// What was written.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CaReport {
    /// Whether a new CA was made (false: the existing one issued the certificates).
    pub new_ca: bool,
    /// Files written, in order.
    pub written: Vec<PathBuf>,
}

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 825;

fn err(e: impl std::fmt::Display) -> ApproverError {
    ApproverError::Ca(e.to_string())
}

/// Makes (or reuses) the CA in `req.dir` and issues the requested certificates. The
/// server certificate is issued with a new CA, when `server_names` are given, or when
/// `server.pem` is missing.
pub fn init_ca(req: &CaRequest) -> Result<CaReport, ApproverError> {
    for n in req.hosts.iter().chain(&req.approvers) {
        if !is_name(n) {
            return Err(err(format!(
                "{n:?} is not a name (1-64 letters, digits, `.`, `_`, `-`, `@`)"
            )));
        }
    }
    for n in &req.server_names {
        if n.parse::<std::net::IpAddr>().is_err() && !is_dns_name(n) {
            return Err(err(format!(
                "{n:?} is neither a DNS name nor an IP address"
            )));
        }
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&req.dir)
        .map_err(|source| ApproverError::Io {
            action: "create directory",
            path: req.dir.clone(),
            source,
        })?;
    let ca_pem = req.dir.join("ca.pem");
    let ca_key = req.dir.join("ca.key");
    let mut report = CaReport::default();
    let exists = ca_pem.exists() || ca_key.exists();
    if exists && !req.force {
        // Check every file first, so that a refusal writes nothing.
        let server = (!req.server_names.is_empty()).then(|| "server".to_owned());
        let stems = server
            .into_iter()
            .chain(req.hosts.iter().map(|n| format!("host-{n}")))
            .chain(req.approvers.iter().map(|n| format!("approver-{n}")));
        for stem in stems {
            for ext in ["pem", "key"] {
                let p = req.dir.join(format!("{stem}.{ext}"));
                if p.exists() {
                    return Err(err(format!(
                        "{} exists; pass --force to replace it (and the CA)",
                        p.display()
                    )));
                }
            }
        }
    }
    let issuer = if exists && !req.force {
        let key = KeyPair::from_pem(&read(&ca_key)?)
            .map_err(|e| err(format!("{}: {e}", ca_key.display())))?;
        Issuer::from_ca_cert_pem(&read(&ca_pem)?, key)
            .map_err(|e| err(format!("{}: {e}", ca_pem.display())))?
    } else {
        let key = KeyPair::generate().map_err(err)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, "confgate approval CA");
        dn.push(DnType::OrganizationName, "confgate");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        validity(&mut params, CA_DAYS);
        let cert = params.self_signed(&key).map_err(err)?;
        write(&ca_pem, cert.pem().as_bytes(), 0o644, true, &mut report)?;
        write(
            &ca_key,
            key.serialize_pem().as_bytes(),
            0o600,
            true,
            &mut report,
        )?;
        report.new_ca = true;
        Issuer::new(params, key)
    };
    let force = req.force || report.new_ca;

    let server_pem = req.dir.join("server.pem");
    if report.new_ca || !req.server_names.is_empty() || !server_pem.exists() {
        let names = server_cert_names(&req.server_names, &crate::os::host::host_name());
        let mut params = CertificateParams::new(names.clone()).map_err(err)?;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, names[0].as_str());
        dn.push(DnType::OrganizationalUnitName, "server");
        params.distinguished_name = dn;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        issue(&req.dir, "server", params, &issuer, force, &mut report)?;
    }
    for (role, names) in [("host", &req.hosts), ("approver", &req.approvers)] {
        for name in names {
            let mut params = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
            let mut dn = DistinguishedName::new();
            dn.push(DnType::CommonName, name.as_str());
            dn.push(DnType::OrganizationalUnitName, role);
            params.distinguished_name = dn;
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            issue(
                &req.dir,
                &format!("{role}-{name}"),
                params,
                &issuer,
                force || req.force,
                &mut report,
            )?;
        }
    }
    Ok(report)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
}

fn issue(
    dir: &Path,
    stem: &str,
    mut params: CertificateParams,
    issuer: &Issuer<'_, KeyPair>,
    force: bool,
    report: &mut CaReport,
) -> Result<(), ApproverError> {
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, LEAF_DAYS);
    let key = KeyPair::generate().map_err(err)?;
    let cert = params.signed_by(&key, issuer).map_err(err)?;
    let pem = dir.join(format!("{stem}.pem"));
    let key_path = dir.join(format!("{stem}.key"));
    if !force {
        for p in [&pem, &key_path] {
            if p.exists() {
                return Err(err(format!(
                    "{} exists; pass --force to replace it",
                    p.display()
                )));
            }
        }
    }
    write(&pem, cert.pem().as_bytes(), 0o644, force, report)?;
    write(
        &key_path,
        key.serialize_pem().as_bytes(),
        0o600,
        force,
        report,
    )
}

fn write(
    path: &Path,
    data: &[u8],
    mode: u32,
    replace: bool,
    report: &mut CaReport,
) -> Result<(), ApproverError> {
    let io = |action, source| ApproverError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    if replace && path.exists() {
        std::fs::remove_file(path).map_err(|e| io("remove", e))?;
    }
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| io("create", e))?;
    f.write_all(data).map_err(|e| io("write", e))?;
    f.sync_all().map_err(|e| io("sync", e))?;
    report.written.push(path.to_owned());
    Ok(())
}

fn read(path: &Path) -> Result<String, ApproverError> {
    std::fs::read_to_string(path).map_err(|source| ApproverError::Io {
        action: "read",
        path: path.to_owned(),
        source,
    })
}

fn is_name(n: &str) -> bool {
    (1..=64).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

fn is_dns_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// Names of the service certificate: the `--server-name`s given (the first is the CN),
/// then the defaults that loopback clients and this host dial (localhost, 127.0.0.1, ::1,
/// the host name), each once. Given names add to the defaults, never replace them: a
/// certificate made with `--server-name approver.example.com` still serves
/// `https://127.0.0.1:7443`.
fn server_cert_names(given: &[String], host: &str) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let defaults = ["localhost", "127.0.0.1", "::1"];
    let host = is_dns_name(host).then_some(host);
    for n in given.iter().map(String::as_str).chain(defaults).chain(host) {
        if !v.iter().any(|x| x == n) {
            v.push(n.to_owned());
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_add_to_the_loopback_defaults() {
        assert_eq!(
            server_cert_names(&[], "web-1"),
            ["localhost", "127.0.0.1", "::1", "web-1"]
        );
        assert_eq!(
            server_cert_names(
                &["approver.example.com".into(), "localhost".into()],
                "bad/host"
            ),
            ["approver.example.com", "localhost", "127.0.0.1", "::1"]
        );
    }
    use crate::approver::tls::{CertRole, cert_identity};
    use std::os::unix::fs::PermissionsExt;

    fn der(path: &Path) -> Vec<u8> {
        let text = std::fs::read(path).unwrap();
        let (_, pem) = x509_parser::pem::parse_x509_pem(&text).unwrap();
        pem.contents
    }

    #[test]
    fn issues_roles_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca_dir = dir.path().join("tls");
        let req = CaRequest {
            dir: ca_dir.clone(),
            hosts: vec!["web-1".into()],
            approvers: vec!["alice".into()],
            server_names: vec![],
            force: false,
        };
        let r = init_ca(&req).unwrap();
        assert!(r.new_ca);
        assert_eq!(r.written.len(), 8);
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join("ca.key")), 0o600);
        assert_eq!(mode(&ca_dir.join("host-web-1.key")), 0o600);
        assert_eq!(mode(&ca_dir.join("ca.pem")), 0o644);
        assert_eq!(
            cert_identity(&der(&ca_dir.join("host-web-1.pem"))).unwrap(),
            ("web-1".to_owned(), CertRole::Host)
        );
        assert_eq!(
            cert_identity(&der(&ca_dir.join("approver-alice.pem"))).unwrap(),
            ("alice".to_owned(), CertRole::Approver)
        );
        assert!(cert_identity(&der(&ca_dir.join("server.pem"))).is_err());

        // Again: the CA is kept, the same host file is refused (nothing written), a new
        // one is issued.
        let ca_before = std::fs::read(ca_dir.join("ca.pem")).unwrap();
        let e = init_ca(&CaRequest {
            hosts: vec!["web-9".into(), "web-1".into()],
            ..req.clone()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert!(!ca_dir.join("host-web-9.pem").exists());
        let r = init_ca(&CaRequest {
            hosts: vec!["web-2".into()],
            approvers: vec![],
            ..req.clone()
        })
        .unwrap();
        assert!(!r.new_ca);
        assert_eq!(r.written.len(), 2);
        assert_eq!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), ca_before);

        // --force makes a new CA.
        let r = init_ca(&CaRequest {
            force: true,
            ..req.clone()
        })
        .unwrap();
        assert!(r.new_ca);
        assert_ne!(std::fs::read(ca_dir.join("ca.pem")).unwrap(), ca_before);

        assert!(
            init_ca(&CaRequest {
                hosts: vec!["bad name".into()],
                ..req.clone()
            })
            .is_err()
        );
        assert!(
            init_ca(&CaRequest {
                server_names: vec!["bad/name".into()],
                ..req
            })
            .is_err()
        );
    }
}
