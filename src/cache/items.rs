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
use crate::api::ApiResult;
use crate::db::items;
use crate::model::item::Item;
use crate::state::AppState;

pub fn item_key(state: &AppState, user: Uuid, id: Uuid) -> String {
    state.cache.key(format_args!("item:{user}:{id}"))
}

/// One item, from Redis when fresh, else from PostgreSQL (then cached).
pub async fn get_item(state: &AppState, user: Uuid, id: Uuid) -> ApiResult<Option<Item>> {
    let key = item_key(state, user, id);
    let generation = stamped::item_generation_key(&state.cache, user, id);
    let ttl = state.settings.cache.item_ttl;
    read_through(state, &generation, &key, ttl, async {
        Ok(items::get(&state.db, user, id).await?)
    })
    .await
}

/// A list or search page, cached under a hash of its parameters.
pub async fn query<T, P, F>(
    state: &AppState,
    user: Uuid,
    kind: &str,
    params: &P,
    load: F,
) -> ApiResult<T>
where
    T: Serialize + DeserializeOwned,
    P: Serialize,
    F: Future<Output = ApiResult<T>>,
{
    let digest = Sha256::digest(serde_json::to_vec(params).unwrap_or_default());
    let key = state
        .cache
        .key(format_args!("{kind}:{user}:{}", hex(&digest)));
    let generation = stamped::user_generation_key(&state.cache, user);
    let ttl = state.settings.cache.query_ttl;
    read_through(state, &generation, &key, ttl, load).await
}

async fn read_through<T, F>(
    state: &AppState,
    generation: &str,
    key: &str,
    ttl: std::time::Duration,
    load: F,
) -> ApiResult<T>
where
    T: Serialize + DeserializeOwned,
    F: Future<Output = ApiResult<T>>,
{
    let stamp = match stamped::get(&state.cache, &state.db, generation, key).await {
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
        if let Ok(payload) = serde_json::to_string(&value) {
            stamped::fill(&state.cache, key, &stamp, &payload, ttl).await;
        }
    }
    Ok(value)
}

/// After a committed write, before answering: the written items and every list and search
/// page of `user` go stale.
pub async fn invalidate(state: &AppState, user: Uuid, ids: &[Uuid]) {
    let keys: Vec<String> = ids.iter().map(|id| item_key(state, user, *id)).collect();
    let generations: Vec<String> =
        std::iter::once(stamped::user_generation_key(&state.cache, user))
            .chain(
                ids.iter()
                    .map(|id| stamped::item_generation_key(&state.cache, user, *id)),
            )
            .collect();
    stamped::invalidate(&state.cache, &generations, &keys).await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
