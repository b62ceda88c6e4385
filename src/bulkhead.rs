//! A bulkhead: at most `permits` pieces of work at once, at most `max_queued` more waiting,
//! and none waiting longer than `max_wait`. Beyond that, work is refused at once.
//!
//! Why refuse instead of queueing without bound: a queue only hides overload until every
//! request in it has waited past its client's timeout, and then the replica spends all its
//! time on answers nobody reads (congestion collapse). Refusing early and cheaply keeps
//! the work that is admitted fast, and a refused client can retry elsewhere.
//!
//! One type serves both uses: the data API's admission control and the password-hashing
//! bulkhead. It knows nothing of HTTP; callers turn [`Rejected`] into their own answer.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Why work was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Rejected {
    #[error("queue full")]
    QueueFull,
    #[error("waited too long in the queue")]
    Timeout,
}

impl Rejected {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Rejected::QueueFull => "queue_full",
            Rejected::Timeout => "queue_timeout",
        }
    }
}

#[derive(Debug)]
pub struct Bulkhead {
    permits: Arc<Semaphore>,
    capacity: usize,
    queued: AtomicUsize,
    max_queued: usize,
    max_wait: Duration,
}

/// Leaves the queue when dropped, whether the wait ended in a permit, a timeout, or the
/// caller giving up (a client that disconnected drops its request future).
struct QueueSlot<'a>(&'a AtomicUsize);

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Bulkhead {
    pub fn new(permits: usize, max_queued: usize, max_wait: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits)),
            capacity: permits,
            queued: AtomicUsize::new(0),
            max_queued,
            max_wait,
        }
    }

    /// A permit, held until dropped. Owned, so it can travel with the work (say, into a
    /// blocking task that outlives the request that started it).
    pub async fn enter(&self) -> Result<OwnedSemaphorePermit, Rejected> {
        if let Some(permit) = self.try_enter() {
            return Ok(permit);
        }
        let ahead = self.queued.fetch_add(1, Ordering::AcqRel);
        let _slot = QueueSlot(&self.queued);
        if ahead >= self.max_queued {
            return Err(Rejected::QueueFull);
        }
        match tokio::time::timeout(self.max_wait, self.permits.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            // The semaphore is never closed; treat it as full if it ever is.
            Ok(Err(_)) => Err(Rejected::QueueFull),
            Err(_) => Err(Rejected::Timeout),
        }
    }

    /// A permit if one is free now, without queueing: the path every request takes
    /// while the replica is not saturated.
    pub fn try_enter(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Whether [`Bulkhead::enter`] would refuse at once for want of room in the queue:
    /// lets a caller refuse without building anything to wait with.
    pub fn queue_is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.max_queued
    }

    /// Work running now.
    pub fn in_use(&self) -> usize {
        self.capacity - self.permits.available_permits()
    }

    /// Work waiting for a permit now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire).min(self.max_queued)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn admits_up_to_capacity_then_queues_then_refuses() {
        let bulkhead = Arc::new(Bulkhead::new(2, 1, Duration::from_millis(100)));
        let a = bulkhead.enter().await.expect("first permit");
        let _b = bulkhead.enter().await.expect("second permit");
        assert_eq!(bulkhead.in_use(), 2);

        let waiting = tokio::spawn({
            let bulkhead = bulkhead.clone();
            async move { bulkhead.enter().await.map(|_| ()) }
        });
        tokio::task::yield_now().await;
        assert_eq!(bulkhead.queued(), 1);
        // The queue holds one: the next is refused without waiting.
        assert_eq!(bulkhead.enter().await.err(), Some(Rejected::QueueFull));

        drop(a);
        assert_eq!(waiting.await.expect("task"), Ok(()));
        assert_eq!(bulkhead.queued(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_queued_caller_gives_up_after_max_wait() {
        let bulkhead = Bulkhead::new(1, 4, Duration::from_millis(100));
        let _held = bulkhead.enter().await.expect("permit");
        assert_eq!(bulkhead.enter().await.err(), Some(Rejected::Timeout));
        assert_eq!(bulkhead.queued(), 0, "the timed-out caller left the queue");
    }
}
