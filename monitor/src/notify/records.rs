//! Parser for the byte buffers `read(2)` returns on a fanotify group that reports
//! directory file handles and names (`FAN_REPORT_DFID_NAME`).
//!
//! Layout (include/uapi/linux/fanotify.h), all fields in native byte order:
//!
//! ```text
//! struct fanotify_event_metadata {        // 24 bytes
//!     __u32 event_len; __u8 vers; __u8 reserved; __u16 metadata_len;
//!     __aligned_u64 mask; __s32 fd; __s32 pid;
//! };
//! // then, up to event_len, info records:
//! struct fanotify_event_info_header { __u8 info_type; __u8 pad; __u16 len; };
//! struct fanotify_event_info_fid {
//!     struct fanotify_event_info_header hdr;
//!     __kernel_fsid_t fsid;                // 8 bytes
//!     unsigned char handle[];              // struct file_handle, then (for *_NAME) a NUL-terminated name
//! };
//! struct file_handle { __u32 handle_bytes; int handle_type; unsigned char f_handle[]; };
//! ```
//!
//! Nothing here trusts a length field: every read is bounds-checked, a malformed event is
//! returned flagged (so its fd, if any, can still be closed and it can be counted) and the
//! parser never panics. The parser is pure (no syscalls) so it is tested on hand-built buffers.

/// `FANOTIFY_METADATA_VERSION` from the uapi header.
pub(crate) const METADATA_VERSION: u8 = 3;
/// `sizeof(struct fanotify_event_metadata)`.
pub(crate) const METADATA_LEN: usize = 24;
pub(crate) use crate::os::fs::MAX_HANDLE_SZ;

const INFO_HDR_LEN: usize = 4;
const FSID_LEN: usize = 8;
const FILE_HANDLE_HDR_LEN: usize = 8;

/// `FAN_EVENT_INFO_TYPE_DFID_NAME`: directory fid + entry name.
pub(crate) const INFO_DFID_NAME: u8 = 2;
/// `FAN_EVENT_INFO_TYPE_DFID`: directory fid, no name.
pub(crate) const INFO_DFID: u8 = 3;
/// `FAN_EVENT_INFO_TYPE_OLD_DFID_NAME`: FAN_RENAME, the old parent + old name.
pub(crate) const INFO_OLD_DFID_NAME: u8 = 10;
/// `FAN_EVENT_INFO_TYPE_NEW_DFID_NAME`: FAN_RENAME, the new parent + new name.
pub(crate) const INFO_NEW_DFID_NAME: u8 = 12;

/// Identity of a filesystem object as the kernel reports it: filesystem id plus the
/// exportfs file handle. Used as the key of the mark set and of the directory cache.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(crate) struct HandleKey {
    pub fsid: [u8; 8],
    pub handle_type: i32,
    pub handle: Box<[u8]>,
}

/// Which of the four fid record types this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FidKind {
    DfidName,
    Dfid,
    OldDfidName,
    NewDfidName,
}

/// One parsed fid info record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct FidRecord {
    pub kind: FidKind,
    pub key: HandleKey,
    /// Entry name without the NUL (raw bytes: may hold newlines or invalid UTF-8).
    /// `None` for `Dfid` records. The kernel reports "." for events on a directory itself.
    pub name: Option<Box<[u8]>>,
}

/// One event from the buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct RawEvent {
    pub mask: u64,
    /// Event fd (`FAN_NOFD` = -1 in fid mode). If it is >= 0 the caller must close it.
    pub fd: i32,
    pub pid: i32,
    pub records: Vec<FidRecord>,
    /// Why the info records could not be used, if they could not.
    pub malformed: Option<&'static str>,
}

/// Result of parsing one buffer.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Parsed {
    pub events: Vec<RawEvent>,
    /// Set when the rest of the buffer could not be walked (bad version, bad length,
    /// trailing bytes): what follows the last returned event was lost.
    pub truncated: Option<&'static str>,
}

fn u16_at(b: &[u8], off: usize) -> Option<u16> {
    let s = b.get(off..off.checked_add(2)?)?;
    Some(u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], off: usize) -> Option<u32> {
    let s = b.get(off..off.checked_add(4)?)?;
    Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

fn i32_at(b: &[u8], off: usize) -> Option<i32> {
    u32_at(b, off).map(|v| v as i32)
}

fn u64_at(b: &[u8], off: usize) -> Option<u64> {
    let s = b.get(off..off.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_ne_bytes(a))
}

/// Parse every event in `buf` (what one `read(2)` returned).
pub(crate) fn parse_buffer(buf: &[u8]) -> Parsed {
    let mut out = Parsed::default();
    let mut off = 0usize;
    while off < buf.len() {
        let rest = &buf[off..];
        if rest.len() < METADATA_LEN {
            out.truncated = Some("trailing bytes shorter than an event header");
            break;
        }
        // The header fields exist: rest.len() >= 24.
        let (Some(event_len), Some(metadata_len), Some(mask), Some(fd), Some(pid)) = (
            u32_at(rest, 0),
            u16_at(rest, 6),
            u64_at(rest, 8),
            i32_at(rest, 16),
            i32_at(rest, 20),
        ) else {
            out.truncated = Some("short event header");
            break;
        };
        let vers = rest[4];
        let event_len = event_len as usize;
        let metadata_len = metadata_len as usize;
        if vers != METADATA_VERSION {
            // Another layout: nothing after this point can be trusted.
            out.truncated = Some("unknown fanotify metadata version");
            break;
        }
        if event_len < METADATA_LEN || event_len > rest.len() {
            out.truncated = Some("event_len out of bounds");
            break;
        }
        let mut ev = RawEvent {
            mask,
            fd,
            pid,
            records: Vec::new(),
            malformed: None,
        };
        if metadata_len < METADATA_LEN || metadata_len > event_len {
            ev.malformed = Some("metadata_len out of bounds");
        } else {
            match parse_records(&rest[metadata_len..event_len]) {
                Ok(records) => ev.records = records,
                Err(why) => ev.malformed = Some(why),
            }
        }
        out.events.push(ev);
        off += event_len;
    }
    out
}

/// Parse the info records of one event.
fn parse_records(mut b: &[u8]) -> Result<Vec<FidRecord>, &'static str> {
    let mut records = Vec::new();
    while !b.is_empty() {
        if b.len() < INFO_HDR_LEN {
            return Err("trailing bytes shorter than an info header");
        }
        let info_type = b[0];
        let len = u16_at(b, 2).ok_or("short info header")? as usize;
        if len < INFO_HDR_LEN || len > b.len() {
            return Err("info record length out of bounds");
        }
        let rec = &b[..len];
        let kind = match info_type {
            INFO_DFID_NAME => Some(FidKind::DfidName),
            INFO_DFID => Some(FidKind::Dfid),
            INFO_OLD_DFID_NAME => Some(FidKind::OldDfidName),
            INFO_NEW_DFID_NAME => Some(FidKind::NewDfidName),
            // FID (1), PIDFD (4), ERROR (5), RANGE, MNT, ...: not requested by this group,
            // skipped by length if a newer kernel adds them.
            _ => None,
        };
        if let Some(kind) = kind {
            records.push(parse_fid(kind, rec)?);
        }
        b = &b[len..];
    }
    Ok(records)
}

/// Parse one `fanotify_event_info_fid` record (`rec` is exactly `hdr.len` bytes).
fn parse_fid(kind: FidKind, rec: &[u8]) -> Result<FidRecord, &'static str> {
    let fsid_at = INFO_HDR_LEN;
    let fh_at = fsid_at + FSID_LEN;
    let fsid: [u8; 8] = rec
        .get(fsid_at..fh_at)
        .and_then(|s| s.try_into().ok())
        .ok_or("fid record too short for fsid")?;
    let handle_bytes = u32_at(rec, fh_at).ok_or("fid record too short for file_handle")? as usize;
    let handle_type = i32_at(rec, fh_at + 4).ok_or("fid record too short for file_handle")?;
    if handle_bytes == 0 || handle_bytes > MAX_HANDLE_SZ {
        return Err("file_handle size out of range");
    }
    let h_at = fh_at + FILE_HANDLE_HDR_LEN;
    let h_end = h_at + handle_bytes;
    let handle = rec
        .get(h_at..h_end)
        .ok_or("file_handle runs past its record")?;
    let name = match kind {
        FidKind::Dfid => None,
        FidKind::DfidName | FidKind::OldDfidName | FidKind::NewDfidName => {
            let tail = &rec[h_end..];
            let nul = tail
                .iter()
                .position(|&c| c == 0)
                .ok_or("name not NUL-terminated")?;
            let name = &tail[..nul];
            // A directory entry name is never empty, never contains '/', and is never "..";
            // "." is what the kernel reports for an event on the directory itself.
            if name.is_empty() {
                return Err("empty name");
            }
            if name.contains(&b'/') {
                return Err("name contains '/'");
            }
            if name == b".." {
                return Err("name is \"..\"");
            }
            Some(name.into())
        }
    };
    Ok(FidRecord {
        kind,
        key: HandleKey {
            fsid,
            handle_type,
            handle: handle.into(),
        },
        name,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Build one fid info record as the kernel does (padded to 4 bytes).
    pub(crate) fn fid_record(
        info_type: u8,
        fsid: [u8; 8],
        handle_type: i32,
        handle: &[u8],
        name: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut body = Vec::new();
        body.extend_from_slice(&fsid);
        body.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        body.extend_from_slice(&handle_type.to_ne_bytes());
        body.extend_from_slice(handle);
        if let Some(n) = name {
            body.extend_from_slice(n);
            body.push(0);
        }
        let mut len = INFO_HDR_LEN + body.len();
        len = (len + 3) & !3;
        let mut rec = vec![info_type, 0];
        rec.extend_from_slice(&(len as u16).to_ne_bytes());
        rec.extend_from_slice(&body);
        rec.resize(len, 0);
        rec
    }

    /// Build one event (metadata + records).
    pub(crate) fn event(mask: u64, pid: i32, records: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = records.concat();
        let event_len = METADATA_LEN + body.len();
        let mut ev = Vec::new();
        ev.extend_from_slice(&(event_len as u32).to_ne_bytes());
        ev.push(METADATA_VERSION);
        ev.push(0);
        ev.extend_from_slice(&(METADATA_LEN as u16).to_ne_bytes());
        ev.extend_from_slice(&mask.to_ne_bytes());
        ev.extend_from_slice(&(-1i32).to_ne_bytes());
        ev.extend_from_slice(&pid.to_ne_bytes());
        ev.extend_from_slice(&body);
        ev
    }

    const FSID: [u8; 8] = [1, 2, 3, 4, 5, 6, 7, 8];
    const H1: &[u8] = &[0x9c, 0xc0, 0x98, 0x00, 0x38, 0x78, 0x53, 0xfa];
    const H2: &[u8] = &[0xb7, 0xc0, 0x98, 0x00, 0x75, 0xff, 0xbf, 0x51];

    fn key(h: &[u8]) -> HandleKey {
        HandleKey {
            fsid: FSID,
            handle_type: 1,
            handle: h.into(),
        }
    }

    #[test]
    fn parses_dfid_name_event() {
        let buf = event(
            0x100,
            42,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"a.conf"))],
        );
        let p = parse_buffer(&buf);
        assert_eq!(p.truncated, None);
        assert_eq!(p.events.len(), 1);
        let e = &p.events[0];
        assert_eq!((e.mask, e.pid, e.fd, e.malformed), (0x100, 42, -1, None));
        assert_eq!(
            e.records,
            vec![FidRecord {
                kind: FidKind::DfidName,
                key: key(H1),
                name: Some(b"a.conf".as_slice().into())
            }]
        );
    }

    #[test]
    fn parses_rename_with_old_and_new() {
        let buf = event(
            0x1000_0000,
            7,
            &[
                fid_record(INFO_OLD_DFID_NAME, FSID, 1, H1, Some(b"old")),
                fid_record(INFO_NEW_DFID_NAME, FSID, 1, H2, Some(b"new")),
            ],
        );
        let p = parse_buffer(&buf);
        let r = &p.events[0].records;
        assert_eq!(r.len(), 2);
        assert_eq!(
            (r[0].kind, r[0].name.as_deref()),
            (FidKind::OldDfidName, Some(&b"old"[..]))
        );
        assert_eq!(
            (r[1].kind, r[1].name.as_deref()),
            (FidKind::NewDfidName, Some(&b"new"[..]))
        );
        assert_eq!(r[1].key, key(H2));
    }

    #[test]
    fn parses_several_events_and_dfid_without_name() {
        let mut buf = event(0x4000_0004, 1, &[fid_record(INFO_DFID, FSID, 1, H1, None)]);
        buf.extend(event(
            0x2,
            2,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H2, Some(b"f"))],
        ));
        buf.extend(event(0x4000, -1, &[]));
        let p = parse_buffer(&buf);
        assert_eq!(p.truncated, None);
        assert_eq!(p.events.len(), 3);
        assert_eq!(p.events[0].records[0].kind, FidKind::Dfid);
        assert_eq!(p.events[0].records[0].name, None);
        assert_eq!(p.events[1].pid, 2);
        assert_eq!(p.events[2].mask, 0x4000);
        assert!(p.events[2].records.is_empty());
    }

    #[test]
    fn names_are_raw_bytes() {
        let nl = b"new\nline.conf";
        let bad = b"bad\xff\xfe.conf";
        let mut buf = event(
            0x100,
            1,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(nl))],
        );
        buf.extend(event(
            0x100,
            1,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(bad))],
        ));
        let p = parse_buffer(&buf);
        assert_eq!(p.events[0].records[0].name.as_deref(), Some(&nl[..]));
        assert_eq!(p.events[1].records[0].name.as_deref(), Some(&bad[..]));
    }

    #[test]
    fn unknown_info_types_are_skipped() {
        // A PIDFD-like record (type 4, len 8, then an fd) before the fid record.
        let mut pidfd = vec![4u8, 0];
        pidfd.extend_from_slice(&8u16.to_ne_bytes());
        pidfd.extend_from_slice(&9i32.to_ne_bytes());
        let buf = event(
            0x100,
            1,
            &[pidfd, fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"x"))],
        );
        let p = parse_buffer(&buf);
        assert_eq!(p.events[0].malformed, None);
        assert_eq!(p.events[0].records.len(), 1);
    }

    #[test]
    fn empty_and_tiny_buffers() {
        assert_eq!(parse_buffer(&[]), Parsed::default());
        for n in 1..METADATA_LEN {
            let p = parse_buffer(&vec![0u8; n]);
            assert!(p.events.is_empty());
            assert!(p.truncated.is_some());
        }
    }

    #[test]
    fn bad_version_stops() {
        let mut buf = event(
            0x100,
            1,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"x"))],
        );
        buf[4] = 2;
        let p = parse_buffer(&buf);
        assert!(p.events.is_empty());
        assert_eq!(p.truncated, Some("unknown fanotify metadata version"));
    }

    #[test]
    fn event_len_out_of_bounds() {
        let good = event(
            0x100,
            1,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"x"))],
        );
        // Too large: claims more than the buffer has.
        let mut buf = good.clone();
        let big = (good.len() as u32 + 1).to_ne_bytes();
        buf[0..4].copy_from_slice(&big);
        assert!(parse_buffer(&buf).truncated.is_some());
        // Too small: would loop forever if trusted.
        for l in [0u32, 1, 23] {
            let mut buf = good.clone();
            buf[0..4].copy_from_slice(&l.to_ne_bytes());
            let p = parse_buffer(&buf);
            assert!(p.events.is_empty(), "event_len {l}");
            assert!(p.truncated.is_some());
        }
        // The good event is kept when a later one is broken.
        let mut buf = good.clone();
        let mut bad = good.clone();
        bad[0..4].copy_from_slice(&5000u32.to_ne_bytes());
        buf.extend(bad);
        let p = parse_buffer(&buf);
        assert_eq!(p.events.len(), 1);
        assert!(p.truncated.is_some());
    }

    #[test]
    fn metadata_len_out_of_bounds_flags_event_but_continues() {
        let mut buf = event(
            0x100,
            1,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"x"))],
        );
        let first_len = buf.len();
        buf.extend(event(
            0x2,
            3,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"y"))],
        ));
        buf[6..8].copy_from_slice(&(first_len as u16 + 1).to_ne_bytes());
        let p = parse_buffer(&buf);
        assert_eq!(p.events.len(), 2);
        assert!(p.events[0].malformed.is_some());
        assert_eq!(p.events[1].malformed, None);
        let mut buf = event(0x100, 1, &[]);
        buf[6..8].copy_from_slice(&8u16.to_ne_bytes());
        assert!(parse_buffer(&buf).events[0].malformed.is_some());
    }

    /// Replace the records of a one-record event with `rec` (fixing event_len).
    fn with_record(rec: Vec<u8>) -> Vec<u8> {
        event(0x100, 1, &[rec])
    }

    fn malformed(buf: &[u8]) -> Option<&'static str> {
        let p = parse_buffer(buf);
        assert_eq!(p.truncated, None);
        assert_eq!(p.events.len(), 1);
        p.events[0].malformed
    }

    #[test]
    fn malformed_records() {
        let good = fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"name"));
        // Info len smaller than the header.
        let mut r = good.clone();
        r[2..4].copy_from_slice(&2u16.to_ne_bytes());
        assert!(malformed(&with_record(r)).is_some());
        // Info len larger than the event.
        let mut r = good.clone();
        r[2..4].copy_from_slice(&(good.len() as u16 + 4).to_ne_bytes());
        assert!(malformed(&with_record(r)).is_some());
        // handle_bytes larger than the record.
        let mut r = good.clone();
        r[12..16].copy_from_slice(&64u32.to_ne_bytes());
        assert!(malformed(&with_record(r)).is_some());
        // handle_bytes absurd / zero.
        for hb in [0u32, 129, u32::MAX] {
            let mut r = good.clone();
            r[12..16].copy_from_slice(&hb.to_ne_bytes());
            assert!(malformed(&with_record(r)).is_some(), "handle_bytes {hb}");
        }
        // Name without NUL: overwrite the NUL and padding.
        let mut r = good.clone();
        let n = r.len();
        for b in &mut r[n - 4..] {
            if *b == 0 {
                *b = b'z';
            }
        }
        assert_eq!(malformed(&with_record(r)), Some("name not NUL-terminated"));
        // Record shorter than fsid + file_handle header.
        let mut r = vec![INFO_DFID_NAME, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        r[2..4].copy_from_slice(&12u16.to_ne_bytes());
        assert!(malformed(&with_record(r)).is_some());
        // Names that would escape the directory.
        for bad in [&b"a/b"[..], b"..", b"/"] {
            let r = fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(bad));
            assert!(malformed(&with_record(r)).is_some(), "{bad:?}");
        }
        // Empty name.
        let r = fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b""));
        assert_eq!(malformed(&with_record(r)), Some("empty name"));
        // Trailing 1-3 bytes after the last record.
        for extra in 1..4 {
            let mut r = good.clone();
            r.extend(std::iter::repeat_n(0u8, extra));
            assert!(malformed(&with_record(r)).is_some());
        }
        // "." is accepted (event on the directory itself).
        let r = fid_record(INFO_DFID_NAME, FSID, 1, H1, Some(b"."));
        assert_eq!(malformed(&with_record(r)), None);
    }

    #[test]
    fn every_truncation_of_a_valid_buffer_is_safe() {
        let mut buf = event(
            0x1000_0000,
            7,
            &[
                fid_record(INFO_OLD_DFID_NAME, FSID, 1, H1, Some(b"old\n\xff")),
                fid_record(INFO_NEW_DFID_NAME, FSID, 1, H2, Some(b"new")),
            ],
        );
        buf.extend(event(
            0x2,
            2,
            &[fid_record(INFO_DFID_NAME, FSID, 1, H2, Some(b"f"))],
        ));
        for n in 0..buf.len() {
            // Must not panic; a cut inside an event stops the walk.
            let p = parse_buffer(&buf[..n]);
            assert!(p.events.len() <= 2);
        }
        // Flip every byte in turn: still no panic.
        for i in 0..buf.len() {
            let mut b = buf.clone();
            b[i] ^= 0xff;
            let _ = parse_buffer(&b);
        }
    }
}
