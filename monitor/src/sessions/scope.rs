//! The check of a session's declared scope (`confgate run --scope`, `[[detect]] scope`),
//! here so that the configuration check needs nothing of the gate (which enforces it:
//! `gate::session::scope`).
use globset::GlobBuilder;

/// Most globs a session may declare.
pub const MAX_SCOPE_GLOBS: usize = 64;
/// Longest glob, in bytes.
pub const MAX_SCOPE_GLOB_BYTES: usize = 4096;

/// Checks what a caller declares as a session's scope: at most [`MAX_SCOPE_GLOBS`] absolute
/// globs of at most [`MAX_SCOPE_GLOB_BYTES`] bytes, no control characters, each compiling.
pub fn validate(globs: &[String]) -> Result<(), String> {
    if globs.len() > MAX_SCOPE_GLOBS {
        return Err(format!(
            "at most {MAX_SCOPE_GLOBS} scope globs ({} given)",
            globs.len()
        ));
    }
    for g in globs {
        let shown = crate::sessions::escape_text(g);
        if g.len() > MAX_SCOPE_GLOB_BYTES {
            return Err(format!(
                "scope glob longer than {MAX_SCOPE_GLOB_BYTES} bytes"
            ));
        }
        if !g.starts_with('/') {
            return Err(format!("scope glob {shown:?} is not an absolute path"));
        }
        if g.chars().any(char::is_control) {
            return Err(format!("scope glob {shown:?} contains a control character"));
        }
        if g.ends_with('/') {
            return Err(format!("scope glob {shown:?} ends with `/` (use `DIR/**`)"));
        }
        if g.split('/').any(|c| c == ".." || c == ".") {
            return Err(format!(
                "scope glob {shown:?} contains a `.` or `..` component"
            ));
        }
        glob(g).map_err(|e| format!("scope glob {shown:?}: {e}"))?;
    }
    Ok(())
}

/// A scope glob compiled as the gate matches it (`*` within one path component).
pub fn glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .backslash_escape(true)
        .build()
}
