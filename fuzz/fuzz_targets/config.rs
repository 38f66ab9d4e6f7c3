//! The configuration parser and `confgate check-config`: any file content yields a
//! configuration or errors with positions, never a panic.
#![no_main]
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use monitor::config::Config;

/// One scratch file per fuzzing process for `check-config`, which reads a path.
fn scratch() -> &'static Path {
    static FILE: OnceLock<PathBuf> = OnceLock::new();
    FILE.get_or_init(|| {
        std::env::temp_dir().join(format!("confgate-fuzz-config-{}.toml", std::process::id()))
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let origin = Path::new("fuzz.toml");
        match Config::parse_all(text, origin) {
            Ok(c) => {
                let _ = c.validate();
                let _ = c.problems();
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "an error result names its problems");
                for e in &errors {
                    let _ = e.to_string();
                }
            }
        }
    }
    // check-config reads raw bytes from a file (also not UTF-8).
    if std::fs::write(scratch(), data).is_ok() {
        let code = monitor::cli::check_config::run_to(
            Some(scratch()),
            &mut std::io::sink(),
            &mut std::io::sink(),
        )
        .expect("writing to a sink");
        assert!(code == 0 || code == 1, "exit status {code}");
    }
});
