//! The supervise socket's messages (`SOCK_SEQPACKET`, one JSON object per packet) and the
//! blocking send/receive both ends use.
//!
//! 1. helper -> daemon: [`Hello`] `{"v":1,"session":ID}`
//! 2. daemon -> helper: [`Reply`] `{"ok":true,"spec":{..}}` or `{"ok":false,"error":".."}`
//! 3. helper -> daemon: [`Listener`] `{"listener":true}` with the listener (`SCM_RIGHTS`)
//! 4. daemon -> helper: [`Reply`] `{"ok":true}` once the listener is supervised
use std::io::{self, IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};
use serde::{Deserialize, Serialize};

use super::ConfineSpec;

/// Protocol version of [`Hello`].
pub const VERSION: u32 = 1;
/// Largest packet either side accepts (a spec lists a few hundred paths).
pub const MAX_PACKET: usize = 1 << 20;

/// The helper's first message.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Hello {
    /// [`VERSION`].
    pub v: u32,
    /// The session the helper's process was registered as.
    pub session: u64,
}

/// The helper's second message (the descriptor travels beside it).
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Listener {
    /// Always true.
    pub listener: bool,
}

/// The daemon's answer to either message.
#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Reply {
    /// Whether the step succeeded.
    pub ok: bool,
    /// What to install (answer to [`Hello`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<ConfineSpec>,
    /// Why not (when `ok` is false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// A refusal.
    pub fn refuse(error: impl Into<String>) -> Reply {
        Reply {
            ok: false,
            spec: None,
            error: Some(error.into()),
        }
    }
}

fn invalid(what: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.into())
}

/// Sends `msg` as one packet, with `fd` attached when given.
pub fn send<T: Serialize>(
    sock: BorrowedFd<'_>,
    msg: &T,
    fd: Option<BorrowedFd<'_>>,
) -> io::Result<()> {
    let body = serde_json::to_vec(msg).map_err(|e| invalid(e.to_string()))?;
    let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
    let cmsg: Vec<ControlMessage<'_>> = if fds.is_empty() {
        Vec::new()
    } else {
        vec![ControlMessage::ScmRights(&fds)]
    };
    let n = sendmsg::<()>(
        sock.as_raw_fd(),
        &[IoSlice::new(&body)],
        &cmsg,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map_err(io::Error::from)?;
    if n != body.len() {
        return Err(invalid("short send on the supervise socket"));
    }
    Ok(())
}

/// Receives one packet and the descriptors that came with it (close-on-exec). A closed
/// peer, a truncated packet or malformed JSON is an error.
pub fn recv<T: for<'de> Deserialize<'de>>(sock: BorrowedFd<'_>) -> io::Result<(T, Vec<OwnedFd>)> {
    let mut buf = vec![0u8; MAX_PACKET];
    let mut space = nix::cmsg_space!([RawFd; 4]);
    let (len, fds) = {
        let mut iov = [IoSliceMut::new(&mut buf)];
        let msg = recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        )
        .map_err(io::Error::from)?;
        let mut fds = Vec::new();
        for c in msg.cmsgs().map_err(io::Error::from)? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                for fd in raw {
                    // SAFETY: the kernel installed each descriptor of SCM_RIGHTS in this
                    // process for this message; nothing else owns it.
                    fds.push(unsafe { OwnedFd::from_raw_fd(fd) });
                }
            }
        }
        if msg
            .flags
            .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
        {
            return Err(invalid("truncated packet on the supervise socket"));
        }
        (msg.bytes, fds)
    };
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the supervise socket was closed",
        ));
    }
    let msg = serde_json::from_slice(&buf[..len]).map_err(|e| invalid(e.to_string()))?;
    Ok((msg, fds))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    use std::os::fd::AsFd;
    use std::path::PathBuf;

    #[test]
    fn messages_round_trip_with_a_descriptor() {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        send(a.as_fd(), &Hello { v: 1, session: 7 }, None).unwrap();
        let (h, fds): (Hello, _) = recv(b.as_fd()).unwrap();
        assert_eq!(h, Hello { v: 1, session: 7 });
        assert!(fds.is_empty());
        let file = std::fs::File::open("/proc/self/status").unwrap();
        send(a.as_fd(), &Listener { listener: true }, Some(file.as_fd())).unwrap();
        let (l, fds): (Listener, _) = recv(b.as_fd()).unwrap();
        assert!(l.listener);
        assert_eq!(fds.len(), 1);
        let spec = ConfineSpec {
            write_allowed: vec![PathBuf::from("/tmp")],
            hidden: vec![],
            ..ConfineSpec::default()
        };
        let r = Reply {
            ok: true,
            spec: Some(spec.clone()),
            error: None,
        };
        send(b.as_fd(), &r, None).unwrap();
        let (got, _): (Reply, _) = recv(a.as_fd()).unwrap();
        assert_eq!(got.spec, Some(spec));
        assert_eq!(
            serde_json::to_string(&Reply::refuse("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
        drop(b);
        assert!(recv::<Reply>(a.as_fd()).is_err());
    }
}
