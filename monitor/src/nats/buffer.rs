//! The on-disk buffer between the event loop and NATS JetStream: append-only segment files
//! (`<dir>/seg-<number>.buf`) of checksummed records. A record stays on disk until
//! JetStream has acknowledged it; a segment file is deleted once every record in it is
//! acknowledged and the writer has moved on to a newer one.
//!
//! Record: `0xC5`, body length (u32 LE), CRC-32 of the body (u32 LE), body = subject length
//! (u16 LE), subject, message id length (u16 LE), message id, payload.
//!
//! Durability: the writer appends each batch it takes from the channel with one write and
//! one `fdatasync` before the publisher may read it (group commit); a record the publisher
//! has seen is on disk. After a restart every record of the segments left is sent again
//! (at least once: JetStream drops the duplicates it still remembers by `Nats-Msg-Id`).
//! A damaged record (torn tail after a crash, bad checksum) ends its segment: the rest of
//! that file is skipped, counted (`nats_buffer_damaged`) and logged, never fatal.
use std::{
    collections::BTreeMap,
    fs::{File, OpenOptions},
    io::{Read, Seek, SeekFrom, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex, MutexGuard},
};

use super::Counters;

const MAGIC: u8 = 0xC5;
const HEADER: usize = 9;
/// The largest record body accepted (an event line is far smaller; anything larger read
/// back is damage).
pub const MAX_BODY: usize = 8 << 20;

/// One message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub subject: String,
    pub id: String,
    pub payload: Vec<u8>,
}

impl Record {
    /// Its size on disk.
    pub fn encoded_len(&self) -> usize {
        HEADER + 4 + self.subject.len() + self.id.len() + self.payload.len()
    }

    fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.push(MAGIC);
        out.extend_from_slice(&[0; 8]);
        let body = out.len();
        out.extend_from_slice(&(self.subject.len() as u16).to_le_bytes());
        out.extend_from_slice(self.subject.as_bytes());
        out.extend_from_slice(&(self.id.len() as u16).to_le_bytes());
        out.extend_from_slice(self.id.as_bytes());
        out.extend_from_slice(&self.payload);
        let len = (out.len() - body) as u32;
        let crc = crc32fast::hash(&out[body..]);
        out[start + 1..start + 5].copy_from_slice(&len.to_le_bytes());
        out[start + 5..start + 9].copy_from_slice(&crc.to_le_bytes());
    }
}

/// What decoding the front of a byte slice found.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded {
    /// A record and its encoded length.
    Record(Record, usize),
    /// The slice ends inside a record (read more).
    Short,
    /// Not a valid record: why.
    Damaged(String),
}

pub fn decode(buf: &[u8]) -> Decoded {
    if buf.len() < HEADER {
        return Decoded::Short;
    }
    if buf[0] != MAGIC {
        return Decoded::Damaged(format!("bad record marker {:#04x}", buf[0]));
    }
    let word = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let len = word(1) as usize;
    if !(4..=MAX_BODY).contains(&len) {
        return Decoded::Damaged(format!("record length {len} out of range"));
    }
    let Some(body) = buf.get(HEADER..HEADER + len) else {
        return Decoded::Short;
    };
    if crc32fast::hash(body) != word(5) {
        return Decoded::Damaged("checksum mismatch".into());
    }
    let mut at = 0usize;
    let mut field = || -> Option<&[u8]> {
        let n = u16::from_le_bytes([*body.get(at)?, *body.get(at + 1)?]) as usize;
        let f = body.get(at + 2..at + 2 + n)?;
        at += 2 + n;
        Some(f)
    };
    let (Some(subject), Some(id)) = (field(), field()) else {
        return Decoded::Damaged("record fields overrun its length".into());
    };
    let (Ok(subject), Ok(id)) = (std::str::from_utf8(subject), std::str::from_utf8(id)) else {
        return Decoded::Damaged("subject or id not UTF-8".into());
    };
    let (subject, id) = (subject.to_owned(), id.to_owned());
    Decoded::Record(
        Record {
            subject,
            id,
            payload: body[at..].to_vec(),
        },
        HEADER + len,
    )
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("NATS buffer {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A segment file's state.
#[derive(Debug, Clone, Copy)]
struct Segment {
    /// Bytes written and synced (the publisher reads no further).
    len: u64,
    /// The writer has moved on to a newer segment.
    closed: bool,
}

#[derive(Debug, Default)]
struct State {
    segments: BTreeMap<u64, Segment>,
    /// Bytes and records written and not yet acknowledged.
    bytes: u64,
    events: u64,
}

/// The buffer shared by its writer and its publisher.
pub struct Buffer {
    dir: PathBuf,
    max_bytes: u64,
    segment_bytes: u64,
    state: Mutex<State>,
    counters: Arc<Counters>,
}

/// A position in the buffer: segment number and byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

fn seg_name(n: u64) -> String {
    format!("seg-{n:020}.buf")
}

impl Buffer {
    /// Opens (creating, mode 0700) the buffer directory and takes stock of the segments
    /// a previous run left: their records count as buffered and are sent again.
    pub fn open(
        dir: &Path,
        max_bytes: u64,
        counters: Arc<Counters>,
    ) -> Result<(Arc<Buffer>, Writer), BufferError> {
        let io = |source| BufferError::Io {
            path: dir.to_owned(),
            source,
        };
        {
            use std::os::unix::fs::DirBuilderExt as _;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io)?;
        }
        let mut state = State::default();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let Some(n) = name
                .to_str()
                .and_then(|s| s.strip_prefix("seg-"))
                .and_then(|s| s.strip_suffix(".buf"))
                .and_then(|s| s.parse::<u64>().ok())
            else {
                continue;
            };
            let (len, events) = scan(&entry.path(), &counters);
            state.bytes += len;
            state.events += events;
            state.segments.insert(n, Segment { len, closed: true });
        }
        if !state.segments.is_empty() {
            tracing::info!(dir = %dir.display(), events = state.events, bytes = state.bytes,
                "NATS buffer: events of a previous run not acknowledged yet are sent again");
        }
        let next = state.segments.keys().next_back().map_or(1, |n| n + 1);
        let buffer = Arc::new(Buffer {
            dir: dir.to_owned(),
            max_bytes,
            segment_bytes: (max_bytes / 8).clamp(4096, 4 << 20),
            state: Mutex::new(state),
            counters,
        });
        buffer.publish_gauges();
        let writer = Writer {
            buffer: buffer.clone(),
            file: None,
            segment: next,
            len: 0,
            scratch: Vec::new(),
        };
        Ok((buffer, writer))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_gauges(&self) {
        let (bytes, events) = {
            let s = self.lock();
            (s.bytes, s.events)
        };
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.buffered_bytes.store(bytes, Relaxed);
        self.counters.buffered_events.store(events, Relaxed);
    }

    pub fn path_of(&self, segment: u64) -> PathBuf {
        self.dir.join(seg_name(segment))
    }

    /// The first position at or after `pos` that has readable bytes, and how many:
    /// `None` when everything written has been read.
    pub fn readable(&self, pos: Pos) -> Option<(Pos, u64)> {
        let s = self.lock();
        for (&n, seg) in s.segments.range(pos.segment..) {
            let from = if n == pos.segment { pos.offset } else { 0 };
            if seg.len > from {
                return Some((
                    Pos {
                        segment: n,
                        offset: from,
                    },
                    seg.len - from,
                ));
            }
            if !seg.closed {
                return None;
            }
        }
        None
    }

    /// Records from `pos` acknowledged: `bytes` and `events` leave the count, and every
    /// closed segment wholly before `upto` is deleted.
    pub fn acked(&self, upto: Pos, bytes: u64, events: u64) {
        let doomed: Vec<u64> = {
            let mut s = self.lock();
            s.bytes = s.bytes.saturating_sub(bytes);
            s.events = s.events.saturating_sub(events);
            let doomed: Vec<u64> = s
                .segments
                .iter()
                .filter(|(n, seg)| {
                    seg.closed
                        && (**n < upto.segment || (**n == upto.segment && upto.offset >= seg.len))
                })
                .map(|(n, _)| *n)
                .collect();
            for n in &doomed {
                s.segments.remove(n);
            }
            doomed
        };
        for n in doomed {
            let path = self.path_of(n);
            if let Err(e) = std::fs::remove_file(&path) {
                tracing::warn!(segment = %path.display(), error = %e, "cannot delete an acknowledged NATS buffer segment");
            }
        }
        self.publish_gauges();
    }

    /// The rest of segment `at.segment` from `at.offset` is damaged: its bytes leave the
    /// count, and reading goes on after it (the returned position).
    pub fn skip_damaged(&self, at: Pos, why: &str) -> Pos {
        use std::sync::atomic::Ordering::Relaxed;
        self.counters.buffer_damaged.fetch_add(1, Relaxed);
        let (len, closed) = {
            let s = self.lock();
            s.segments
                .get(&at.segment)
                .map_or((at.offset, true), |g| (g.len, g.closed))
        };
        tracing::error!(segment = %self.path_of(at.segment).display(), offset = at.offset, error = why,
            "NATS buffer: damaged record; the rest of this segment is skipped (counted in nats_buffer_damaged)");
        let skipped = len.saturating_sub(at.offset);
        let end = Pos {
            segment: at.segment,
            offset: len,
        };
        // Out of the count now; the file goes when the acknowledged position passes it.
        {
            let mut s = self.lock();
            s.bytes = s.bytes.saturating_sub(skipped);
        }
        self.publish_gauges();
        if closed {
            Pos {
                segment: at.segment + 1,
                offset: 0,
            }
        } else {
            end
        }
    }
}

/// Reads a segment left by a previous run: its valid length and record count. A damaged
/// or torn record ends it (counted, logged).
fn scan(path: &Path, counters: &Counters) -> (u64, u64) {
    let data = match std::fs::read(path) {
        Ok(d) => d,
        Err(e) => {
            counters.damaged(path, 0, &e.to_string());
            return (0, 0);
        }
    };
    let (mut at, mut events) = (0usize, 0u64);
    while at < data.len() {
        match decode(&data[at..]) {
            Decoded::Record(_, n) => {
                at += n;
                events += 1;
            }
            Decoded::Short => {
                counters.damaged(path, at as u64, "torn record at the end");
                break;
            }
            Decoded::Damaged(why) => {
                counters.damaged(path, at as u64, &why);
                break;
            }
        }
    }
    (at as u64, events)
}

/// Appends records (the only writer; runs on its own thread).
pub struct Writer {
    buffer: Arc<Buffer>,
    file: Option<File>,
    segment: u64,
    len: u64,
    scratch: Vec<u8>,
}

impl Writer {
    /// Appends `records` (those that fit under `buffer_max_bytes`; the others are returned
    /// as dropped) with one write and one fdatasync.
    pub fn append(&mut self, records: &[Record]) -> Result<u64, BufferError> {
        self.scratch.clear();
        let mut dropped = 0u64;
        let mut events = 0u64;
        {
            let s = self.buffer.lock();
            let mut bytes = s.bytes;
            for r in records {
                let n = r.encoded_len() as u64;
                if bytes + n > self.buffer.max_bytes || r.encoded_len() - HEADER > MAX_BODY {
                    dropped += 1;
                    continue;
                }
                bytes += n;
                events += 1;
                r.encode(&mut self.scratch);
            }
        }
        if self.scratch.is_empty() {
            return Ok(dropped);
        }
        let path = self.buffer.path_of(self.segment);
        let io = |source| BufferError::Io {
            path: path.clone(),
            source,
        };
        if self.file.is_none() {
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            // The new name is durable too.
            if let Ok(d) = File::open(&self.buffer.dir) {
                let _ = d.sync_all();
            }
            self.buffer.lock().segments.insert(
                self.segment,
                Segment {
                    len: 0,
                    closed: false,
                },
            );
            self.file = Some(f);
        }
        if let Some(f) = self.file.as_mut() {
            f.write_all(&self.scratch).map_err(io)?;
            f.sync_data().map_err(io)?;
        }
        self.len += self.scratch.len() as u64;
        let roll = self.len >= self.buffer.segment_bytes;
        {
            let mut s = self.buffer.lock();
            s.bytes += self.scratch.len() as u64;
            s.events += events;
            if let Some(seg) = s.segments.get_mut(&self.segment) {
                seg.len = self.len;
                seg.closed = roll;
            }
        }
        if roll {
            self.file = None;
            self.segment += 1;
            self.len = 0;
        }
        self.buffer.publish_gauges();
        Ok(dropped)
    }
}

/// Reads up to `max` bytes of segment `pos.segment` from `pos.offset`.
pub fn read_at(buffer: &Buffer, pos: Pos, max: u64) -> std::io::Result<Vec<u8>> {
    let mut f = File::open(buffer.path_of(pos.segment))?;
    f.seek(SeekFrom::Start(pos.offset))?;
    let mut out = Vec::new();
    f.take(max).read_to_end(&mut out)?;
    Ok(out)
}

#[cfg(test)]
#[path = "buffer_tests.rs"]
mod tests;
