//! The data API: item reads with the cache hit, missed and with Redis down; writes; the
//! list by cursor and search.

use anyhow::Context;

use super::floors::{ItemReads, Service};
use super::replica::{rss_mib, RssPeak};
use super::table::{ms, thousands, Figure};
use super::wrk::{gets, Load, Request, Stats};
use super::{Bench, CONNECTIONS};
use crate::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use crate::load::Workload;
use crate::proxy::TcpProxy;

const DATA: &str = "Data API";

/// Item reads with the cache hit, missed every time, and with Redis down; writes, the
/// list with a cursor and search, each beside its cache-off run or `/live`.
pub(super) async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    let database = TestDatabase::create().await?;
    let redis = format!("redis://{REDIS_ADDR}");
    let db_url = pg_url(PG_ADDR, &database.name);
    let spec = bench.spec("data", db_url.clone(), redis.clone());
    let (replica, _) = bench.replica(&spec).await?;
    let base = replica.url("");
    let workload = match Workload::prepare(&bench.client, &base).await {
        Ok(w) => w,
        Err(e) => {
            bench.figures.push(Figure::missing(
                DATA,
                "every data API figure",
                format!("the data API does not answer: {e:#}"),
            ));
            return Ok(());
        }
    };
    let auth = format!("Bearer {}", workload.token);
    let reads = item_reads(&workload);
    let pages = cursor_pages(&bench.client, &base, &workload.token, 4, 5).await?;
    let list = gets(pages);
    let search = gets(
        workload
            .search_terms
            .iter()
            .map(|t| format!("/api/search?q={t}")),
    );
    // Writes go to another user: reads and searches then see the same 20 items on every
    // replica, and no write bumps the readers' cache generation.
    let writer = Workload::prepare(&bench.client, &base).await?;
    let writer_auth = format!("Bearer {}", writer.token);
    let post: Vec<Request> = vec![(
        "POST",
        "/api/items".into(),
        Some(r#"{"type":"note","title":"bench write","content":"written by the bench","tags":["bench"]}"#.into()),
    )];
    let c = CONNECTIONS;
    bench.after_logins_rss_mib = rss_mib(replica.pid()).unwrap_or(0.0);
    let rss = RssPeak::start(replica.pid());
    let live = bench
        .load(&Load::get(replica.url("/live"), c, bench.duration()))
        .await?;
    let hit = bench.cycle(&base, &reads, &auth, c).await?;
    let list_on = bench.cycle(&base, &list, &auth, c).await?;
    let search_on = bench.cycle(&base, &search, &auth, c).await?;
    let write = bench.cycle(&base, &post, &writer_auth, c).await?;
    bench.loaded_rss_mib = bench.loaded_rss_mib.max(rss.peak_mib());
    drop(rss);
    drop(replica);

    // Cache off: entries expire 1 ms after they are written, so every read misses and
    // goes to PostgreSQL (then writes the entry back, as a miss does).
    let mut off_spec = bench.spec("cache-off", db_url.clone(), redis.clone());
    off_spec.env.push(("CACHE_ITEM_TTL_MS".into(), "1".into()));
    off_spec.env.push(("CACHE_QUERY_TTL_MS".into(), "1".into()));
    let (off_replica, _) = bench.replica(&off_spec).await?;
    let off_base = off_replica.url("");
    let off = bench.cycle(&off_base, &reads, &auth, c).await?;
    let list_off = bench.cycle(&off_base, &list, &auth, c).await?;
    let search_off = bench.cycle(&off_base, &search, &auth, c).await?;
    drop(off_replica);

    // Redis down: the replica reaches Redis through a proxy that refuses everything.
    let cut = TcpProxy::start(REDIS_ADDR.parse()?, false).await;
    cut.set_mode(crate::proxy::Mode::Cut);
    let down_spec = bench.spec("redis-down", db_url, format!("redis://{}", cut.addr));
    let (down_replica, _) = bench.replica(&down_spec).await?;
    let down = bench.cycle(&down_replica.url(""), &reads, &auth, c).await?;
    drop(down_replica);
    drop(cut);

    let rps = |s: &Stats| format!("{} req/s, p99 {} ms", thousands(s.rps), ms(s.p99_ms));
    bench.figures.push(
        Figure::info(DATA, "GET /api/items/{id}, cache hit", hit.text())
            .baseline(format!("cache off: {}", rps(&off)))
            .ratio(hit.rps / off.rps)
            .target("faster than cache off", hit.rps > off.rps),
    );
    // Issue 12's aim once revocation left Redis: a hit at a fifth of a probe's throughput.
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items/{id}, cache hit, against GET /live",
            hit.text(),
        )
        .baseline(format!("GET /live, same build: {}", rps(&live)))
        .ratio(hit.rps / live.rps)
        .target(">= 20 % of /live", hit.rps >= 0.2 * live.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items/{id}, cache off (CACHE_ITEM_TTL_MS=1: every read misses)",
            off.text(),
        )
        .baseline(format!("GET /live, same build: {}", rps(&live)))
        .ratio(off.rps / live.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items/{id}, Redis down (proxy refusing)",
            down.text(),
        )
        .baseline(format!("cache off: {}", rps(&off)))
        .ratio(down.rps / off.rps),
    );
    bench.figures.push(
        Figure::info(DATA, "POST /api/items", write.text())
            .baseline(format!("GET /live: {}", rps(&live)))
            .ratio(write.rps / live.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/items?limit=4, 5 pages by cursor, cache on",
            list_on.text(),
        )
        .baseline(format!("cache off: {}", rps(&list_off)))
        .ratio(list_on.rps / list_off.rps),
    );
    bench.figures.push(
        Figure::info(
            DATA,
            "GET /api/search?q=, 4 terms, cache on",
            search_on.text(),
        )
        .baseline(format!("cache off: {}", rps(&search_off)))
        .ratio(search_on.rps / search_off.rps),
    );
    let items = ItemReads {
        database: &database.name,
        ids: &workload.item_ids,
        reads: &reads,
        auth: &auth,
    };
    let service = Service {
        hit: &hit,
        off: &off,
    };
    if let Err(e) = super::floors::run(bench, &items, service).await {
        bench.figures.push(Figure::missing(
            DATA,
            "the item read path against its floors",
            format!("{e:#}"),
        ));
    }
    Ok(())
}

/// `GET /api/items/{id}` of every item of the workload's user.
pub(super) fn item_reads(workload: &Workload) -> Vec<Request> {
    gets(
        workload
            .item_ids
            .iter()
            .map(|id| format!("/api/items/{id}")),
    )
}

/// The paths of the first `pages` pages of the item list, following `nextCursor`.
async fn cursor_pages(
    client: &reqwest::Client,
    base: &str,
    token: &str,
    limit: usize,
    pages: usize,
) -> anyhow::Result<Vec<String>> {
    let mut paths = vec![format!("/api/items?limit={limit}")];
    while paths.len() < pages {
        let last = paths.last().context("no page")?;
        let page: serde_json::Value = client
            .get(format!("{base}{last}"))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let Some(cursor) = page["nextCursor"].as_str() else {
            break;
        };
        paths.push(format!("/api/items?limit={limit}&cursor={cursor}"));
    }
    Ok(paths)
}
