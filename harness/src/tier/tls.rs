//! Dependencies that speak only TLS, made at run time: a CA and a server certificate
//! (for `127.0.0.1` and `localhost`), a private PostgreSQL cluster whose `pg_hba.conf`
//! admits TLS connections only, and a private `redis-server` with its plain port closed.
//!
//! Each server lives in a directory of its own under the system's temporary directory,
//! listens on loopback on a port chosen at run time, and is stopped by its PID on drop.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::postgres::{initdb, postgres_bin, postgres_dir, PgAccount, PgServer};
use super::server::{stop, wait_for_log, ServerDir};
use crate::database::TestDatabase;
use crate::process::{free_port, ManagedChild};
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

/// A private PostgreSQL cluster with `ssl=on` and `hostssl` lines only.
pub struct TlsPostgres {
    server: PgServer,
    _dir: ServerDir,
}

impl TlsPostgres {
    pub fn start(certificates: &Certificates) -> anyhow::Result<Self> {
        let account = PgAccount::find()?;
        let dir = postgres_dir("tls-postgres")?;
        let data = dir.path().join("data");
        initdb(&postgres_bin()?, &data)?;
        // The server reads its key as its own user, and only from a file no one else reads.
        let (cert, key) = (data.join("server.crt"), data.join("server.key"));
        std::fs::copy(&certificates.server_cert, &cert)?;
        std::fs::copy(&certificates.server_key, &key)?;
        for file in [&cert, &key] {
            account.own(file)?;
            std::fs::set_permissions(file, std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
        }
        // TCP only with TLS; the Unix socket (for the test's own administration) is trusted.
        std::fs::write(
            data.join("pg_hba.conf"),
            "local all all trust\nhostssl all all 127.0.0.1/32 trust\n",
        )?;
        let server = PgServer::builder("tls-postgres", &data)?
            .setting("ssl", "on")
            .start()?;
        Ok(Self { server, _dir: dir })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A database of its own for one test, created (and later dropped) through the socket.
    pub async fn create_database(&self) -> anyhow::Result<TestDatabase> {
        TestDatabase::create_on(&self.server.socket_url("postgres"), |name| {
            self.server.socket_url(name)
        })
        .await
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
