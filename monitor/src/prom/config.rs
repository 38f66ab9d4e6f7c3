//! `[metrics]`: where the Prometheus endpoint listens, in the daemon's `config.toml` and in
//! the approval service's `approver.toml` alike.
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// `[metrics]`.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsSection {
    /// `IP:PORT` of the HTTP listener serving `GET /metrics` (`127.0.0.1:9464`,
    /// `[::1]:9464`; port 0 picks a free port, logged at start). Default none: no
    /// endpoint. A separate listener: nothing else is served on it.
    pub listen: Option<String>,
}

impl MetricsSection {
    /// The address to bind, when one is set and valid.
    pub fn address(&self) -> Option<SocketAddr> {
        self.listen.as_deref().and_then(|s| parse_listen(s).ok())
    }

    /// Problems of the section as (field below `metrics.`, message).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        match self.listen.as_deref().map(parse_listen) {
            Some(Err(m)) => vec![("listen", m)],
            _ => Vec::new(),
        }
    }
}

/// Parses `IP:PORT` (an IP literal, IPv6 in brackets); the message says what is accepted.
pub fn parse_listen(s: &str) -> Result<SocketAddr, String> {
    if s.len() > 64 || s.chars().any(char::is_control) {
        return Err(format!(
            "{:?} is not an address: write IP:PORT, e.g. \"127.0.0.1:9464\"",
            s.chars().take(64).collect::<String>()
        ));
    }
    s.parse::<SocketAddr>().map_err(|_| {
        format!(
            "{s:?} is not IP:PORT (an IP literal and a port, e.g. \"127.0.0.1:9464\" or \
             \"[::1]:9464\"; host names are not accepted)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        assert_eq!(
            parse_listen("127.0.0.1:9464").unwrap(),
            "127.0.0.1:9464".parse::<SocketAddr>().unwrap()
        );
        assert!(parse_listen("[::1]:0").is_ok());
        for bad in [
            "localhost:9464",
            "127.0.0.1",
            "127.0.0.1:99999",
            "",
            "http://127.0.0.1:9464",
            "127.0.0.1:9464\n",
        ] {
            let e = parse_listen(bad).unwrap_err();
            assert!(e.contains("IP:PORT"), "{bad:?}: {e}");
        }
        let m = MetricsSection {
            listen: Some("nope".into()),
        };
        assert_eq!(m.problems()[0].0, "listen");
        assert!(MetricsSection::default().problems().is_empty());
    }
}
