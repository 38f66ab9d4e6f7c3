//! TLS to PostgreSQL, with libpq's parameter names in the store URL:
//! `postgres://confgate@db:5432/confgate?sslmode=require&sslrootcert=/etc/confgate/pg-ca.pem`
//! (and `sslcert=` / `sslkey=` for a client certificate). The server's certificate is always
//! verified against `sslrootcert` and the host name or address of the URL (what libpq calls
//! `verify-full`): `sslmode=require` without `sslrootcert` is refused rather than trusting
//! any certificate. Without `sslrootcert` the connection is plain, as before (`prefer` then
//! means plain).
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::{
    self, ClientConfig, RootCertStore,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
};

/// The TLS files a store URL names.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsFiles {
    pub rootcert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// Splits `sslrootcert`, `sslcert` and `sslkey` off `url` (URL query or `key=value`
/// form): the URL for the client library, and the files.
pub fn split(url: &str) -> Result<(String, TlsFiles), String> {
    let mut files = TlsFiles::default();
    let mut take = |k: &str, v: &str| -> Result<bool, String> {
        let slot = match k {
            "sslrootcert" => &mut files.rootcert,
            "sslcert" => &mut files.cert,
            "sslkey" => &mut files.key,
            _ => return Ok(false),
        };
        if v.is_empty() || !v.starts_with('/') {
            return Err(format!("{k}: an absolute file path is required"));
        }
        *slot = Some(PathBuf::from(v));
        Ok(true)
    };
    let rest = if let Some((base, query)) = url.split_once('?') {
        let mut kept = Vec::new();
        for pair in query.split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            if !take(k, &v)? {
                kept.push(pair);
            }
        }
        if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        }
    } else if url.contains("://") {
        url.to_owned()
    } else {
        let mut kept = Vec::new();
        for word in url.split_whitespace() {
            let (k, v) = word.split_once('=').unwrap_or((word, ""));
            if !take(k, v)? {
                kept.push(word);
            }
        }
        kept.join(" ")
    };
    if files.cert.is_some() != files.key.is_some() {
        return Err("sslcert and sslkey go together".to_owned());
    }
    if files.cert.is_some() && files.rootcert.is_none() {
        return Err("sslcert needs sslrootcert (the server is verified too)".to_owned());
    }
    Ok((rest, files))
}

fn percent_decode(v: &str) -> Result<String, String> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("{v}: a bad %-escape"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{v}: not UTF-8"))
}

fn read(what: &str, p: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
}

/// The client configuration for `files` (`None`: no `sslrootcert`, plain connections).
pub fn client_config(files: &TlsFiles) -> Result<Option<ClientConfig>, String> {
    let Some(ca) = &files.rootcert else {
        return Ok(None);
    };
    let pem = read("sslrootcert", ca)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("sslrootcert {}: {e}", ca.display()))?;
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!(
            "sslrootcert {}: no usable CA certificate in it",
            ca.display()
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots);
    let config = match (&files.cert, &files.key) {
        (Some(cert), Some(key)) => {
            let chain: Vec<CertificateDer<'static>> =
                CertificateDer::pem_slice_iter(&read("sslcert", cert)?)
                    .collect::<Result<_, _>>()
                    .map_err(|e| format!("sslcert {}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_slice(&read("sslkey", key)?)
                .map_err(|e| format!("sslkey {}: {e}", key.display()))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("sslcert/sslkey: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Some(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_the_file_parameters_off_both_forms() {
        let (u, f) = split(
            "postgres://c@h/d?sslmode=require&sslrootcert=/etc/ca%2Dx.pem&application_name=a",
        )
        .unwrap();
        assert_eq!(u, "postgres://c@h/d?sslmode=require&application_name=a");
        assert_eq!(f.rootcert.as_deref(), Some(Path::new("/etc/ca-x.pem")));
        let (u, f) = split("postgres://c@h/d?sslrootcert=/ca.pem").unwrap();
        assert_eq!(u, "postgres://c@h/d");
        assert!(f.rootcert.is_some());
        let (u, f) =
            split("host=h dbname=d sslrootcert=/ca sslcert=/c sslkey=/k sslmode=require").unwrap();
        assert_eq!(u, "host=h dbname=d sslmode=require");
        assert_eq!(f.key.as_deref(), Some(Path::new("/k")));
        assert!(split("postgres://h/d?sslrootcert=ca.pem").is_err());
        assert!(split("postgres://h/d?sslrootcert=/ca&sslcert=/c").is_err());
        assert!(split("postgres://h/d?sslcert=/c&sslkey=/k").is_err());
        assert!(split("postgres://h/d?sslrootcert=/a%zz").is_err());
        assert_eq!(split("postgres://h/d").unwrap().1, TlsFiles::default());
    }
}
