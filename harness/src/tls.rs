//! Dependencies that speak only TLS, made at run time: a CA and a server certificate
//! (for `127.0.0.1` and `localhost`), a private PostgreSQL cluster whose `pg_hba.conf`
//! admits TLS connections only, and a private `redis-server` with its plain port closed.
//!
//! Each server lives in a directory of its own under the system's temporary directory,
//! listens on loopback on a port chosen at run time, and is stopped by its PID on drop.

use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::database::TestDatabase;
use crate::process::{free_port, is_alive, send_signal, ManagedChild};
use anyhow::{bail, Context};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

/// PEM files of one run: the CA that signed the servers' certificate, and another CA that
/// did not (what a misconfigured replica is given).
pub struct Certificates {
    pub ca: PathBuf,
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
}

fn ca(name: &str) -> anyhow::Result<(rcgen::Certificate, KeyPair)> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let key = KeyPair::generate()?;
    Ok((params.self_signed(&key)?, key))
}

impl Certificates {
    /// Writes a fresh CA, server certificate and key, and an unrelated CA into `dir`.
    pub fn generate(dir: &Path) -> anyhow::Result<Self> {
        let (ca_cert, ca_key) = ca("cartae test CA")?;
        let (other_cert, _) = ca("cartae unrelated CA")?;
        let mut params = CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, "cartae test server");
        let server_key = KeyPair::generate()?;
        let server_cert = params.signed_by(&server_key, &ca_cert, &ca_key)?;
        let certificates = Self {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        };
        std::fs::write(&certificates.ca, ca_cert.pem())?;
        std::fs::write(&certificates.other_ca, other_cert.pem())?;
        std::fs::write(&certificates.server_cert, server_cert.pem())?;
        std::fs::write(&certificates.server_key, server_key.serialize_pem())?;
        Ok(certificates)
    }
}

/// A fresh directory for one server, removed on drop.
pub struct ServerDir(PathBuf);

impl ServerDir {
    pub fn new(what: &str) -> anyhow::Result<Self> {
        let path =
            std::env::temp_dir().join(format!("cartae-{what}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir(&path)?;
        Ok(Self(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ServerDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Waits until `child`'s log contains `line`, or fails with the log.
pub fn wait_for_log(child: &mut ManagedChild, line: &str, within: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    while !child.logs().contains(line) {
        if child.has_exited() || Instant::now() > deadline {
            bail!("{} did not start:\n{}", child.name, child.logs());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops a server as its operator would (a signal it handles), then waits for it to go.
pub fn stop(child: &ManagedChild, signal: &str) {
    send_signal(child.pid(), signal);
    let deadline = Instant::now() + Duration::from_secs(10);
    while is_alive(child.pid()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The uid and gid of the `postgres` account: PostgreSQL refuses to run as root.
pub fn postgres_account() -> anyhow::Result<(u32, u32)> {
    let id = |flag: &str| -> anyhow::Result<u32> {
        let out = Command::new("id").args([flag, "postgres"]).output()?;
        if !out.status.success() {
            bail!("no postgres account: install PostgreSQL (scripts/services.sh does)");
        }
        Ok(String::from_utf8(out.stdout)?.trim().parse()?)
    };
    Ok((id("-u")?, id("-g")?))
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
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .context("no PostgreSQL version in /usr/lib/postgresql")
}

/// A new cluster in `data` (whose parent `postgres` owns): user `postgres`, trust.
pub fn initdb(bin: &Path, data: &Path) -> anyhow::Result<()> {
    let (uid, gid) = postgres_account()?;
    let initdb = Command::new(bin.join("initdb"))
        .args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
            "-D",
        ])
        .arg(data)
        .uid(uid)
        .gid(gid)
        .output()?;
    if !initdb.status.success() {
        bail!("initdb failed: {}", String::from_utf8_lossy(&initdb.stderr));
    }
    Ok(())
}

/// A private PostgreSQL cluster with `ssl=on` and `hostssl` lines only.
pub struct TlsPostgres {
    pub port: u16,
    child: ManagedChild,
    dir: ServerDir,
}

impl TlsPostgres {
    pub fn start(certificates: &Certificates) -> anyhow::Result<Self> {
        let (uid, gid) = postgres_account()?;
        let bin = postgres_bin()?;
        let dir = ServerDir::new("tls-postgres")?;
        let data = dir.path().join("data");
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
        initdb(&bin, &data)?;
        // The server reads its key as its own user, and only from a file no one else reads.
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::copy(&certificates.server_cert, &cert)?;
        std::fs::copy(&certificates.server_key, &key)?;
        for file in [&cert, &key] {
            std::os::unix::fs::chown(file, Some(uid), Some(gid))?;
            std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        // TCP only with TLS; the Unix socket (for the test's own administration) is trusted.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        let port = free_port();
        let mut command = Command::new(bin.join("postgres"));
        command
            .arg("-D")
            .arg(&data)
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            .arg("-c")
            .arg(format!("unix_socket_directories={}", dir.path().display()))
            .args([
                "-c",
                "ssl=on",
                "-c",
                "fsync=off",
                "-c",
                "max_connections=60",
            ])
            .uid(uid)
            .gid(gid);
        let mut child =
            ManagedChild::spawn("tls-postgres", command, dir.path().join("postgres.log"))?;
        wait_for_log(
            &mut child,
            "ready to accept connections",
            Duration::from_secs(30),
        )?;
        Ok(Self { port, child, dir })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// A URL to `database` through the Unix socket, for the test's own checks.
    fn socket_url(&self, database: &str) -> String {
        format!(
            "postgres://postgres@localhost/{database}?host={}&port={}",
            self.dir.path().display(),
            self.port
        )
    }

    /// A database of its own for one test, created (and later dropped) through the socket.
    pub async fn create_database(&self) -> anyhow::Result<TestDatabase> {
        TestDatabase::create_on(&self.socket_url("postgres"), |name| self.socket_url(name)).await
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        // Fast shutdown: no orphaned backends or shared memory left behind.
        stop(&self.child, "INT");
    }
}

/// A private `redis-server` listening with `--tls-port` only (`--port 0`).
pub struct TlsRedis {
    pub port: u16,
    child: ManagedChild,
    _dir: ServerDir,
}

impl TlsRedis {
    pub fn start(certificates: &Certificates) -> anyhow::Result<Self> {
        let dir = ServerDir::new("tls-redis")?;
        let port = free_port();
        let mut command = Command::new("redis-server");
        command
            .args(["--port", "0", "--bind", "127.0.0.1", "--tls-port"])
            .arg(port.to_string())
            .arg("--tls-cert-file")
            .arg(&certificates.server_cert)
            .arg("--tls-key-file")
            .arg(&certificates.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&certificates.ca)
            .args([
                "--tls-auth-clients",
                "no",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(dir.path());
        let mut child = ManagedChild::spawn("tls-redis", command, dir.path().join("redis.log"))?;
        wait_for_log(
            &mut child,
            "Ready to accept connections",
            Duration::from_secs(20),
        )?;
        Ok(Self {
            port,
            child,
            _dir: dir,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }
}

impl Drop for TlsRedis {
    fn drop(&mut self) {
        stop(&self.child, "TERM");
    }
}

/// One run's CA, and a PostgreSQL and a Redis that present a certificate it signed.
pub struct TlsServers {
    pub certificates: Certificates,
    pub postgres: TlsPostgres,
    pub redis: TlsRedis,
    _dir: ServerDir,
}

impl TlsServers {
    pub fn start() -> anyhow::Result<Self> {
        let dir = ServerDir::new("tls-certs")?;
        let certificates = Certificates::generate(dir.path())?;
        Ok(Self {
            postgres: TlsPostgres::start(&certificates)?,
            redis: TlsRedis::start(&certificates)?,
            certificates,
            _dir: dir,
        })
    }

    /// The CA's path, or the unrelated CA's, as a replica's configuration names it.
    pub fn ca(&self, signed_the_servers: bool) -> String {
        let path = match signed_the_servers {
            true => &self.certificates.ca,
            false => &self.certificates.other_ca,
        };
        path.to_string_lossy().into_owned()
    }
}

/// A URL to `database` over TCP at `addr` (the server, or a proxy in front of it), with
/// `params` (e.g. `sslmode=verify-full&sslrootcert=...`).
pub fn postgres_url(addr: SocketAddr, database: &str, params: &str) -> String {
    format!("postgres://postgres@{addr}/{database}?{params}")
}

pub fn redis_url(addr: SocketAddr) -> String {
    format!("rediss://{addr}/0")
}
