//! The daemon's TOML configuration (`/etc/confgate/config.toml`).
//!
//! Every field has a default, so an empty file (or none at all, at the default path) is a
//! working configuration; `deploy/config.toml` spells every default out. Unknown keys are
//! rejected (`deny_unknown_fields`) so that a typo is an error rather than a silently
//! ignored setting. Parsing and checking are separate: [`Config::parse`] turns TOML into a
//! [`Config`] and then runs [`Config::validate`], whose errors name the offending field
//! (`watch.paths[2]`) and, when the value comes from a file, its line and column.
//!
//! The files: `schema.rs` (the serde types), `defaults.rs` (what an empty file means, the
//! built-in detection rules), `validate.rs` (the checks), [`toml_check`] (the TOML span
//! checker the approval service's configuration uses too), [`watch`] (the watch set built
//! from `[watch]`), [`client`] and [`addr`] (reaching the approval service).
use std::io;
use std::path::Path;

pub mod addr;
pub mod client;
mod defaults;
pub mod iac;
mod schema;
pub mod toml_check;
mod validate;
pub mod watch;

pub use defaults::default_detect_rules;
pub use schema::{
    ApprovalMode, ApprovalSection, BaselineSection, Config, CorrelationSection, DaemonSection,
    DetectRule, DriftSection, KernelSection, OutputFormat, OutputSection, StdoutMode, WatchSection,
};
pub(crate) use toml_check::{Checker, decode_text, parse_checked, read_text};
pub use toml_check::{ConfigError, line_column};
pub(crate) use validate::{build_glob, check_watch, split_project_root};

/// Where the daemon and `confgate check-config` look when no path is given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/confgate/config.toml";

/// Longest watched prefix the kernel trie takes, in bytes (trailing `/` included).
///
/// The trie key holds `monitor_common::PREFIX_KEY_LEN` (256) bytes; one is kept spare so
/// that a directory prefix is always strictly shorter than the key the kernel compares.
pub const MAX_KERNEL_PREFIX: usize = 255;

/// Longest `comm` (task name) the kernel keeps, without its NUL.
pub const MAX_COMM: usize = 15;

impl Config {
    /// Read, parse and validate the file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_text(path)?;
        Config::parse(&text, path)
    }

    /// Like [`Config::load`], but reports every validation problem (see
    /// [`Config::parse_all`]).
    pub fn load_all(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let text = read_text(path).map_err(|e| vec![e])?;
        Config::parse_all(&text, path)
    }

    /// Like [`Config::load`], but a missing file is fine when the path was not given
    /// explicitly (the default path): the defaults are used and that is logged.
    pub fn load_or_default(path: &Path, is_explicit: bool) -> Result<Config, ConfigError> {
        match Config::load(path) {
            Err(ConfigError::Io { cause: source, .. })
                if !is_explicit && source.kind() == io::ErrorKind::NotFound =>
            {
                tracing::info!(path = %path.display(), "no configuration file, using the defaults");
                Ok(Config::default())
            }
            other => other,
        }
    }

    /// Parse and validate `text`; `origin` names it in errors.
    pub fn parse(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        Config::parse_all(text, origin).map_err(|mut errors| errors.swap_remove(0))
    }

    /// Like [`Config::parse`], but reports every validation problem, not just the first
    /// (a parse error stops at the first, as TOML parsing does). Never returns an empty
    /// error list.
    pub fn parse_all(text: &str, origin: &Path) -> Result<Config, Vec<ConfigError>> {
        parse_checked(text, origin, Config::problems)
    }
}

#[cfg(test)]
mod tests;
