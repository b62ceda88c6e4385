//! At most a few writes of one user at once.
//!
//! Admission control bounds the requests of the whole replica, not whose they are: one
//! account sending a dozen 1,000-item batches at once held every pooled connection, and
//! the other users' reads waited out the acquire timeout and got 503. Here each user's
//! writes take a slot of their own first; beyond `MAX_WRITES_PER_USER` they wait, without
//! a connection, until one of that user's writes ends or the request's deadline passes.
//! Waiting rather than refusing keeps the answers a client already handles: a burst of
//! one user's writes is only spread out, and other users' requests are not touched.
//!
//! Only users with a write in flight or waiting are remembered, so the map is bounded by
//! the requests admitted.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

pub struct UserWrites {
    per_user: usize,
    users: Mutex<HashMap<Uuid, Writer>>,
}

/// One user's slots, and how many of their requests hold or wait for one.
struct Writer {
    slots: Arc<Semaphore>,
    requests: usize,
}

/// A write slot, held until dropped.
pub struct WriteSlot<'a> {
    _permit: Option<OwnedSemaphorePermit>,
    _registered: Registered<'a>,
}

/// Counts a request in its user's entry until dropped, cancelled while waiting included,
/// and forgets the user with their last request.
struct Registered<'a> {
    owner: &'a UserWrites,
    user: Uuid,
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        let mut users = self.owner.users();
        if let Some(writer) = users.get_mut(&self.user) {
            writer.requests -= 1;
            if writer.requests == 0 {
                users.remove(&self.user);
            }
        }
    }
}

impl UserWrites {
    pub fn new(per_user: usize) -> Self {
        Self {
            per_user,
            users: Mutex::default(),
        }
    }

    /// Waits for one of `user`'s write slots.
    pub async fn enter(&self, user: Uuid) -> WriteSlot<'_> {
        let slots = {
            let mut users = self.users();
            let writer = users.entry(user).or_insert_with(|| Writer {
                slots: Arc::new(Semaphore::new(self.per_user)),
                requests: 0,
            });
            writer.requests += 1;
            writer.slots.clone()
        };
        let registered = Registered { owner: self, user };
        WriteSlot {
            // The semaphore is never closed; were it, the write would go ahead unbounded.
            _permit: slots.acquire_owned().await.ok(),
            _registered: registered,
        }
    }

    /// Users with a write in flight or waiting.
    pub fn users_writing(&self) -> usize {
        self.users().len()
    }

    /// No code panics while holding the lock; were one to, the counts are still sound.
    fn users(&self) -> MutexGuard<'_, HashMap<Uuid, Writer>> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_user_beyond_their_slots_waits_and_others_do_not() {
        let writes = UserWrites::new(2);
        let (busy, other) = (Uuid::new_v4(), Uuid::new_v4());
        let first = writes.enter(busy).await;
        let _second = writes.enter(busy).await;
        let third = writes.enter(busy);
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut third)
                .await
                .is_err(),
            "the third waits"
        );
        let _others = writes.enter(other).await;
        drop(first);
        let _third = third.await;
        assert_eq!(writes.users_writing(), 2);
    }

    #[tokio::test]
    async fn users_are_forgotten_with_their_last_write_even_one_given_up_while_waiting() {
        let writes = UserWrites::new(1);
        let user = Uuid::new_v4();
        let held = writes.enter(user).await;
        let gave_up = tokio::time::timeout(Duration::from_millis(10), writes.enter(user)).await;
        assert!(gave_up.is_err());
        drop(held);
        assert_eq!(writes.users_writing(), 0);
    }
}
