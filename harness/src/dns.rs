//! A real DNS server (dnsmasq) that publishes a service name, as Docker's embedded DNS does
//! for a compose service: one A record per running replica. The harness rewrites the
//! records and signals dnsmasq to read them again, as Docker does when a container starts
//! or leaves.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context};

use crate::process::require_program;
use crate::process::{send_signal, wait_until, ManagedChild};

pub struct Dns {
    /// Where it answers: port 53, because the system resolver (Prometheus' `dns_sd_configs`)
    /// knows no other port.
    pub addr: SocketAddr,
    hosts: PathBuf,
    child: ManagedChild,
}

impl Dns {
    /// dnsmasq on `ip`:53, answering only from its hosts file (no upstream, no
    /// `/etc/hosts`) with a zero TTL, so every client sees a change at its next query.
    pub async fn start(ip: Ipv4Addr, dir: &Path) -> anyhow::Result<Self> {
        require_program("dnsmasq", "apt-get install dnsmasq")?;
        std::fs::create_dir_all(dir)?;
        let hosts = dir.join("hosts");
        std::fs::write(&hosts, "")?;
        let mut command = Command::new("dnsmasq");
        command
            .arg("--keep-in-foreground")
            .arg("--conf-file=/dev/null")
            .arg("--port=53")
            .arg(format!("--listen-address={ip}"))
            .arg("--bind-interfaces")
            .arg("--no-resolv")
            .arg("--no-hosts")
            .arg("--local-ttl=0")
            // Root keeps the hosts file it rereads on SIGHUP readable wherever it lies.
            .arg("--user=root")
            .arg(format!("--addn-hosts={}", hosts.display()))
            .arg(format!("--pid-file={}", dir.join("dnsmasq.pid").display()))
            .arg("--log-facility=-");
        let child = ManagedChild::spawn("dnsmasq", command, dir.join("dnsmasq.log"))?;
        let dns = Self {
            addr: SocketAddr::new(ip.into(), 53),
            hosts,
            child,
        };
        let answers = wait_until(Duration::from_secs(5), || async {
            dns.lookup("database-api").is_ok()
        })
        .await;
        if !answers {
            bail!(
                "dnsmasq does not answer on {}:\n{}",
                dns.addr,
                dns.child.logs()
            );
        }
        Ok(dns)
    }

    /// Publishes `name` with exactly `addresses` and waits until dnsmasq answers so.
    pub async fn publish(&self, name: &str, addresses: &[String]) -> anyhow::Result<()> {
        let text: String = addresses.iter().map(|a| format!("{a} {name}\n")).collect();
        std::fs::write(&self.hosts, text)?;
        // SIGHUP: dnsmasq reads its hosts files again (and clears its cache).
        send_signal(self.child.pid(), "HUP");
        let mut wanted: Vec<Ipv4Addr> = addresses
            .iter()
            .map(|a| a.parse())
            .collect::<Result<_, _>>()?;
        wanted.sort();
        let published = wait_until(Duration::from_secs(5), || async {
            self.lookup(name).is_ok_and(|mut got| {
                got.sort();
                got == wanted
            })
        })
        .await;
        if !published {
            bail!("dnsmasq did not publish {name} = {addresses:?}");
        }
        Ok(())
    }

    /// The A records of `name`, by a query of our own over UDP.
    pub fn lookup(&self, name: &str) -> anyhow::Result<Vec<Ipv4Addr>> {
        let socket = UdpSocket::bind("127.0.0.1:0")?;
        socket.set_read_timeout(Some(Duration::from_millis(500)))?;
        socket.send_to(&query(name), self.addr)?;
        let mut buffer = [0u8; 1500];
        let size = socket.recv(&mut buffer).context("no DNS answer")?;
        Ok(a_records(&buffer[..size]))
    }

    pub fn logs(&self) -> String {
        self.child.logs()
    }
}

/// A recursive query for `name`'s A records, id 0x5ca1.
fn query(name: &str) -> Vec<u8> {
    let mut packet = vec![0x5c, 0xa1, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0];
    for label in name.split('.') {
        packet.push(label.len() as u8);
        packet.extend_from_slice(label.as_bytes());
    }
    packet.extend_from_slice(&[0, 0, 1, 0, 1]);
    packet
}

/// The addresses of the answer section's A records (dnsmasq compresses every answer's
/// name to a two-byte pointer).
fn a_records(packet: &[u8]) -> Vec<Ipv4Addr> {
    let count = |at: usize| {
        packet
            .get(at..at + 2)
            .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
    };
    // Past the header and the one question: its name, type and class.
    let mut at = 12;
    while let Some(&len) = packet.get(at) {
        at += 1;
        if len == 0 {
            break;
        }
        at += len as usize;
    }
    at += 4;
    let mut found = Vec::new();
    for _ in 0..count(6) {
        // Name pointer (2), type (2), class (2), TTL (4), data length (2), data.
        let kind = count(at + 2);
        let length = count(at + 10) as usize;
        let data = at + 12;
        if kind == 1 && length == 4 {
            if let Some(b) = packet.get(data..data + 4) {
                found.push(Ipv4Addr::new(b[0], b[1], b[2], b[3]));
            }
        }
        at = data + length;
    }
    found
}
