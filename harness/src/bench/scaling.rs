//! Scaling: list-page and search latency as one user's items grow, and keyset pages
//! against what OFFSET would cost.

use std::time::{Duration, Instant};

use anyhow::bail;

use super::replica::LOAD_CPU;
use super::table::{ms, thousands, Figure};
use super::wrk::{Load, Stats};
use super::Bench;
use crate::database::{pg_url, TestDatabase, PG_ADDR, REDIS_ADDR};
use crate::proxy::TcpProxy;

const SCALING: &str = "Scaling";

/// Rows for one user's items with `generate_series`: `g` from `from` to `to`, one second
/// apart, a title term in 0.1 % of them ("quarterly") and a body term in 1 % ("roadmap").
const INSERT_ITEMS: &str = r#"
INSERT INTO items (id, user_id, type, title, content, tags, created_at, updated_at)
SELECT gen_random_uuid(), u.id,
       (ARRAY['note', 'task', 'email', 'document'])[1 + g % 4],
       'item ' || g || CASE WHEN g % 1000 = 0 THEN ' quarterly' ELSE '' END,
       'body of item ' || g || CASE WHEN g % 100 = 0 THEN ' roadmap' ELSE '' END,
       ARRAY['bench', 'tag' || (g % 50)],
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' + u.k * interval '1 millisecond',
       timestamptz '2026-01-01 00:00:00+00' + g * interval '1 second' + u.k * interval '1 millisecond'
FROM generate_series($2::int, $3::int) AS g
JOIN (SELECT id, (row_number() OVER (ORDER BY email))::int - 1 AS k
      FROM users WHERE email LIKE $1) AS u
  ON g % $4::int = u.k % $4::int
"#;

struct Latency {
    stats: Stats,
}

impl Latency {
    fn text(&self) -> String {
        format!(
            "p50 {} ms, p99 {} ms",
            ms(self.stats.p50_ms),
            ms(self.stats.p99_ms)
        )
    }
}

/// List-page and search latency as one user's items grow, among other users' items;
/// keyset pages against what OFFSET would cost, measured in SQL.
pub(super) async fn run(bench: &mut Bench) -> anyhow::Result<()> {
    use sqlx::{Executor, Row};
    let (stages, others): (&[i32], i32) = if bench.smoke {
        (&[1_000, 10_000], 10_000)
    } else {
        (&[10_000, 100_000, 1_000_000], 100_000)
    };
    let database = TestDatabase::create().await?;
    // Redis unreachable: pages are never served from the cache, so every request runs its
    // query, which is what scales. (A 1 ms TTL is not enough: at c=1 a request follows
    // the previous one within the millisecond.) The token check then costs one indexed
    // PostgreSQL lookup per request, the same at every size.
    let cut = TcpProxy::start(REDIS_ADDR.parse()?, false).await;
    cut.set_mode(crate::proxy::Mode::Cut);
    let spec = bench.spec(
        "scaling",
        pg_url(PG_ADDR, &database.name),
        format!("redis://{}", cut.addr),
    );
    let (replica, _) = bench.replica(&spec).await?;
    let base = replica.url("");
    let email = format!("scaling-{}@example.com", uuid::Uuid::new_v4().simple());
    let credentials =
        serde_json::json!({"email": email, "password": "scaling-password-0123456789"});
    let registered = bench
        .client
        .post(format!("{base}/api/auth/register"))
        .json(&credentials)
        .send()
        .await?;
    if registered.status() != 201 {
        bench.figures.push(Figure::missing(
            SCALING,
            "every scaling figure",
            format!(
                "the data API does not answer (register: {})",
                registered.status()
            ),
        ));
        return Ok(());
    }
    let token = crate::load::sign_in(&bench.client, &base, &credentials).await?;
    let auth = format!("Bearer {token}");
    let mut conn = database.connect().await?;
    conn.execute("SET synchronous_commit = off").await?;
    conn.execute("SET maintenance_work_mem = '256MB'").await?;
    let user: String = sqlx::query("SELECT id::text FROM users WHERE email = $1")
        .bind(&email)
        .fetch_one(&mut conn)
        .await?
        .get(0);
    let loading = Instant::now();
    let mut load_time = Duration::ZERO;
    conn.execute(
        "INSERT INTO users (id, email, password_hash)
         SELECT gen_random_uuid(), 'other-' || g || '@example.com', 'not a hash'
         FROM generate_series(1, 10) AS g",
    )
    .await?;
    sqlx::query(INSERT_ITEMS)
        .bind("other-%")
        .bind(1)
        .bind(others)
        .bind(10)
        .execute(&mut conn)
        .await?;
    load_time += loading.elapsed();
    let mut loaded = 0;
    let mut first_at_smallest: Option<(Stats, Stats)> = None;
    let latency_run = bench.duration().min(Duration::from_secs(3));
    let c1 = |url: String| Load {
        url,
        connections: 1,
        duration: latency_run,
        script: None,
        headers: vec![format!("Authorization: {auth}")],
        cpus: Some(LOAD_CPU),
    };
    for &n in stages {
        let started = Instant::now();
        sqlx::query(INSERT_ITEMS)
            .bind(&email)
            .bind(loaded + 1)
            .bind(n)
            .bind(1)
            .execute(&mut conn)
            .await?;
        // As autovacuum would: statistics, and the GIN pending list merged into the index.
        conn.execute("VACUUM ANALYZE items").await?;
        loaded = n;
        let load_secs = started.elapsed().as_secs_f64();
        load_time += started.elapsed();
        // The last item of the page before the one at 90 % depth. Cursors are signed, so
        // the bench asks the API for a real one: it tags that item and the next with a
        // marker, and the first page of the marker's list (one item) hands back the
        // cursor after it. A cursor holds only a position, so it pages the full list too.
        let depth = (n as f64 * 0.9) as i64;
        let row = sqlx::query(
            "SELECT (extract(epoch FROM created_at) * 1000000)::bigint, id::text FROM items
             WHERE user_id = $1::uuid ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 1",
        )
        .bind(&user)
        .bind(depth - 1)
        .fetch_one(&mut conn)
        .await?;
        let (micros, id): (i64, String) = (row.get(0), row.get(1));
        sqlx::query(
            "UPDATE items SET tags = array_append(tags, 'bench-anchor') WHERE id IN (
               SELECT id FROM items WHERE user_id = $1::uuid
               ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 2)",
        )
        .bind(&user)
        .bind(depth - 1)
        .execute(&mut conn)
        .await?;
        let get_json = |path: String| {
            let request = bench
                .client
                .get(format!("{base}{path}"))
                .bearer_auth(&token);
            async move {
                let page: serde_json::Value =
                    request.send().await?.error_for_status()?.json().await?;
                anyhow::Ok(page)
            }
        };
        let anchor = get_json("/api/items?limit=1&tag=bench-anchor".to_owned()).await?;
        let Some(cursor) = anchor["nextCursor"].as_str().map(str::to_owned) else {
            bail!("no cursor after the anchor item: {anchor}");
        };
        let first_path = "/api/items?limit=50".to_owned();
        let deep_path = format!("/api/items?limit=50&cursor={cursor}");
        let search_path = "/api/search?q=quarterly".to_owned();
        let deep = get_json(deep_path.clone()).await?;
        if deep["items"].as_array().map(Vec::len) != Some(50) {
            bail!("the deep page did not answer 50 items: the cursor format changed? {deep}");
        }
        let first = bench.load(&c1(format!("{base}{first_path}"))).await?;
        let deep = bench.load(&c1(format!("{base}{deep_path}"))).await?;
        let search = bench.load(&c1(format!("{base}{search_path}"))).await?;

        // The same pages in SQL: keyset, and OFFSET at the same depth.
        let keyset_sql = "SELECT * FROM items WHERE user_id = $1::uuid
             AND (created_at, id) < (timestamptz 'epoch' + $2::bigint * interval '1 microsecond', $3::uuid)
             ORDER BY created_at DESC, id DESC LIMIT 51";
        let offset_sql = "SELECT * FROM items WHERE user_id = $1::uuid
             ORDER BY created_at DESC, id DESC OFFSET $2 LIMIT 51";
        let mut keyset_ms = Vec::new();
        let mut offset_ms = Vec::new();
        for _ in 0..6 {
            let t = Instant::now();
            let rows = sqlx::query(keyset_sql)
                .bind(&user)
                .bind(micros)
                .bind(&id)
                .fetch_all(&mut conn)
                .await?;
            keyset_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            let t = Instant::now();
            let offset_rows = sqlx::query(offset_sql)
                .bind(&user)
                .bind(depth)
                .fetch_all(&mut conn)
                .await?;
            offset_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            if rows.len() != offset_rows.len() {
                bail!("keyset and OFFSET pages differ in length");
            }
        }
        let median = |v: &mut Vec<f64>| {
            v.remove(0); // the first run warms the cache
            v.sort_by(|a, b| a.total_cmp(b));
            v[v.len() / 2]
        };
        let (k, o) = (median(&mut keyset_ms), median(&mut offset_ms));

        let label = thousands(n as f64);
        let smallest = first_at_smallest
            .get_or_insert((first.clone(), search.clone()))
            .clone();
        let first_l = Latency { stats: first };
        let deep_l = Latency { stats: deep };
        let search_l = Latency { stats: search };
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: list page 1 (limit 50)"),
                first_l.text(),
            )
            .baseline(format!(
                "at {}: p50 {} ms; loaded in {load_secs:.1} s",
                thousands(stages[0] as f64),
                ms(smallest.0.p50_ms)
            ))
            .ratio(first_l.stats.p50_ms / smallest.0.p50_ms),
        );
        let flat = deep_l.stats.p50_ms <= 2.0 * first_l.stats.p50_ms;
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: list page at 90 % depth (cursor)"),
                deep_l.text(),
            )
            .baseline(format!("page 1: p50 {} ms", ms(first_l.stats.p50_ms)))
            .ratio(deep_l.stats.p50_ms / first_l.stats.p50_ms)
            .target("flat: <= 2x page 1", flat),
        );
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: OFFSET {depth} in SQL (what OFFSET paging would cost)"),
                format!("{} ms", ms(o)),
            )
            .baseline(format!("keyset at the same depth in SQL: {} ms", ms(k)))
            .ratio(o / k),
        );
        bench.figures.push(
            Figure::info(
                SCALING,
                format!("{label} items: search \"quarterly\" (0.1 % of them)"),
                search_l.text(),
            )
            .baseline(format!(
                "at {}: p50 {} ms",
                thousands(stages[0] as f64),
                ms(smallest.1.p50_ms)
            ))
            .ratio(search_l.stats.p50_ms / smallest.1.p50_ms),
        );
    }
    bench.figures.push(Figure::info(
        SCALING,
        "Data generated and loaded (generate_series)",
        format!(
            "{} items of one user among {} of 10 others, {:.0} s in all",
            thousands(loaded as f64),
            thousands(others as f64),
            load_time.as_secs_f64()
        ),
    ));
    drop(replica);
    Ok(())
}
