//! `confgate-confine --socket PATH --session ID -- COMMAND...`: the setuid-root helper that
//! confines a `confgate run` session and execs its command (see
//! `monitor::gate::session::confine`). Not meant to be run by hand.
use std::io::Write as _;
use std::process::ExitCode;

use monitor::gate::session::confine;

fn main() -> ExitCode {
    let failure = match confine::parse_args(std::env::args_os().skip(1)) {
        Ok(args) => confine::confine_and_exec(&args),
        Err(f) => f,
    };
    let _ = writeln!(std::io::stderr(), "confgate-confine: {}", failure.message);
    ExitCode::from(u8::try_from(failure.code).unwrap_or(1))
}
