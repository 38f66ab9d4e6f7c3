//! Where events go: the NDJSON events file, stdout (human or JSON), and the broadcast
//! channel behind `SubscribeEvents`.
use std::{
    fs::{File, OpenOptions},
    io::{BufWriter, IsTerminal, Write},
    os::unix::fs::OpenOptionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use thiserror::Error;
use tokio::sync::broadcast;

use crate::{
    config::StdoutMode,
    event::escape,
    event::{Event, Source},
};

#[derive(Debug, Error)]
pub enum SinkError {
    #[error("events file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("serializing an event: {0}")]
    Json(#[from] serde_json::Error),
}

/// Bytes of events buffered before a write to the file (it is also flushed after every
/// batch): a busy pipeline makes one write per few hundred events, not one per ten.
const FILE_BUFFER: usize = 256 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stdout {
    Human,
    Json,
    Off,
}

pub struct Sink {
    path: PathBuf,
    file: BufWriter<File>,
    stdout: Stdout,
    tx: broadcast::Sender<Arc<str>>,
    /// The line being written, reused from event to event.
    line: Vec<u8>,
}

impl Sink {
    /// Open (append) the events file, creating its directory (mode 0750).
    pub fn open(
        path: &Path,
        mode: StdoutMode,
        tx: broadcast::Sender<Arc<str>>,
    ) -> Result<Sink, SinkError> {
        let file = open_file(path)?;
        let stdout = match mode {
            StdoutMode::Human => Stdout::Human,
            StdoutMode::Json => Stdout::Json,
            StdoutMode::Off => Stdout::Off,
            StdoutMode::Auto => auto_stdout(
                std::io::stdout().is_terminal(),
                crate::os::journal::stdout_is_journal(),
            ),
        };
        if mode == StdoutMode::Auto && stdout == Stdout::Off {
            tracing::info!(events_file = %path.display(), "stdout is the journal: events are not printed there (the events file is the record)");
        }
        Ok(Sink {
            path: path.to_owned(),
            file: BufWriter::with_capacity(FILE_BUFFER, file),
            stdout,
            tx,
            line: Vec::new(),
        })
    }

    /// Write one event everywhere. An events-file error is returned after the event has
    /// still been delivered to stdout and subscribers.
    pub fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        self.line.clear();
        serde_json::to_writer(&mut self.line, event)?;
        self.line.push(b'\n');
        let file_result = self.file.write_all(&self.line);
        // serde_json writes UTF-8 (checked only when text is needed, never copied for it).
        let text = || std::str::from_utf8(&self.line[..self.line.len() - 1]).unwrap_or_default();
        let printed = match self.stdout {
            Stdout::Human => writeln!(std::io::stdout(), "{}", human(event)),
            Stdout::Json => writeln!(std::io::stdout(), "{}", text()),
            Stdout::Off => Ok(()),
        };
        if let Err(e) = printed {
            // A closed or failing stdout (a pipe whose reader left) must not stop the
            // daemon: the events file and subscribers still get every event.
            tracing::warn!(error = %e, "cannot write events to stdout; stdout output turned off");
            self.stdout = Stdout::Off;
        }
        // No receiver is not an error: nobody is subscribed (then nothing is copied).
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::from(text()));
        }
        file_result.map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Write one event the daemon made itself (a `drift_detected`; see
    /// `baseline::events`) everywhere, as [`Sink::emit`] does: its JSON line to the file,
    /// to stdout (or its human line) and to subscribers.
    pub fn emit_line(&mut self, json: &str, human: &str) -> Result<(), SinkError> {
        self.line.clear();
        self.line.extend_from_slice(json.as_bytes());
        self.line.push(b'\n');
        let file_result = self.file.write_all(&self.line);
        let printed = match self.stdout {
            Stdout::Human => writeln!(std::io::stdout(), "{human}"),
            Stdout::Json => writeln!(std::io::stdout(), "{json}"),
            Stdout::Off => Ok(()),
        };
        if let Err(e) = printed {
            tracing::warn!(error = %e, "cannot write events to stdout; stdout output turned off");
            self.stdout = Stdout::Off;
        }
        if self.tx.receiver_count() > 0 {
            let _ = self.tx.send(Arc::from(json));
        }
        file_result.map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Writes the buffered lines to the file open now, then writes to `file` (opened by
    /// [`open_file`] at `path`) from the next event on: a configuration reload, or the
    /// events file renamed away by logrotate (`create`) and a new one opened. Lines already
    /// written stay in the old file; none is lost between the two. A failed flush of the
    /// old file is returned after the switch (its lines are counted lost by the caller).
    pub fn reopen(&mut self, path: &Path, file: File) -> Result<(), SinkError> {
        let flushed = self.flush();
        let old = std::mem::replace(&mut self.file, BufWriter::with_capacity(FILE_BUFFER, file));
        // The buffer is empty after a successful flush; after a failed one its lines
        // cannot be written anywhere else (into_parts drops them without another write).
        let _ = old.into_parts();
        self.path = path.to_owned();
        flushed
    }

    /// The events file written now.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Flush buffered lines to the file (called after each batch).
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.file.flush().map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// Opens (append, mode 0640 when created) the events file `path`, creating its directory
/// (mode 0750).
pub fn open_file(path: &Path) -> Result<File, SinkError> {
    let io = |source| SinkError::Io {
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt as _;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)
            .map_err(io)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o640)
        .open(path)
        .map_err(io)
}

/// One line for people: time, kind, path, writer, session.
/// What `stdout = "auto"` prints: human lines on a terminal; nothing when stdout is the
/// journal (under systemd the events file is the record: NDJSON in the journal would store
/// every event twice); NDJSON otherwise (a pipe, a file).
fn auto_stdout(terminal: bool, journal: bool) -> Stdout {
    match (terminal, journal) {
        (true, _) => Stdout::Human,
        (false, true) => Stdout::Off,
        (false, false) => Stdout::Json,
    }
}

pub fn human(e: &Event) -> String {
    let term = |s: &str| escape::for_terminal(s.as_bytes());
    let target = e
        .target
        .as_deref()
        .map(|t| format!(" -> {}", term(t)))
        .unwrap_or_default();
    let session = match &e.session {
        Some(s) => format!(" session={}#{}", term(&s.agent), s.id),
        None => String::new(),
    };
    let result = match e.result {
        Some(r) if r < 0 => format!(" FAILED({r})"),
        _ => String::new(),
    };
    format!(
        "{} {:<10} {}{}{} by {}[{}] uid={}{} ({})",
        e.time,
        e.kind.as_str(),
        term(&e.path),
        target,
        result,
        term(&e.comm),
        e.pid,
        e.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
        session,
        match e.source {
            Source::Ebpf => "ebpf",
            Source::Fanotify => "fanotify",
            Source::Both => "both",
            Source::Supervisor => "supervisor",
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Kind, SCHEMA_VERSION, SessionRef};

    fn event(path: &str) -> Event {
        Event {
            v: SCHEMA_VERSION,
            time: "2026-11-22T00:00:00Z".into(),
            time_ns: 0,
            id: "x-1".into(),
            kind: Kind::Rename,
            path: path.into(),
            target: Some("/etc/app.conf".into()),
            result: Some(-17),
            pid: 7,
            tid: 7,
            ppid: Some(1),
            uid: Some(0),
            comm: "mv".into(),
            exe: None,
            argv: Vec::new().into(),
            cwd: None,
            ancestors: Vec::new().into(),
            session: Some(
                SessionRef {
                    id: 3,
                    agent: "claude".into(),
                    reason: None,
                    root_pid: 7,
                }
                .into(),
            ),
            source: Source::Both,
            details: None,
        }
    }

    #[test]
    fn auto_prints_nothing_to_the_journal() {
        assert!(matches!(auto_stdout(true, false), Stdout::Human));
        assert!(matches!(auto_stdout(false, true), Stdout::Off));
        assert!(matches!(auto_stdout(false, false), Stdout::Json));
    }

    #[test]
    fn human_line_is_one_line_whatever_the_name() {
        let line = human(&event("/etc/evil\nFAKE 2026 create /etc/shadow"));
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("/etc/evil\\nFAKE"), "{line}");
        assert!(
            line.contains("-> /etc/app.conf FAILED(-17) by mv[7] uid=0 session=claude#3 (both)"),
            "{line}"
        );
    }

    #[test]
    fn json_line_round_trips_odd_bytes() {
        let e = event("/etc/a\nb\\xff");
        let line = serde_json::to_string(&e).expect("serialize");
        assert!(!line.contains('\n'), "NDJSON: one line per event");
        let back: serde_json::Value = serde_json::from_str(&line).expect("parse");
        assert_eq!(back["path"], "/etc/a\nb\\xff");
        assert_eq!(back["source"], "both");
    }
}
