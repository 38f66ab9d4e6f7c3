//! Who is calling, from the transport only: a verified TLS client certificate, a bearer
//! token, or the kernel's peer credentials on a Unix socket. Never from a request field.
//!
//! | transport              | identity                | role                          |
//! |------------------------|-------------------------|-------------------------------|
//! | cert OU=host, CN=web-1 | `host:web-1`            | host                          |
//! | cert OU=approver, CN=a | `cert:a`                | approver                      |
//! | `Bearer <token>`       | `token:<name>`          | approver                      |
//! | Unix, root             | `unix:root` / `host:<this host>` | approver, and host   |
//! | Unix, admin group      | `unix:<user>`           | approver                      |
//!
//! A bearer token that is present must be valid, whatever else the connection shows.
//! With a [`SessionOracle`], a Unix caller inside an agent session is never a host and
//! never an approver.
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

use super::SessionOracle;
use super::tls::{CertRole, cert_identity};

/// The caller of one RPC.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    /// A host certificate (OU=host); `host` is its CN.
    Host { host: String },
    /// An approver certificate (`cert:<CN>`) or token (`token:<name>`).
    Approver { name: String },
    /// A process on a Unix socket.
    Unix(UnixPeer),
    /// A person on the web page: signed in with OpenID Connect (`oidc:<user>`) or holding
    /// a signed action link for this approver name. Only the service's own HTTP handlers
    /// make it ([`WebPrincipal`]), never a gRPC caller.
    Web {
        name: String,
        /// The agent session of the calling process when it runs on this host (local
        /// mode: from the kernel's session map; 0 for none).
        session: Option<u64>,
        /// Groups the sign-in established (the OpenID provider's groups claim).
        groups: Vec<String>,
    },
}

/// Set as a request extension by the web page's handlers (and other in-process channels)
/// when they call the gRPC service in-process: the approver they authenticated.
/// Extensions never come from the network.
#[derive(Clone, Debug)]
pub struct WebPrincipal(pub String);

/// Set with a [`WebPrincipal`] by a channel that authenticated the approver's groups too
/// (the web page: the OpenID provider's groups claim), for rules' `group:<name>`.
#[derive(Clone, Debug)]
pub struct WebGroups(pub Vec<String>);

/// Set with a [`WebPrincipal`] when the process that sent the browser's request runs on
/// this host: its agent session (0 for none), from the kernel's session map.
#[derive(Clone, Copy, Debug)]
pub struct WebCallerSession(pub u64);

/// A Unix-socket caller as the kernel reported it at connect time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnixPeer {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
    /// User name of `uid` (`uid:<n>` when it has none).
    pub user: String,
    /// Root or a member of the admin group.
    pub admin: bool,
    /// Agent session of `pid` per the oracle; `None` without an oracle.
    pub session: Option<u64>,
}

/// An identity allowed to decide.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApproverId {
    /// `cert:<CN>`, `token:<name>` or `unix:<user>`.
    pub name: String,
    /// For a Unix caller seen through an oracle: its host and real agent session.
    pub local: Option<(String, u64)>,
    /// A Unix-socket caller (root or the admin group on the service's host).
    pub unix: bool,
    /// A certificate or token the configuration lists in `workstation_approvers`: it
    /// decides without a host's attestation.
    pub workstation: bool,
    /// Groups the channel authenticated with the identity (a web sign-in's groups claim);
    /// configured and system groups are added by `approver::quorum`.
    pub groups: Vec<String>,
}

/// Turns transport facts into [`Principal`]s.
pub struct Authenticator {
    tokens: Vec<(String, [u8; 32])>,
    admin_gid: Option<u32>,
    oracle: Option<Arc<dyn SessionOracle>>,
    /// Approver names (`cert:<CN>`, `token:<name>`) that decide without attestation.
    workstation: Vec<String>,
}

/// Longest `authorization` header accepted.
const MAX_AUTH_HEADER: usize = 8192;

impl Authenticator {
    /// `tokens` are (name, SHA-256 of the token); `admin_gid` the admin group's gid;
    /// `workstation` the approver names that decide without a host's attestation.
    pub fn new(
        tokens: Vec<(String, [u8; 32])>,
        admin_gid: Option<u32>,
        oracle: Option<Arc<dyn SessionOracle>>,
        workstation: Vec<String>,
    ) -> Authenticator {
        Authenticator {
            tokens,
            admin_gid,
            oracle,
            workstation,
        }
    }

    /// The agent session of local process `pid` (0: none), when this service has the
    /// kernel's session map (the daemon's, in local mode).
    pub fn session_of_pid(&self, pid: u32) -> Option<u64> {
        self.oracle.as_ref().map(|o| o.session_of_pid(pid))
    }

    /// This host's name: the oracle's, or `gethostname`.
    pub fn local_host(&self) -> String {
        match &self.oracle {
            Some(o) => o.host(),
            None => crate::os::host::host_name(),
        }
    }

    /// Identifies the caller of `req` (`UNAUTHENTICATED` when it cannot be).
    pub fn identify<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        if let Some(WebPrincipal(name)) = req.extensions().get::<WebPrincipal>() {
            return Ok(Principal::Web {
                name: name.clone(),
                session: req.extensions().get::<WebCallerSession>().map(|s| s.0),
                groups: req
                    .extensions()
                    .get::<WebGroups>()
                    .map(|g| g.0.clone())
                    .unwrap_or_default(),
            });
        }
        let token = self.token(req)?;
        if let Some(certs) = req.peer_certs()
            && let Some(leaf) = certs.first()
        {
            let (cn, role) = cert_identity(leaf.as_ref()).map_err(Status::unauthenticated)?;
            return Ok(match role {
                CertRole::Host => Principal::Host { host: cn },
                CertRole::Approver => Principal::Approver {
                    name: format!("cert:{cn}"),
                },
            });
        }
        if let Some(name) = token {
            return Ok(Principal::Approver {
                name: format!("token:{name}"),
            });
        }
        let peer = req.extensions().get::<crate::api::peer::PeerInfo>();
        if let Some(cred) = peer.and_then(|i| i.uds.peer_cred) {
            let pid = cred
                .pid()
                .and_then(|p| u32::try_from(p).ok())
                .filter(|p| *p != 0)
                .ok_or_else(|| {
                    Status::unauthenticated("the caller's pid is not visible to the service")
                })?;
            // The pid is the connecting process's: it must still be that process, or a
            // session process could hand its connection to a child, exit, and be taken for
            // whatever the pid names now (nothing: "no session").
            if !crate::api::peer::started_by(pid, peer.and_then(|i| i.accepted_ticks)) {
                return Err(Status::unauthenticated(format!(
                    "process {pid} that opened this connection is gone; connect again"
                )));
            }
            let (uid, gid) = (cred.uid(), cred.gid());
            let admin = uid == 0
                || self
                    .admin_gid
                    .is_some_and(|g| gid == g || crate::os::procfs::groups_of(pid).contains(&g));
            return Ok(Principal::Unix(UnixPeer {
                pid,
                uid,
                gid,
                user: user_name(uid),
                admin,
                session: self.oracle.as_ref().map(|o| o.session_of_pid(pid)),
            }));
        }
        Err(Status::unauthenticated(
            "no client certificate, bearer token or peer credentials on this connection",
        ))
    }

    /// The name of the token in `authorization: Bearer <token>`, if the header is there.
    fn token<T>(&self, req: &Request<T>) -> Result<Option<String>, Status> {
        let Some(v) = req.metadata().get("authorization") else {
            return Ok(None);
        };
        let bad = || Status::unauthenticated("invalid bearer token");
        if v.len() > MAX_AUTH_HEADER {
            return Err(bad());
        }
        let v = v.to_str().map_err(|_| bad())?;
        let (scheme, token) = v.split_once(' ').ok_or_else(bad)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(Status::unauthenticated(
                "the authorization header must be `Bearer <token>`",
            ));
        }
        let digest: [u8; 32] = Sha256::digest(token.trim().as_bytes()).into();
        // Compare with every configured digest, in constant time each, without stopping early.
        let mut found = None;
        for (name, d) in &self.tokens {
            if bool::from(d.ct_eq(&digest)) {
                found = Some(name.clone());
            }
        }
        found.map(Some).ok_or_else(bad)
    }

    /// The host `p` acts for on a host RPC, or `PERMISSION_DENIED`.
    pub fn host(&self, p: &Principal, call: &str) -> Result<String, Status> {
        match p {
            Principal::Host { host } => Ok(host.clone()),
            Principal::Approver { name } | Principal::Web { name, .. } => {
                Err(Status::permission_denied(format!(
                    "{call} is for hosts; {name} is an approver identity"
                )))
            }
            Principal::Unix(u) if u.uid != 0 => Err(Status::permission_denied(format!(
                "{call} is for hosts: on the Unix socket only root (the local confgate daemon) \
                 acts as the host, not uid {}",
                u.uid
            ))),
            Principal::Unix(UnixPeer {
                pid,
                session: Some(s),
                ..
            }) if *s != 0 => Err(Status::permission_denied(format!(
                "{call}: process {pid} is inside agent session {s} and cannot act as the host"
            ))),
            Principal::Unix(_) => Ok(self.local_host()),
        }
    }

    /// The approver `p` is on an approver RPC, or `PERMISSION_DENIED`.
    pub fn approver(&self, p: &Principal, call: &str) -> Result<ApproverId, Status> {
        match p {
            Principal::Host { host } => Err(Status::permission_denied(format!(
                "{call} is for approvers; host:{host} is a host identity and never approves"
            ))),
            Principal::Approver { name } => Ok(ApproverId {
                name: name.clone(),
                local: None,
                unix: false,
                workstation: self.workstation.contains(name),
                groups: Vec::new(),
            }),
            // A person at a browser: like a workstation credential, and when the browser's
            // connection comes from a process of this host, held to that process's session.
            Principal::Web {
                name,
                session,
                groups,
            } => Ok(ApproverId {
                name: name.clone(),
                local: session.map(|s| (self.local_host(), s)),
                unix: false,
                workstation: true,
                groups: groups.clone(),
            }),
            Principal::Unix(u) if !u.admin => Err(Status::permission_denied(format!(
                "{call} needs root or membership in the approvers' admin group (uid {} is neither)",
                u.uid
            ))),
            Principal::Unix(u) => Ok(ApproverId {
                name: format!("unix:{}", u.user),
                local: u.session.map(|s| (self.local_host(), s)),
                unix: true,
                workstation: false,
                groups: Vec::new(),
            }),
        }
    }

    /// `(name, role)` for WhoAmI.
    pub fn describe(&self, p: &Principal) -> Result<(String, &'static str), Status> {
        match p {
            Principal::Host { host } => Ok((format!("host:{host}"), "host")),
            Principal::Approver { name } | Principal::Web { name, .. } => {
                Ok((name.clone(), "approver"))
            }
            Principal::Unix(_) => Ok((self.approver(p, "WhoAmI")?.name, "approver")),
        }
    }
}

fn user_name(uid: u32) -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .map_or_else(|| format!("uid:{uid}"), |u| u.name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth() -> Authenticator {
        let d: [u8; 32] = Sha256::digest(b"s3cret").into();
        Authenticator::new(
            vec![("ops".into(), d)],
            None,
            None,
            vec!["token:ops".into()],
        )
    }

    fn with_auth(v: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut().insert("authorization", v.parse().unwrap());
        r
    }

    #[test]
    fn tokens() {
        let a = auth();
        assert_eq!(
            a.identify(&with_auth("Bearer s3cret")).unwrap(),
            Principal::Approver {
                name: "token:ops".into()
            }
        );
        for bad in ["Bearer nope", "Basic s3cret", "s3cret", "Bearer "] {
            let e = a.identify(&with_auth(bad)).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
        }
        // No header and no transport identity.
        assert_eq!(
            a.identify(&Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn roles() {
        let a = auth();
        let host = Principal::Host {
            host: "web-1".into(),
        };
        assert_eq!(a.host(&host, "Submit").unwrap(), "web-1");
        assert_eq!(
            a.approver(&host, "Decide").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let appr = Principal::Approver {
            name: "cert:alice".into(),
        };
        let alice = a.approver(&appr, "Decide").unwrap();
        assert!(!alice.workstation && !alice.unix, "{alice:?}");
        let ops = Principal::Approver {
            name: "token:ops".into(),
        };
        assert!(a.approver(&ops, "Decide").unwrap().workstation);
        assert_eq!(
            a.host(&appr, "Submit").unwrap_err().code(),
            tonic::Code::PermissionDenied
        );
        let mut u = UnixPeer {
            pid: 10,
            uid: 1000,
            gid: 1000,
            user: "dev".into(),
            admin: false,
            session: Some(0),
        };
        assert!(a.approver(&Principal::Unix(u.clone()), "Decide").is_err());
        assert!(a.host(&Principal::Unix(u.clone()), "Submit").is_err());
        u.admin = true;
        let id = a.approver(&Principal::Unix(u.clone()), "Decide").unwrap();
        assert_eq!(id.name, "unix:dev");
        assert_eq!(id.local.map(|l| l.1), Some(0));
        u.uid = 0;
        u.session = Some(4);
        let e = a.host(&Principal::Unix(u.clone()), "Submit").unwrap_err();
        assert!(e.message().contains("agent session 4"), "{e}");
        u.session = None;
        assert_eq!(
            a.host(&Principal::Unix(u), "Submit").unwrap(),
            crate::os::host::host_name()
        );
    }
}
