//! The open-loop generator: requests leave at the offered rate whether or not earlier ones
//! came back, as the requests of many independent clients do. A closed loop (the load
//! workers) slows down with the cluster and so never offers it more than it can take;
//! overload can only be offered open loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{pick, Answer, Batches, Kind, Outcome, Workload};

/// What to offer, bounded in time and in requests.
#[derive(Debug, Clone)]
pub struct Offer {
    /// Requests per second, all clients together.
    pub rate: f64,
    pub duration: Duration,
    /// Shares of reads, writes, searches and batches, as in `LoadSpec`.
    pub mix: [u32; 4],
    pub batches: Batches,
    /// Requests waiting for their answer beyond which the generator sends no more (and
    /// counts the ones it skipped): the bound on the generator's own memory.
    pub max_outstanding: usize,
}

/// What an offer gave.
#[derive(Debug)]
pub struct Offered {
    /// Every request sent, answered or timed out (10 s), in the order they were sent.
    pub outcomes: Vec<Outcome>,
    /// Requests due but not sent because `max_outstanding` were waiting.
    pub skipped: usize,
    /// From the first request due to the last one sent.
    pub sending: Duration,
}

impl Offered {
    /// The rate actually offered: below the asked one when the generator fell behind.
    pub fn rate(&self) -> f64 {
        self.outcomes.len() as f64 / self.sending.as_secs_f64().max(1e-3)
    }
}

/// Offers `offer.rate` requests a second for `offer.duration`, request `i` from
/// `clients[i % clients.len()]`, and waits for every answer.
pub async fn offer(
    clients: &[reqwest::Client],
    base: &str,
    workload: &Workload,
    offer: &Offer,
) -> anyhow::Result<Offered> {
    anyhow::ensure!(!clients.is_empty(), "no client to offer load with");
    let count = (offer.rate * offer.duration.as_secs_f64()).ceil() as usize;
    let workload = Arc::new(workload.clone());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let (mut outcomes, mut skipped) = (Vec::with_capacity(count), 0);
    for n in 0..count {
        let due = started + Duration::from_secs_f64(n as f64 / offer.rate);
        tokio::time::sleep_until(due.into()).await;
        while let Some(done) = tasks.try_join_next() {
            outcomes.push(done?);
        }
        if tasks.len() >= offer.max_outstanding {
            skipped += 1;
            continue;
        }
        let kind = pick(&offer.mix, n);
        let key = (kind == Kind::Write).then(|| uuid::Uuid::new_v4().to_string());
        let request = workload.request(
            &clients[n % clients.len()],
            base,
            kind,
            n,
            key.as_deref(),
            (offer.batches, n % clients.len()),
        );
        tasks.spawn(async move {
            let sent = Instant::now();
            let response = request.send().await;
            let answer = Answer::of(&response);
            // Read to the end: the latency a client sees, and the connection goes back
            // to its pool instead of being closed.
            if let Ok(response) = response {
                let _ = response.bytes().await;
            }
            Outcome {
                idempotency_key: key,
                ..Outcome::once(kind, sent - started, sent.elapsed(), answer)
            }
        });
    }
    let sending = started.elapsed();
    while let Some(done) = tasks.join_next().await {
        outcomes.push(done?);
    }
    outcomes.sort_by_key(|o| o.started);
    Ok(Offered {
        outcomes,
        skipped,
        sending,
    })
}
