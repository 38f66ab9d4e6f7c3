//! A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` in a temporary
//! directory, `pg_ctl start` on a free loopback port (and a socket in that directory), and
//! `pg_ctl stop` when dropped. Never the system's cluster.
//!
//! PostgreSQL refuses to run as root: as root, the cluster's commands run as the `postgres`
//! user (the Debian package's), which then owns the directory. The binaries are taken from
//! `$CONFGATE_PG_BIN`, else the newest `/usr/lib/postgresql/<version>/bin`.
use std::os::unix::fs::{DirBuilderExt, PermissionsExt as _};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A running throwaway cluster; stopped (immediately) and removed when dropped.
pub struct TestCluster {
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    pub port: u16,
}

/// Why a cluster could not be started (tests skip with it).
pub type Missing = String;

fn bin_dir() -> Result<PathBuf, Missing> {
    if let Some(d) = std::env::var_os("CONFGATE_PG_BIN") {
        return Ok(PathBuf::from(d));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| {
            format!("no PostgreSQL in /usr/lib/postgresql ({e}): apt-get install postgresql")
        })?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            Some((v, e.path().join("bin")))
        })
        .filter(|(_, b)| b.join("initdb").exists() && b.join("pg_ctl").exists())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, b)| b)
        .ok_or_else(|| "no initdb/pg_ctl under /usr/lib/postgresql/*/bin".to_owned())
}

fn free_port() -> Result<u16, Missing> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

impl TestCluster {
    /// Initializes and starts a cluster (user `confgate`, trust authentication on
    /// loopback and the socket, database `confgate`).
    pub fn start() -> Result<TestCluster, Missing> {
        let bin = bin_dir()?;
        let user = if nix::unistd::geteuid().is_root() {
            let u = nix::unistd::User::from_name("postgres")
                .map_err(|e| e.to_string())?
                .ok_or("running as root and there is no postgres user to run PostgreSQL as")?;
            Some((u.uid.as_raw(), u.gid.as_raw()))
        } else {
            None
        };
        let dir = std::env::temp_dir().join(format!(
            "confgate-pg-{}-{:016x}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map_err(|e| format!("{}: {e}", dir.display()))?;
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
        }
        let mut c = TestCluster {
            dir,
            bin,
            user,
            port: 0,
        };
        let data = c.data();
        c.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                "confgate",
                "--auth=trust",
                "-E",
                "UTF8",
                "--no-sync",
            ],
        )?;
        c.port = free_port()?;
        c.pg_start()?;
        c.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &c.port.to_string(),
                "-U",
                "confgate",
                "confgate",
            ],
        )?;
        Ok(c)
    }

    fn data(&self) -> String {
        self.dir.as_path().join("data").display().to_string()
    }

    /// The cluster's directory (its data, socket and log are inside).
    pub fn dir(&self) -> &Path {
        self.dir.as_path()
    }

    /// The URL of its `confgate` database over loopback TCP.
    pub fn url(&self) -> String {
        format!(
            "postgres://confgate@127.0.0.1:{}/confgate?sslmode=disable",
            self.port
        )
    }

    /// Creates another database (tests that need an empty one) and returns its URL.
    pub fn create_db(&self, name: &str) -> Result<String, Missing> {
        self.run(
            "createdb",
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "confgate",
                name,
            ],
        )?;
        Ok(format!(
            "postgres://confgate@127.0.0.1:{}/{name}?sslmode=disable",
            self.port
        ))
    }

    fn run(&self, tool: &str, args: &[&str]) -> Result<Output, Missing> {
        let mut cmd = Command::new(self.bin.join(tool));
        cmd.args(args)
            .current_dir(self.dir.as_path())
            .stdin(Stdio::null())
            .env("LC_ALL", "C");
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let out = cmd.output().map_err(|e| format!("{tool}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "{tool} {args:?} failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(out)
    }

    fn pg_start(&self) -> Result<(), Missing> {
        let opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200",
            self.port,
            self.dir.as_path().display()
        );
        let log = self
            .dir
            .as_path()
            .join("postgres.log")
            .display()
            .to_string();
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-o",
                &opts,
                "-l",
                &log,
                "-w",
                "-t",
                "30",
                "start",
            ],
        )
        .map(|_| ())
    }

    /// Stops the server, as a crash would (`-m immediate`: no checkpoint, recovery from
    /// the WAL at the next start) or cleanly (`fast`).
    pub fn stop(&self, immediate: bool) -> Result<(), Missing> {
        let mode = if immediate { "immediate" } else { "fast" };
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", mode, "-w", "-t", "30", "stop"],
        )
        .map(|_| ())
    }

    /// Starts it again on the same port.
    pub fn restart(&self) -> Result<(), Missing> {
        self.pg_start()
    }

    /// Turns TLS on with this certificate and key (PEM), and requires it for loopback TCP
    /// connections (`hostssl` only): a client that does not speak TLS is refused.
    pub fn enable_tls(&self, cert_pem: &str, key_pem: &str) -> Result<(), Missing> {
        let data = PathBuf::from(self.data());
        let write = |name: &str, text: &str| -> Result<(), Missing> {
            let p = data.join(name);
            std::fs::write(&p, text).map_err(|e| format!("{}: {e}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
            if let Some((uid, gid)) = self.user {
                std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(|e| e.to_string())?;
            }
            Ok(())
        };
        write("server.crt", cert_pem)?;
        write("server.key", key_pem)?;
        let append = |name: &str, text: &str| -> Result<(), Missing> {
            use std::io::Write as _;
            let p = data.join(name);
            std::fs::OpenOptions::new()
                .append(true)
                .open(&p)
                .and_then(|mut f| f.write_all(text.as_bytes()))
                .map_err(|e| format!("{}: {e}", p.display()))
        };
        append(
            "postgresql.conf",
            "\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n",
        )?;
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).map_err(|e| e.to_string())?;
        let text: String = text
            .lines()
            .map(|l| {
                if l.starts_with("host ") {
                    format!("hostssl{}\n", &l[4..])
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
        std::fs::write(&hba, text).map_err(|e| e.to_string())?;
        self.run("pg_ctl", &["-D", &self.data(), "reload"])
            .map(|_| ())?;
        // The reload is asynchronous: give the postmaster a moment.
        std::thread::sleep(std::time::Duration::from_millis(500));
        Ok(())
    }

    /// The server's log so far (for a failing test's message).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.as_path().join("postgres.log")).unwrap_or_default()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let _ = self.stop(true);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
