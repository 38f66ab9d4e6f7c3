//! Which process is on the other end of a loopback TCP connection, from `/proc/net/tcp*`
//! and the processes' open files: so that the daemon's own service (local mode) can refuse
//! a web decision that comes from inside an agent session, as it does on its Unix socket.
//!
//! [`locate_client`] fails closed: a client on this host (its end is in this host's
//! connection table, or its address is loopback or one of the host's own) whose process
//! cannot be found is [`Client::OnThisHost`], which callers refuse. IPv4-mapped IPv6
//! addresses (`::ffff:127.0.0.1`, from a dual-stack listener) count as their IPv4 address.
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Where the client of a connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Client {
    /// A process of this host (its pid).
    Process(u32),
    /// On this host, but its process cannot be found (gone, or its descriptors hidden):
    /// nobody can tell whether it is inside an agent session.
    OnThisHost,
    /// Another machine.
    Elsewhere,
}

/// `a` with an IPv4-mapped IPv6 address as the IPv4 address it maps.
pub fn canonical(a: SocketAddr) -> SocketAddr {
    match a {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
            None => a,
        },
        SocketAddr::V4(_) => a,
    }
}

/// Where the client of the TCP connection from `client` to `server` (as the server sees
/// them) is; see the module documentation.
pub fn locate_client(client: SocketAddr, server: SocketAddr) -> Client {
    let inode =
        client_inode(client, server).or_else(|| client_inode(canonical(client), canonical(server)));
    if let Some(inode) = inode {
        return pid_of_inode(inode).map_or(Client::OnThisHost, Client::Process);
    }
    if is_this_host(canonical(client).ip(), host_addresses().as_deref()) {
        Client::OnThisHost
    } else {
        Client::Elsewhere
    }
}

/// Whether `ip` is loopback, unspecified or one of `own` (the host's addresses; `None`
/// when they could not be read: then every address might be this host's).
fn is_this_host(ip: IpAddr, own: Option<&[IpAddr]>) -> bool {
    ip.is_loopback() || ip.is_unspecified() || own.is_none_or(|own| own.contains(&ip))
}

/// The addresses of this host's interfaces (in this network namespace).
fn host_addresses() -> Option<Vec<IpAddr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs stores the head of a list it allocates in `head`; the list is
    // freed below with freeifaddrs and not used after.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return None;
    }
    let mut out = Vec::new();
    let mut p = head;
    while !p.is_null() {
        // SAFETY: `p` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*p };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: `ifa_addr` points to a socket address of the family it names; the
            // family is read first, then the address as that family's structure.
            unsafe {
                match i32::from((*ifa.ifa_addr).sa_family) {
                    libc::AF_INET => {
                        let sin = &*ifa.ifa_addr.cast::<libc::sockaddr_in>();
                        out.push(IpAddr::V4(Ipv4Addr::from(u32::from_be(
                            sin.sin_addr.s_addr,
                        ))));
                    }
                    libc::AF_INET6 => {
                        let sin6 = &*ifa.ifa_addr.cast::<libc::sockaddr_in6>();
                        out.push(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)));
                    }
                    _ => {}
                }
            }
        }
        p = ifa.ifa_next;
    }
    // SAFETY: `head` came from a successful getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Some(out)
}

/// The pid holding the client end of the TCP connection from `client` to `server` (as the
/// server sees them), if this host has it.
pub fn pid_of_client(client: SocketAddr, server: SocketAddr) -> Option<u32> {
    pid_of_inode(client_inode(client, server)?)
}

/// The pid of a process holding socket `inode`.
fn pid_of_inode(inode: u64) -> Option<u32> {
    let target = format!("socket:[{inode}]");
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if std::fs::read_link(fd.path()).is_ok_and(|l| l.as_os_str() == target.as_str()) {
                return Some(pid);
            }
        }
    }
    None
}

/// The socket inode of the connection whose local end is `client` and remote end `server`.
fn client_inode(client: SocketAddr, server: SocketAddr) -> Option<u64> {
    let table = match client {
        SocketAddr::V4(_) => "/proc/net/tcp",
        SocketAddr::V6(_) => "/proc/net/tcp6",
    };
    let text = std::fs::read_to_string(table).ok()?;
    find_inode(&text, client, server)
}

/// [`client_inode`] on the text of a `/proc/net/tcp*` table.
fn find_inode(text: &str, client: SocketAddr, server: SocketAddr) -> Option<u64> {
    text.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (local, remote, inode) = (f.get(1)?, f.get(2)?, f.get(9)?);
        (parse_addr(local)? == client && parse_addr(remote)? == server)
            .then(|| inode.parse().ok())
            .flatten()
    })
}

/// `0100007F:1F90` (IPv4) or 32 hex digits `:PORT` (IPv6), as the kernel prints them: each
/// 32-bit word in host (little-endian) order.
fn parse_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| -> Option<[u8; 4]> {
        Some(
            u32::from_str_radix(ip.get(i * 8..i * 8 + 8)?, 16)
                .ok()?
                .to_le_bytes(),
        )
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_kernel_table() {
        let t = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   \
                 0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 111 1 0 100 0 0 10 0\n   \
                 1: 0100007F:D431 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 222 1 0 20 4 30 10 -1\n";
        let client: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        let server: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        assert_eq!(find_inode(t, client, server), Some(222));
        assert_eq!(find_inode(t, server, client), None);
        assert_eq!(
            parse_addr("00000000000000000000000001000000:1F90"),
            Some("[::1]:8080".parse().unwrap())
        );
    }

    #[test]
    fn mapped_addresses_count_as_ipv4_and_unknown_local_clients_are_not_elsewhere() {
        let mapped: SocketAddr = "[::ffff:127.0.0.1]:80".parse().unwrap();
        assert!(!mapped.ip().is_loopback(), "why canonical() exists");
        assert_eq!(canonical(mapped), "127.0.0.1:80".parse().unwrap());
        let v6: SocketAddr = "[2001:db8::1]:80".parse().unwrap();
        assert_eq!(canonical(v6), v6);
        let own = [IpAddr::V4(Ipv4Addr::new(192, 0, 2, 7))];
        for local in ["127.0.0.1", "127.3.4.5", "::1", "192.0.2.7"] {
            assert!(is_this_host(local.parse().unwrap(), Some(&own)), "{local}");
        }
        assert!(!is_this_host("192.0.2.8".parse().unwrap(), Some(&own)));
        // Host addresses unknown: every client might be local.
        assert!(is_this_host("198.51.100.1".parse().unwrap(), None));
        // This host's real addresses are found (loopback at least).
        let own = host_addresses().unwrap();
        assert!(own.iter().any(IpAddr::is_loopback), "{own:?}");
        // A client with this host's address and no connection in the table (its process
        // gone) is on this host, not elsewhere; a mapped loopback one too.
        let server: SocketAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            locate_client("127.0.0.1:9".parse().unwrap(), server),
            Client::OnThisHost
        );
        assert_eq!(
            locate_client(
                "[::ffff:127.0.0.1]:9".parse().unwrap(),
                "[::ffff:127.0.0.1]:1".parse().unwrap()
            ),
            Client::OnThisHost
        );
        if let Some(ip) = own.iter().find(|ip| !ip.is_loopback()) {
            assert_eq!(
                locate_client(SocketAddr::new(*ip, 9), server),
                Client::OnThisHost,
                "{ip}"
            );
        }
        assert_eq!(
            locate_client("192.0.2.200:9".parse().unwrap(), server),
            Client::Elsewhere
        );
    }

    #[test]
    fn a_dual_stack_listener_finds_a_mapped_ipv4_client() {
        let Ok(l) = std::net::TcpListener::bind("[::]:0") else {
            return; // no IPv6 here
        };
        let port = l.local_addr().unwrap().port();
        let c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        let (s, client) = l.accept().unwrap();
        assert!(client.ip().to_canonical().is_loopback(), "{client}");
        assert_eq!(
            locate_client(client, s.local_addr().unwrap()),
            Client::Process(std::process::id())
        );
        drop(c);
    }

    #[test]
    fn finds_this_process_on_a_real_connection() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (_s, client) = l.accept().unwrap();
        assert_eq!(client, c.local_addr().unwrap());
        assert_eq!(
            pid_of_client(client, l.local_addr().unwrap()),
            Some(std::process::id())
        );
    }
}
