//! Slow clients: hundreds of connections with no account that send a body a byte a second,
//! a request head a byte a second, or nothing, through the balancer and straight at one
//! replica, while the drill's load runs. The balancer buffers bodies and bounds a request
//! (head and body) at 10 s, so nothing it takes in reaches a replica until complete; what
//! goes straight at a replica meets its own bounds (the body read before admission within
//! BODY_TIMEOUT_MS, the header-read timeout, the connection cap). The load must not fail,
//! no slow body may reach a replica through the balancer, and each replica's RSS stays
//! within a bound.

use std::cell::Cell;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

use super::login_storm::status_kib;
use super::shared::{judge, row, sampling};
use super::Drill;
use crate::load::LoadSpec;
use crate::report::Row;

/// How long the slow clients keep coming: past the balancers' 10 s bound, so that each
/// of their cuts is seen.
const ATTACK: Duration = Duration::from_secs(14);
/// Slow connections held open at once through the balancer, and straight at the victim.
const THROUGH_BALANCER: usize = 240;
const AT_REPLICA: usize = 180;
/// They connect over this long, not at once: a real attack ramps too, and the balancer's
/// per-address rate limit is not what this row is about.
const RAMP: Duration = Duration::from_secs(3);
/// Where they come from: an address of their own, as an attacker's would be.
const ATTACKER: &str = "127.0.0.66";
const VICTIM: usize = 0;
/// Growth of a replica's RSS over its value before the attack. Measured: at most 4 MiB
/// (README, "slow clients"), the replica attacked directly included: its connections
/// cost it hyper's buffers, not what the clients send.
const RSS_GROWTH_MIB: u64 = 16;
/// The balancers cut a request whose head and body are not in after 10 s.
const BALANCER_CUT: Duration = Duration::from_secs(12);

const BUDGET: &str = "none: the slow clients are not the load; they hold balancer \
     connections (buffered) or replica connections with no admission slot";

/// What a slow connection sends first, then one more byte each second.
#[derive(Clone, Copy)]
enum Slowness {
    /// A complete head, then the body a byte a second (100 bytes declared).
    Body,
    /// A request line and half a header, then a byte a second: the head never ends.
    Head,
    /// Nothing at all.
    Silent,
}

impl Slowness {
    fn of(slot: usize) -> Self {
        [Self::Body, Self::Head, Self::Silent][slot % 3]
    }

    fn first_bytes(self) -> &'static [u8] {
        match self {
            Self::Body => {
                b"POST /api/auth/login HTTP/1.1\r\nHost: drill\r\nContent-Type: application/json\r\n\
                  Content-Length: 100\r\n\r\n{\"email\":"
            }
            Self::Head => b"GET /api/items HTTP/1.1\r\nHost: drill\r\nX-Slow: ",
            Self::Silent => b"",
        }
    }
}

/// How the slow connections of one target ended.
#[derive(Default)]
struct Held {
    opened: usize,
    /// Time each slow body was held before the server answered or closed.
    bodies_cut: Vec<Duration>,
    /// The same, for heads and silent connections.
    others_cut: Vec<Duration>,
    /// Still open when the attack ended.
    open_at_end: usize,
}

impl Held {
    fn merge(&mut self, other: Held) {
        self.opened += other.opened;
        self.bodies_cut.extend(other.bodies_cut);
        self.others_cut.extend(other.others_cut);
        self.open_at_end += other.open_at_end;
    }

    fn longest(cuts: &[Duration]) -> Duration {
        cuts.iter().copied().max().unwrap_or_default()
    }

    fn cuts(what: &str, cuts: &[Duration]) -> String {
        match cuts {
            [] => format!("no {what} let go of"),
            _ => format!(
                "{} {what} let go of, the last at {:.1} s",
                cuts.len(),
                Self::longest(cuts).as_secs_f64()
            ),
        }
    }

    fn describe(&self) -> String {
        format!(
            "{} opened, {}, {}, {} open at the end",
            self.opened,
            Self::cuts("bodies", &self.bodies_cut),
            Self::cuts("heads or silent", &self.others_cut),
            self.open_at_end
        )
    }
}

pub(super) async fn run(d: &Drill) -> anyhow::Result<Row> {
    let mut pids = Vec::new();
    for i in 0..d.cluster.instances.len() {
        pids.push(d.cluster.identity(&d.client, i).await?.pid);
    }
    let before: Vec<u64> = pids
        .iter()
        .map(|&p| status_kib(p, "VmRSS"))
        .collect::<Result<_, _>>()?;
    let timeouts_before = d.metric_per_replica(BODY_TIMEOUTS).await;

    let balancer: SocketAddr = format!("127.0.0.1:{}", d.balancer.port).parse()?;
    let victim = &d.cluster.instances[VICTIM];
    let replica: SocketAddr = format!("{}:{}", victim.host, victim.port).parse()?;
    let until = Instant::now() + ATTACK;
    let load = d.load(LoadSpec {
        max_duration: ATTACK,
        ..LoadSpec::default()
    });
    let peaks = Cell::new(before.clone());
    let (through, direct) = sampling(
        Duration::from_millis(100),
        async {
            tokio::join!(
                attack(balancer, THROUGH_BALANCER, until),
                attack(replica, AT_REPLICA, until)
            )
        },
        || async {
            let mut now = peaks.take();
            for (peak, &pid) in now.iter_mut().zip(&pids) {
                if let Ok(rss) = status_kib(pid, "VmRSS") {
                    *peak = (*peak).max(rss);
                }
            }
            peaks.set(now);
        },
    )
    .await;
    let outcomes = load.finish().await?;
    let timeouts_after = d.metric_per_replica(BODY_TIMEOUTS).await;

    let mut r = row("slow clients", d, &outcomes);
    judge(&mut r, &outcomes, BUDGET, |_| false);
    d.check_writes(&outcomes, &mut r.problems).await?;
    let rss = check_rss(&before, &peaks.take(), &mut r.problems);
    // The victim gets slow bodies of its own; the others only what the balancer passed on.
    for (i, (b, a)) in timeouts_before.iter().zip(&timeouts_after).enumerate() {
        if i != VICTIM && a > b {
            r.problems.push(format!(
                "{} slow bodies reached {} through the balancer (its body timeout answered \
                 them): the balancer does not buffer bodies",
                a - b,
                d.cluster.instances[i].name
            ));
        }
    }
    let slowest_cut = Held::longest(&through.bodies_cut).max(Held::longest(&through.others_cut));
    if slowest_cut > BALANCER_CUT || through.bodies_cut.is_empty() {
        r.problems.push(format!(
            "the balancer held a slow request {:.1} s ({} bodies cut): no 10 s bound",
            slowest_cut.as_secs_f64(),
            through.bodies_cut.len()
        ));
    }
    r.notes = format!(
        "RSS MiB {rss}; through {}: {}; at {}: {}",
        d.balancer.kind.name(),
        through.describe(),
        victim.name,
        direct.describe()
    );
    Ok(r)
}

/// `lb_requests_total` of the requests whose body did not arrive in time (408).
const BODY_TIMEOUTS: &str = "lb_requests_total{path=\"body_timeout\"}";

/// Notes each replica whose RSS grew past the bound; says before and peak, in MiB.
fn check_rss(before: &[u64], peaks: &[u64], problems: &mut Vec<String>) -> String {
    let mib = |kib: u64| kib as f64 / 1024.0;
    for (i, (b, p)) in before.iter().zip(peaks).enumerate() {
        if p.saturating_sub(*b) > RSS_GROWTH_MIB * 1024 {
            problems.push(format!(
                "replica {} grew from {:.0} to {:.0} MiB, over the {RSS_GROWTH_MIB} MiB bound",
                i + 1,
                mib(*b),
                mib(*p)
            ));
        }
    }
    let shown: Vec<String> = before
        .iter()
        .zip(peaks)
        .map(|(b, p)| format!("{:.0}->{:.0}", mib(*b), mib(*p)))
        .collect();
    shown.join(" / ")
}

/// `slots` slow connections to `target` until `until`: each one cut is opened again.
async fn attack(target: SocketAddr, slots: usize, until: Instant) -> Held {
    let ramp_step = RAMP / slots as u32;
    let slot_runs = (0..slots).map(|slot| async move {
        tokio::time::sleep(ramp_step * slot as u32).await;
        let mut held = Held::default();
        while Instant::now() < until {
            let Ok(stream) = connect(target).await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            held.opened += 1;
            let kind = Slowness::of(slot);
            let opened = Instant::now();
            match hold(stream, kind, until).await {
                Some(()) => match kind {
                    Slowness::Body => held.bodies_cut.push(opened.elapsed()),
                    _ => held.others_cut.push(opened.elapsed()),
                },
                None => held.open_at_end += 1,
            }
        }
        held
    });
    let mut all = Held::default();
    for held in futures::future::join_all(slot_runs).await {
        all.merge(held);
    }
    all
}

async fn connect(target: SocketAddr) -> anyhow::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(format!("{ATTACKER}:0").parse()?)?;
    socket.connect(target).await.context("connect")
}

/// Sends `kind`'s bytes slowly until the server answers or closes (`Some`), or `until`.
async fn hold(mut stream: TcpStream, kind: Slowness, until: Instant) -> Option<()> {
    if stream.write_all(kind.first_bytes()).await.is_err() {
        return Some(());
    }
    let mut drip = tokio::time::interval(Duration::from_secs(1));
    drip.tick().await;
    let mut answer = [0u8; 256];
    loop {
        tokio::select! {
            read = stream.read(&mut answer) => {
                // An answer (408, 413, 400) or a close: the server let go of it.
                let _ = read;
                return Some(());
            }
            _ = drip.tick(), if !matches!(kind, Slowness::Silent) => {
                if stream.write_all(b"1").await.is_err() {
                    return Some(());
                }
            }
            _ = tokio::time::sleep_until(until.into()) => return None,
        }
    }
}
