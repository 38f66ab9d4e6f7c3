//! This host's identity as confgate reports it.

/// The host name (`gethostname`), or `"localhost"` if it cannot be read or is not UTF-8.
pub fn host_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}
