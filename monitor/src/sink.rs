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

use crate::{config::StdoutMode, escape, event::Event};

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
}

impl Sink {
    /// Open (append) the events file, creating its directory (mode 0750).
    pub fn open(
        path: &Path,
        mode: StdoutMode,
        tx: broadcast::Sender<Arc<str>>,
    ) -> Result<Sink, SinkError> {
        let io = |source| SinkError::Io {
            path: path.to_owned(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o640)
            .open(path)
            .map_err(io)?;
        let stdout = match mode {
            StdoutMode::Human => Stdout::Human,
            StdoutMode::Json => Stdout::Json,
            StdoutMode::Off => Stdout::Off,
            StdoutMode::Auto if std::io::stdout().is_terminal() => Stdout::Human,
            StdoutMode::Auto => Stdout::Json,
        };
        Ok(Sink {
            path: path.to_owned(),
            file: BufWriter::new(file),
            stdout,
            tx,
        })
    }

    /// Write one event everywhere. An events-file error is returned after the event has
    /// still been delivered to stdout and subscribers.
    pub fn emit(&mut self, event: &Event) -> Result<(), SinkError> {
        let line = serde_json::to_string(event)?;
        let file_result = writeln!(self.file, "{line}");
        match self.stdout {
            Stdout::Human => println!("{}", human(event)),
            Stdout::Json => println!("{line}"),
            Stdout::Off => {}
        }
        // No receiver is not an error: nobody is subscribed.
        let _ = self.tx.send(Arc::from(line));
        file_result.map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Flush buffered lines to the file (called after each batch).
    pub fn flush(&mut self) -> Result<(), SinkError> {
        self.file.flush().map_err(|source| SinkError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

/// One line for people: time, kind, path, writer, session.
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
        "{} {:<10} {}{}{} by {}[{}] uid={}{} ({:?})",
        e.time,
        e.kind.as_str(),
        term(&e.path),
        target,
        result,
        term(&e.comm),
        e.pid,
        e.uid.map(|u| u.to_string()).unwrap_or_else(|| "?".into()),
        session,
        e.source,
    )
}
