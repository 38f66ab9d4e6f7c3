//! `cargo xtask deb`: the Debian package `confgate_<version>_amd64.deb`, made by cargo-deb
//! from files staged in `target/deb-staging` (see `[package.metadata.deb]` in
//! monitor/Cargo.toml): the binaries, the units with their installed paths, man pages
//! (clap_mangen: `confgate(8)` and one page per subcommand) and shell completions
//! (clap_complete: bash, zsh, fish) generated from the CLI's clap Command, and the alert
//! rules when `deploy/confgate.rules.yml` exists.
//!
//! By default the debug binaries are packaged (built if missing): CI tests the package's
//! layout and maintainer scripts without paying for a release build. `--release` packages
//! an optimized build, for shipping.
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, bail};

#[derive(clap::Args)]
pub struct Args {
    /// Package the release build (`cargo build --release`) instead of the debug build.
    #[arg(long)]
    release: bool,
    /// Package the binaries already built, without running cargo build.
    #[arg(long)]
    no_build: bool,
}

/// Where the staged files go (the asset paths in monitor/Cargo.toml name it).
const STAGING: &str = "deb-staging";

pub fn run(a: Args) -> anyhow::Result<()> {
    let ws = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| ws.join("target"));
    if target != ws.join("target") {
        bail!("the package's asset paths name <workspace>/target: unset CARGO_TARGET_DIR");
    }
    let profile = if a.release { "release" } else { "debug" };
    if !a.no_build {
        let mut build = Command::new(env!("CARGO"));
        build
            .args(["build", "-p", "monitor", "--bins"])
            .current_dir(&ws);
        if a.release {
            build.arg("--release");
        }
        run_ok(&mut build)?;
    }
    let staging = target.join(STAGING);
    let _ = fs::remove_dir_all(&staging);
    for d in ["bin", "units", "man", "completions", "share"] {
        fs::create_dir_all(staging.join(d))?;
    }
    for bin in ["confgate", "confgate-confine"] {
        let from = target.join(profile).join(bin);
        let to = staging.join("bin").join(bin);
        fs::copy(&from, &to).with_context(|| format!("{} (build it first)", from.display()))?;
        // Debug information is not shipped (the debug build's is most of its size).
        run_ok(Command::new("strip").arg("--strip-debug").arg(&to))?;
    }
    for unit in ["confgate.service", "confgate-approver.service"] {
        let text = fs::read_to_string(ws.join("deploy").join(unit))?;
        // The units name the manual install's path; the package installs into /usr/bin.
        let text = text.replace("/usr/local/bin/confgate", "/usr/bin/confgate");
        fs::write(staging.join("units").join(unit), text)?;
    }
    let cmd = monitor::cli::args::command();
    man_pages(&cmd, &staging.join("man"))?;
    completions(&cmd, &staging.join("completions"))?;
    fs::copy(
        ws.join("deploy/approver.toml"),
        staging.join("share/approver.toml"),
    )?;
    let rules = ws.join("deploy/confgate.rules.yml");
    if rules.exists() {
        fs::copy(&rules, staging.join("share/confgate.rules.yml"))?;
    } else {
        println!("xtask deb: no deploy/confgate.rules.yml: the package has no alert rules");
    }
    let out = target.join("debian");
    fs::create_dir_all(&out)?;
    run_ok(
        Command::new(env!("CARGO"))
            .args(["deb", "-p", "monitor", "--no-build", "--no-strip", "--fast"])
            .arg("--output")
            .arg(&out)
            .current_dir(&ws),
    )?;
    Ok(())
}

/// `confgate.8` and `confgate-<sub>[-<sub>].8` for every subcommand, gzipped.
fn man_pages(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    fn page(cmd: clap::Command, name: String, dir: &Path) -> anyhow::Result<()> {
        // clap names are &'static str (its `string` feature is off): a few pages' names.
        let cmd = cmd.name(&*Box::leak(name.clone().into_boxed_str()));
        let mut buf = Vec::new();
        clap_mangen::Man::new(cmd.clone())
            .section("8")
            .render(&mut buf)?;
        let file = dir.join(format!("{name}.8"));
        fs::write(&file, buf)?;
        run_ok(Command::new("gzip").args(["-9nf"]).arg(&file))?;
        for sub in cmd.get_subcommands() {
            if sub.get_name() == "help" {
                continue;
            }
            page(sub.clone(), format!("{name}-{}", sub.get_name()), dir)?;
        }
        Ok(())
    }
    let mut cmd = cmd.clone();
    cmd.build();
    page(cmd, "confgate".into(), dir)
}

fn completions(cmd: &clap::Command, dir: &Path) -> anyhow::Result<()> {
    use clap_complete::Shell;
    for (shell, file) in [
        (Shell::Bash, "confgate"),
        (Shell::Zsh, "_confgate"),
        (Shell::Fish, "confgate.fish"),
    ] {
        let mut buf = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "confgate", &mut buf);
        fs::write(dir.join(file), buf)?;
    }
    Ok(())
}

fn run_ok(c: &mut Command) -> anyhow::Result<()> {
    let status = c
        .status()
        .with_context(|| format!("running {:?}", c.get_program()))?;
    if !status.success() {
        bail!("{c:?} failed: {status}");
    }
    Ok(())
}
