//! Developer automation for confgate: `cargo xtask bench`, `cargo xtask deb`.
mod bench;
mod deb;
mod notify_bench;
mod worker;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure the daemon's cost against a no-daemon baseline in the same run (root).
    Bench(bench::Args),
    /// The benchmark workload (internal; run by `bench`).
    Worker(worker::Args),
    /// Build the Debian package target/debian/confgate_<version>_amd64.deb (cargo-deb).
    Deb(deb::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().cmd {
        Cmd::Bench(a) => bench::run(a),
        Cmd::Worker(a) => worker::run(a),
        Cmd::Deb(a) => deb::run(a),
    }
}
