//! Scenario 9: a job a user recognises: unpack and build a real C project (zlib, from
//! Debian's source package, fetched once by apt into `target/bench-cache/`) with
//! `./configure && make -j<cores>`, wall time per build. Daemon off; on (outside any
//! session); on, inside a session (`confgate run`, confined where the build can); and
//! with `gate.fanotify = "always"` (builds that have it): every exec of the build opens
//! `/etc/ld.so.cache`, which the host-wide permission gate makes wait for the daemon.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, ensure};
use serde_json::{Value, json};

use super::{
    scenario::{Cx, Daemon, Mode, Row, Scenario},
    stats::Summary,
    workload,
};

/// The source package and the tarball's name prefix.
const PACKAGE: &str = "zlib";

#[derive(Default)]
pub struct MacroBuild {
    tarball: Option<PathBuf>,
    /// Why there is no tarball.
    missing: Option<String>,
    /// (mode, inside a session) -> seconds per build.
    secs: BTreeMap<(Mode, bool), Vec<f64>>,
    confined: bool,
}

fn cache_dir() -> PathBuf {
    super::target_dir().join("bench-cache")
}

/// The upstream tarball of `PACKAGE`'s Debian source package: cached, else fetched with
/// apt (a private deb-src list and state directory: the host's apt setup is not touched).
fn fetch_tarball() -> anyhow::Result<PathBuf> {
    let dir = cache_dir();
    let find = |dir: &Path| -> Option<PathBuf> {
        std::fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{PACKAGE}_")) && n.contains(".orig.tar.")
                })
            })
    };
    if let Some(p) = find(&dir) {
        return Ok(p);
    }
    let lists = dir.join("apt-lists");
    std::fs::create_dir_all(lists.join("partial"))?;
    let suite = std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VERSION_CODENAME=").map(str::to_string))
        })
        .unwrap_or_else(|| "bookworm".into());
    let list = dir.join("sources.list");
    std::fs::write(
        &list,
        format!("deb-src http://deb.debian.org/debian {suite} main\n"),
    )?;
    let apt = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("apt-get")
            .arg("-q")
            .arg(format!("-oDir::Etc::SourceList={}", list.display()))
            .arg("-oDir::Etc::SourceParts=/dev/null")
            .arg(format!("-oDir::State::Lists={}", lists.display()))
            .args(args)
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("apt-get")?;
        ensure!(st.success(), "apt-get {args:?}: {st}");
        Ok(())
    };
    apt(&["update"])?;
    apt(&["source", "--download-only", PACKAGE])?;
    find(&dir).context("apt-get source left no upstream tarball")
}

impl MacroBuild {
    fn modes_of(&self) -> [(Mode, bool); 4] {
        [
            (Mode::Off, false),
            (Mode::On, false),
            (Mode::On, true),
            (Mode::FanAlways, false),
        ]
    }

    fn summary(&self, m: Mode, inside: bool) -> Summary {
        Summary::of(self.secs.get(&(m, inside)).cloned().unwrap_or_default())
    }

    fn build_once(&self, cx: &Cx, tarball: &Path, session: Option<&Daemon>) -> anyhow::Result<f64> {
        let work = cx.dir(false, "macro-build")?;
        let script = format!(
            "set -e; tar xf {tar:?} -C {work:?}; cd {work:?}/{PACKAGE}-*; \
             ./configure >/dev/null 2>&1; make -j{cores} >/dev/null 2>&1",
            tar = tarball.display().to_string(),
            work = work.display().to_string(),
            cores = std::thread::available_parallelism().map_or(2, |n| n.get()),
        );
        let mut cmd = match session {
            Some(d) => workload::session_command(cx, d, false),
            None => Command::new("sh"),
        };
        if session.is_some() {
            cmd.arg("sh");
        }
        cmd.args(["-c", &script]);
        let t = Instant::now();
        let out = cmd.output().context("spawning the build")?;
        let secs = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&work);
        ensure!(
            out.status.success(),
            "build failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(secs)
    }
}

impl Scenario for MacroBuild {
    fn id(&self) -> u32 {
        9
    }

    fn key(&self) -> &'static str {
        "scenario9_macro_build_zlib"
    }

    fn modes(&self) -> &'static [Mode] {
        &[Mode::Off, Mode::On, Mode::FanAlways]
    }

    fn daemon_toml(&mut self, _cx: &Cx) -> Option<String> {
        // Fetched before any daemon runs (apt's own opens are not part of a measurement).
        match fetch_tarball() {
            Ok(p) => self.tarball = Some(p),
            Err(e) => {
                eprintln!("scenario 9: no {PACKAGE} source tarball: {e:#}");
                self.missing = Some(format!("{e:#}"));
            }
        }
        None
    }

    fn measure(
        &mut self,
        cx: &Cx,
        _round: usize,
        mode: Mode,
        daemon: Option<&Daemon>,
    ) -> anyhow::Result<()> {
        self.confined = cx.features.confine;
        let Some(tarball) = self.tarball.clone() else {
            return Ok(());
        };
        if let Some(d) = daemon
            && mode == Mode::On
        {
            // Outside sessions means without the marks of earlier scenarios' sessions.
            d.wait_marks_removed()?;
        }
        let s = self.build_once(cx, &tarball, None)?;
        self.secs.entry((mode, false)).or_default().push(s);
        if mode == Mode::On
            && let Some(d) = daemon
        {
            let s = self.build_once(cx, &tarball, Some(d))?;
            self.secs.entry((mode, true)).or_default().push(s);
        }
        Ok(())
    }

    fn results(&self) -> Value {
        let mut out = json!({
            "package": PACKAGE,
            "tarball": self.tarball.as_ref().map(|p| p.display().to_string()),
            "missing": self.missing,
            "confined": self.confined,
        });
        for (m, inside) in self.modes_of() {
            if self.secs.contains_key(&(m, inside)) {
                let key = format!("{}{}", m.name(), if inside { "_in_session" } else { "" });
                out[key] = json!(self.summary(m, inside));
            }
        }
        out
    }

    fn rows(&self) -> Vec<Row> {
        let name = self
            .tarball
            .as_ref()
            .and_then(|p| p.file_name())
            .map_or_else(|| PACKAGE.to_string(), |n| n.to_string_lossy().into_owned());
        if let Some(why) = &self.missing {
            return vec![Row {
                scenario: "9 unpack + build zlib".into(),
                measure: format!("not measured: {why}"),
                ..Row::default()
            }];
        }
        let off = self.summary(Mode::Off, false);
        let session = if self.confined {
            "confined session"
        } else {
            "session (not confined: no helper)"
        };
        let mut rows = Vec::new();
        for (m, inside, what) in [
            (Mode::On, false, "on, outside sessions".to_string()),
            (Mode::On, true, format!("on, inside a {session}")),
            (
                Mode::FanAlways,
                false,
                "gate.fanotify = always, outside sessions".to_string(),
            ),
        ] {
            let s = self.summary(m, inside);
            if s.is_empty() {
                continue;
            }
            rows.push(Row {
                scenario: format!("9 unpack + build {name}: {what}"),
                measure: "tar x; ./configure; make -j (s per build, wall)".into(),
                off: off.show("s", 2),
                on: s.show("s", 2),
                ratio: format!("{:.3}", s.median / off.median),
                ..Row::default()
            });
        }
        rows
    }

    fn check(&self) -> anyhow::Result<()> {
        if self.tarball.is_some() {
            ensure!(
                !self.summary(Mode::Off, false).is_empty(),
                "scenario 9: no build measured"
            );
        }
        Ok(())
    }
}
