//! Cache-aside for item reads: `GET /api/items/{id}` (TTL `CACHE_ITEM_TTL_MS`), and list
//! and search pages (TTL `CACHE_QUERY_TTL_MS`). Keys hold the user, so one user's entry
//! can never answer another's request. An item entry follows the item's own generation;
//! list and search pages follow the user's, which every write of the user bumps (see
//! [`super::stamped`]).

use std::future::Future;

use serde::de::DeserializeOwned;
use serde::Serialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::stamped::{self, Lookup};
use super::Cache;
use crate::db::{items, Database};
use crate::model::item::Item;

/// Larger entries are not cached. Each hit of one would move it from Redis and parse it
/// whole, and a few users' large pages could crowd everyone else's entries out of Redis's
/// memory; PostgreSQL serves them instead.
pub const ENTRY_MAX_BYTES: usize = 256 * 1024;

pub fn item_key(cache: &Cache, user: Uuid, id: Uuid) -> String {
    cache.key(format_args!("item:{user}:{id}"))
}

/// One item, from Redis when fresh, else from PostgreSQL (then cached).
pub async fn get_item(
    cache: &Cache,
    db: &Database,
    user: Uuid,
    id: Uuid,
) -> Result<Option<Item>, sqlx::Error> {
    let key = item_key(cache, user, id);
    let generation = stamped::item_generation_key(cache, user, id);
    read_through(
        cache,
        &generation,
        &key,
        cache.item_ttl,
        items::get(db, user, id),
    )
    .await
}

/// A list or search page, cached under a hash of its parameters. `load` computes it on a
/// miss; its error, whatever its type, is the caller's.
pub async fn query<T, E, P, F>(
    cache: &Cache,
    user: Uuid,
    kind: &str,
    params: &P,
    load: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    P: Serialize,
    F: Future<Output = Result<T, E>>,
{
    let digest = Sha256::digest(serde_json::to_vec(params).unwrap_or_default());
    let key = cache.key(format_args!("{kind}:{user}:{}", hex(&digest)));
    let generation = stamped::user_generation_key(cache, user);
    read_through(cache, &generation, &key, cache.query_ttl, load).await
}

async fn read_through<T, E, F>(
    cache: &Cache,
    generation: &str,
    key: &str,
    ttl: std::time::Duration,
    load: F,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = Result<T, E>>,
{
    let stamp = match stamped::get(cache, generation, key).await {
        Lookup::Hit(payload) => match serde_json::from_str(&payload) {
            Ok(value) => return Ok(value),
            // Written by an older release with another shape: treat as a miss.
            Err(_) => None,
        },
        Lookup::Miss(stamp) => Some(stamp),
        Lookup::Unavailable => None,
    };
    let value = load.await?;
    if let Some(stamp) = stamp {
        match serde_json::to_string(&value) {
            Ok(payload) if payload.len() <= ENTRY_MAX_BYTES => {
                stamped::fill(cache, key, &stamp, &payload, ttl).await;
            }
            _ => {}
        }
    }
    Ok(value)
}

/// After a committed write, before answering: the written items and every list and search
/// page of `user` go stale.
pub async fn invalidate(cache: &Cache, user: Uuid, ids: &[Uuid]) {
    let keys: Vec<String> = ids.iter().map(|id| item_key(cache, user, *id)).collect();
    let generations: Vec<String> = std::iter::once(stamped::user_generation_key(cache, user))
        .chain(
            ids.iter()
                .map(|id| stamped::item_generation_key(cache, user, *id)),
        )
        .collect();
    stamped::invalidate(cache, &generations, &keys).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
