//! Addresses of the approval service, as written in configuration files:
//!
//! - `unix:/path` (also `unix:///path`): a Unix socket; callers are identified by their
//!   peer credentials.
//! - `https://host:port`: gRPC over TLS. A client may name the host (DNS name or IP
//!   literal); a listener needs an IP literal to bind.
//! - `http://127.0.0.1:port`, `http://[::1]:port`: plaintext gRPC, only ever on a loopback
//!   address, and only where the configuration also says `allow_plaintext = true` (that
//!   second check belongs to whoever uses the address).
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

/// Longest Unix socket path (`sun_path` is 108 bytes including the NUL).
pub const MAX_SOCKET_PATH: usize = 107;

/// Longest address string accepted.
const MAX_ADDRESS: usize = 1024;

/// A parsed service address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Address {
    /// `unix:/path`.
    Unix(PathBuf),
    /// `https://host:port`; `host` is a DNS name or an IP literal (IPv6 without brackets).
    Tls { host: String, port: u16 },
    /// `http://<loopback ip>:port`.
    Plain(SocketAddr),
}

/// Why an address string is not acceptable. The message says what is accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AddressError(pub String);

fn bad(message: impl Into<String>) -> AddressError {
    AddressError(message.into())
}

impl Address {
    /// Parses `unix:/path`, `https://host:port` or `http://<loopback ip>:port`.
    ///
    /// Plaintext `http://` on anything but a loopback IP literal is refused here, whatever
    /// else the configuration says: a name such as `localhost` could resolve elsewhere.
    pub fn parse(s: &str) -> Result<Address, AddressError> {
        if s.len() > MAX_ADDRESS {
            return Err(bad(format!("longer than {MAX_ADDRESS} bytes")));
        }
        if s.chars().any(char::is_control) {
            return Err(bad(format!("{s:?} contains control characters")));
        }
        if let Some(rest) = s.strip_prefix("unix:") {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if !path.starts_with('/') {
                return Err(bad(format!(
                    "{s:?}: a Unix socket address is unix:/absolute/path"
                )));
            }
            let path = PathBuf::from(path);
            let bytes = path.as_os_str().as_bytes();
            if bytes.len() > MAX_SOCKET_PATH {
                return Err(bad(format!(
                    "{s:?}: the socket path is longer than {MAX_SOCKET_PATH} bytes (sun_path)"
                )));
            }
            if bytes.split(|b| *b == b'/').any(|c| c == b"." || c == b"..") {
                return Err(bad(format!(
                    "{s:?}: the socket path has a `.` or `..` component; write it normalised"
                )));
            }
            return Ok(Address::Unix(path));
        }
        if let Some(rest) = s.strip_prefix("https://") {
            let (host, port) = authority(s, rest)?;
            return Ok(Address::Tls { host, port });
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let (host, port) = authority(s, rest)?;
            let ip: Option<IpAddr> = host.parse().ok();
            return match ip {
                Some(ip) if ip.is_loopback() => Ok(Address::Plain(SocketAddr::new(ip, port))),
                _ => Err(bad(format!(
                    "{s:?}: plaintext http:// is only allowed on a loopback address \
                     (http://127.0.0.1:PORT or http://[::1]:PORT); use https:// (TLS) or unix:/path"
                ))),
            };
        }
        Err(bad(format!(
            "{s:?} is not unix:/path, https://host:port or http://127.0.0.1:port"
        )))
    }

    /// Whether this is a plaintext TCP address (which needs `allow_plaintext = true`).
    pub fn is_plaintext_tcp(&self) -> bool {
        matches!(self, Address::Plain(_))
    }

    /// The `http(s)://host:port` URI of a TCP address; `None` for Unix sockets.
    pub fn uri(&self) -> Option<String> {
        match self {
            Address::Unix(_) => None,
            Address::Tls { host, port } if host.contains(':') => {
                Some(format!("https://[{host}]:{port}"))
            }
            Address::Tls { host, port } => Some(format!("https://{host}:{port}")),
            Address::Plain(sa) => Some(format!("http://{sa}")),
        }
    }
}

impl fmt::Display for Address {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Address::Unix(p) => write!(f, "unix:{}", p.display()),
            other => f.write_str(other.uri().as_deref().unwrap_or_default()),
        }
    }
}

/// `host:port` (with an optional trailing `/`); `[v6]:port` for IPv6.
fn authority(whole: &str, rest: &str) -> Result<(String, u16), AddressError> {
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains(['/', '?', '#', '@']) {
        return Err(bad(format!(
            "{whole:?}: only scheme://host:port is accepted (no path, query or user)"
        )));
    }
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or_else(|| bad(format!("{whole:?}: unterminated `[` in the host")))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad(format!("{whole:?}: a port is required (host:port)")))?;
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad(format!("{whole:?}: {host:?} is not an IPv6 address")));
        }
        (host, port)
    } else {
        let (host, port) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad(format!("{whole:?}: a port is required (host:port)")))?;
        if host.contains(':') {
            return Err(bad(format!(
                "{whole:?}: write an IPv6 address in brackets, [::1]:port"
            )));
        }
        if !is_host_name(host) {
            return Err(bad(format!(
                "{whole:?}: {host:?} is not a host name or IP address"
            )));
        }
        (host, port)
    };
    let port: u16 = port
        .parse()
        .map_err(|_| bad(format!("{whole:?}: {port:?} is not a port number")))?;
    Ok((host.to_owned(), port))
}

/// A DNS name or IPv4 literal: letters, digits, `-` and `.`, at most 253 bytes.
fn is_host_name(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_forms() {
        assert_eq!(
            Address::parse("unix:/run/confgate/approver.sock").unwrap(),
            Address::Unix("/run/confgate/approver.sock".into())
        );
        assert_eq!(
            Address::parse("unix:///run/a.sock").unwrap(),
            Address::Unix("/run/a.sock".into())
        );
        let tls = Address::parse("https://approver.example.com:7443").unwrap();
        assert_eq!(
            tls,
            Address::Tls {
                host: "approver.example.com".into(),
                port: 7443
            }
        );
        assert_eq!(
            tls.uri().as_deref(),
            Some("https://approver.example.com:7443")
        );
        let v6 = Address::parse("https://[::1]:7443/").unwrap();
        assert_eq!(v6.uri().as_deref(), Some("https://[::1]:7443"));
        let plain = Address::parse("http://127.0.0.1:7080").unwrap();
        assert!(plain.is_plaintext_tcp());
        assert_eq!(plain.to_string(), "http://127.0.0.1:7080");
        assert!(Address::parse("http://[::1]:1").unwrap().is_plaintext_tcp());
    }

    #[test]
    fn plaintext_is_loopback_only() {
        for s in [
            "http://0.0.0.0:7080",
            "http://10.0.0.1:7080",
            "http://localhost:7080",
            "http://[::]:7080",
            "http://example.com:80",
        ] {
            let e = Address::parse(s).unwrap_err();
            assert!(
                e.0.contains("only allowed on a loopback address"),
                "{s}: {e}"
            );
        }
    }

    #[test]
    fn rejected_forms() {
        for s in [
            "",
            "approver:7443",
            "grpc://h:1",
            "unix:relative.sock",
            "unix:/a/../b.sock",
            "https://host",
            "https://host:99999",
            "https://host:7443/path",
            "https://user@host:7443",
            "https://::1:7443",
            "https://[zz]:7443",
            "https://bad_host:1",
            "https://h:1\n",
        ] {
            assert!(Address::parse(s).is_err(), "{s:?} was accepted");
        }
        let long = format!("unix:/{}", "s".repeat(200));
        assert!(Address::parse(&long).unwrap_err().0.contains("sun_path"));
        assert!(Address::parse(&"x".repeat(5000)).is_err());
    }
}
