//! One way to run a private PostgreSQL: the account it runs as, the binaries of the newest
//! installed version, `initdb`, and [`PgServer`], a server on a loopback port chosen at
//! run time, stopped by its PID on drop. The TLS server, the archiving server, the
//! primary/standby pair and Patroni's nodes differ only in their settings.

use std::ffi::OsStr;
use std::fmt::Display;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use super::server::{stop, wait_for_log, ServerDir};
use crate::process::{free_port, is_alive, ManagedChild};

/// Who a private PostgreSQL runs as: `postgres` when the tests run as root (initdb,
/// PostgreSQL and Patroni refuse root), else the tests' own user.
#[derive(Debug, Clone, Copy)]
pub struct PgAccount {
    pub uid: u32,
    pub gid: u32,
}

impl PgAccount {
    pub fn find() -> anyhow::Result<Self> {
        if id(&["-u"])? != 0 {
            return Ok(Self {
                uid: id(&["-u"])?,
                gid: id(&["-g"])?,
            });
        }
        Ok(Self {
            uid: id(&["-u", "postgres"])?,
            gid: id(&["-g", "postgres"])?,
        })
    }

    /// Gives `path` to the account.
    pub fn own(&self, path: &Path) -> anyhow::Result<()> {
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("chown {} to the PostgreSQL account", path.display()))
    }

    /// `program`, to be run as the account.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut command = Command::new(program);
        command.uid(self.uid).gid(self.gid);
        command
    }
}

fn id(args: &[&str]) -> anyhow::Result<u32> {
    let out = Command::new("id").args(args).output().context("run id")?;
    if !out.status.success() {
        bail!("no postgres account: install PostgreSQL (scripts/services.sh does)");
    }
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .with_context(|| format!("id {args:?} gave no number"))
}

/// The newest installed PostgreSQL's binaries (Debian's layout).
pub fn postgres_bin() -> anyhow::Result<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("PostgreSQL server binaries not found in /usr/lib/postgresql")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let version = e.file_name().to_str()?.parse().ok()?;
            Some((version, e.path().join("bin")))
        })
        .filter(|(_, bin)| bin.join("postgres").is_file())
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL server in /usr/lib/postgresql/*/bin: install postgresql")
}

/// A fresh folder the account owns, for a cluster's data directories, sockets and logs.
pub fn postgres_dir(what: &str) -> anyhow::Result<ServerDir> {
    let dir = ServerDir::new(what)?;
    PgAccount::find()?.own(dir.path())?;
    Ok(dir)
}

/// Runs a PostgreSQL program of `bin` as the account; fails with its output.
pub fn run_as_postgres(bin: &Path, program: &str, args: &[&OsStr]) -> anyhow::Result<()> {
    let out = PgAccount::find()?
        .command(bin.join(program))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "{program} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// A new cluster in `data`, whose parent the account owns: user `postgres`, trust.
pub fn initdb(bin: &Path, data: &Path) -> anyhow::Result<()> {
    let args = [
        "-U",
        "postgres",
        "--auth=trust",
        "-E",
        "UTF8",
        "--no-sync",
        "-D",
    ];
    let mut all: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
    all.push(data.as_os_str());
    run_as_postgres(bin, "initdb", &all)
}

/// How to start one server: its data directory, settings and environment.
pub struct PgServerBuilder {
    /// Chosen before the start, for settings and environments that name it.
    pub port: u16,
    bin: PathBuf,
    name: String,
    data: PathBuf,
    /// The Unix socket's directory and the log's: the data directory's parent.
    run_dir: PathBuf,
    settings: Vec<String>,
    env: Vec<(String, String)>,
    ready: &'static str,
    within: Duration,
}

impl PgServerBuilder {
    /// `-c key=value`, after (so over) the defaults: loopback only, the socket beside the
    /// data directory, `fsync=off`, `max_connections=60`.
    pub fn setting(mut self, key: &str, value: impl Display) -> Self {
        self.settings.push(format!("{key}={value}"));
        self
    }

    /// Variables the server and its children (an `archive_command`) see.
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// The log line that means started (a standby says it differently).
    pub fn ready_when(mut self, line: &'static str, within: Duration) -> Self {
        self.ready = line;
        self.within = within;
        self
    }

    pub fn start(self) -> anyhow::Result<PgServer> {
        let port = self.port;
        let mut command = PgAccount::find()?.command(self.bin.join("postgres"));
        command
            .arg("-D")
            .arg(&self.data)
            .args(["-p", &port.to_string()])
            .current_dir(&self.run_dir)
            .envs(self.env);
        let defaults = [
            "listen_addresses=127.0.0.1".to_owned(),
            format!("unix_socket_directories={}", self.run_dir.display()),
            "fsync=off".to_owned(),
            "max_connections=60".to_owned(),
        ];
        for setting in defaults.iter().chain(&self.settings) {
            command.arg("-c").arg(setting);
        }
        let log = self.run_dir.join(format!("{}.log", self.name));
        let mut child = ManagedChild::spawn(&self.name, command, log)?;
        wait_for_log(&mut child, self.ready, self.within)?;
        Ok(PgServer {
            port,
            data: self.data,
            run_dir: self.run_dir,
            child: Some(child),
        })
    }
}

/// A private PostgreSQL server, stopped (fast shutdown) on drop.
pub struct PgServer {
    pub port: u16,
    pub data: PathBuf,
    run_dir: PathBuf,
    child: Option<ManagedChild>,
}

impl PgServer {
    /// A server for the cluster in `data` (whose parent the account owns), with the newest
    /// installed binaries.
    pub fn builder(name: &str, data: &Path) -> anyhow::Result<PgServerBuilder> {
        let run_dir = data
            .parent()
            .context("a data directory has a parent")?
            .to_owned();
        Ok(PgServerBuilder {
            port: free_port(),
            bin: postgres_bin()?,
            name: name.to_owned(),
            data: data.to_owned(),
            run_dir,
            settings: Vec::new(),
            env: Vec::new(),
            ready: "ready to accept connections",
            within: Duration::from_secs(30),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A URL to `database` over TCP, without TLS.
    pub fn url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{database}?sslmode=disable",
            self.port
        )
    }

    /// A URL to `database` through the Unix socket (trusted even where TCP needs TLS).
    pub fn socket_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}&port={}",
            self.run_dir.display(),
            self.port
        )
    }

    /// As a crash would: immediate shutdown ends every session at once.
    pub fn crash(&mut self) {
        if let Some(child) = self.child.take() {
            stop(&child, "QUIT");
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.as_ref().is_some_and(|c| is_alive(c.pid()))
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        // Fast shutdown: no orphaned backends or shared memory left behind.
        if let Some(child) = self.child.take() {
            stop(&child, "INT");
        }
    }
}
