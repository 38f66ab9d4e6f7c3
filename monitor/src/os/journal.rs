//! Whether a standard stream is connected to systemd's journal: systemd sets
//! `JOURNAL_STREAM=<device>:<inode>` to the stream socket it gives a service as stdout
//! and/or stderr (`StandardOutput=journal`), and a program compares that with `fstat` of
//! its own descriptor (systemd.exec(5)). A variable inherited by a process whose stream was
//! redirected (`confgate daemon | jq` in a service's shell) does not match, and then the
//! stream is not the journal.
use std::os::fd::AsFd;
use std::path::Path;

/// The journal's native socket (`tracing-journald` sends its datagrams there).
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Parses `JOURNAL_STREAM`'s `<device>:<inode>` (decimal, as systemd writes it).
pub fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// `JOURNAL_STREAM`, when set and well-formed.
pub fn stream() -> Option<(u64, u64)> {
    std::env::var("JOURNAL_STREAM")
        .ok()
        .as_deref()
        .and_then(parse_stream)
}

/// Whether descriptor `fd` is the journal stream `stream` names.
pub fn is_stream(fd: impl AsFd, stream: Option<(u64, u64)>) -> bool {
    let Some((dev, ino)) = stream else {
        return false;
    };
    nix::sys::stat::fstat(fd.as_fd()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// Whether stdout is the journal stream of `JOURNAL_STREAM`.
pub fn stdout_is_journal() -> bool {
    is_stream(std::io::stdout(), stream())
}

/// Whether stderr is the journal stream of `JOURNAL_STREAM`.
pub fn stderr_is_journal() -> bool {
    is_stream(std::io::stderr(), stream())
}

/// Whether the journal's native socket exists.
pub fn socket_exists() -> bool {
    Path::new(SOCKET).exists()
}

/// Whether a process logs to the journal's native socket: a service (not a command
/// people type) whose stderr is the journal stream, when the socket exists.
pub fn logs_to_journal(service: bool, stderr_is_journal: bool, socket_exists: bool) -> bool {
    service && stderr_is_journal && socket_exists
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt as _;

    #[test]
    fn only_services_on_the_journal_stream_log_to_the_socket() {
        assert!(logs_to_journal(true, true, true));
        assert!(
            !logs_to_journal(false, true, true),
            "commands log to stderr"
        );
        assert!(!logs_to_journal(true, false, true), "stderr redirected");
        assert!(!logs_to_journal(true, true, false), "no journald");
    }

    #[test]
    fn stream_values() {
        assert_eq!(parse_stream("8:123456"), Some((8, 123456)));
        for bad in ["", "8", "8:", ":1", "a:1", "8:1:2", "-1:5"] {
            assert_eq!(parse_stream(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn a_descriptor_is_the_stream_whose_device_and_inode_it_has() {
        let f = tempfile::tempfile().unwrap();
        let m = f.metadata().unwrap();
        assert!(is_stream(&f, Some((m.dev(), m.ino()))));
        assert!(!is_stream(&f, Some((m.dev(), m.ino() + 1))));
        assert!(!is_stream(&f, None));
    }
}
