//! Keyset pagination: newest first, complete, stable while rows are inserted.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::helpers::spawn_app;

fn ids(items: &[Value]) -> Vec<String> {
    items
        .iter()
        .map(|i| i["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn pages_are_newest_first_complete_and_filtered() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let mut created = Vec::new();
    for i in 0..25 {
        let kind = if i % 5 == 0 { "task" } else { "note" };
        let body = json!({"type": kind, "title": format!("item {i}"), "tags": [format!("t{}", i % 3)],
                          "favorite": i % 2 == 0, "archived": i % 4 == 0});
        let answer = app.create_item(&token, &body).await;
        assert_eq!(answer.status, 201);
        created.push(answer.body);
    }
    let first = app.list_items(&token, "").await;
    assert_eq!(
        first.body["items"].as_array().unwrap().len(),
        20,
        "default limit"
    );
    assert!(first.body["nextCursor"].is_string());

    let all = app.all_items(&token, 10).await;
    let mut newest_first = ids(&created);
    newest_first.reverse();
    assert_eq!(ids(&all), newest_first);

    let one = app.all_items(&token, 1).await;
    assert_eq!(ids(&one), newest_first);
    let last_page = app.list_items(&token, "?limit=100").await;
    assert_eq!(last_page.body["items"].as_array().unwrap().len(), 25);
    assert_eq!(last_page.body["nextCursor"], Value::Null);

    let mut nonempty = 0;
    for query in [
        "?type=task",
        "?type=note",
        "?tag=t1",
        "?favorite=true",
        "?archived=true",
        "?archived=false&favorite=false",
        "?type=task&tag=t0",
        "?tag=nope",
    ] {
        let page = app.list_items(&token, &format!("{query}&limit=100")).await;
        assert_eq!(page.status, 200, "{query}");
        let items = page.body["items"].as_array().unwrap();
        let want = created.iter().filter(|c| matches_query(c, query)).count();
        assert_eq!(items.len(), want, "{query}");
        assert!(items.iter().all(|i| matches_query(i, query)), "{query}");
        nonempty += usize::from(want > 0);
    }
    assert_eq!(nonempty, 7, "the filters were exercised on real matches");
}

/// The filter semantics, evaluated client-side to check the server.
fn matches_query(item: &Value, query: &str) -> bool {
    query.trim_start_matches('?').split('&').all(|pair| {
        let (k, v) = pair.split_once('=').unwrap();
        match k {
            "type" => item["type"] == v,
            "tag" => item["tags"].as_array().unwrap().iter().any(|t| t == v),
            "favorite" | "archived" => item[k] == (v == "true"),
            _ => true,
        }
    })
}

#[tokio::test]
async fn bad_limits_cursors_and_filters_get_400_naming_the_parameter() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    app.note(&token, "one").await;
    app.note(&token, "two").await;
    let page = app.list_items(&token, "?limit=1").await;
    let cursor = page.body["nextCursor"].as_str().unwrap().to_owned();
    let mut forgeries = well_formed_forgeries(&cursor);
    // Another last character: one in 64 cursors already ends in `x`.
    let other = if cursor.ends_with('x') { 'y' } else { 'x' };
    forgeries.push(format!("{}{other}", &cursor[..cursor.len() - 1]));
    for forged in forgeries {
        let answer = app
            .list_items(&token, &format!("?limit=1&cursor={forged}"))
            .await;
        assert_eq!(answer.status, 400, "{forged}: {}", answer.body);
        assert_eq!(answer.error_paths(), vec!["cursor".to_owned()], "{forged}");
    }
    for (query, param) in [
        ("?limit=0", "limit"),
        ("?limit=101", "limit"),
        ("?limit=-5", "limit"),
        ("?limit=ten", "limit"),
        ("?limit=99999999999999999999", "limit"),
        ("?cursor=garbage", "cursor"),
        ("?cursor=", "cursor"),
        (
            "?cursor=djE6OTk5OTk5OTk5OTk5OTk5OTk5OTk5OnNvbWV0aGluZw",
            "cursor",
        ),
        ("?type=spaceship", "type"),
        ("?favorite=maybe", "favorite"),
        ("?archived=2", "archived"),
        ("?tag=%00", "tag"),
    ] {
        let answer = app.list_items(&token, query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(answer.error_paths(), vec![param.to_owned()], "{query}");
    }
    let good = app
        .list_items(&token, &format!("?limit=1&cursor={cursor}"))
        .await;
    assert_eq!(good.status, 200);
    assert_eq!(good.body["items"][0]["title"], "one");
}

/// Cursors a client could build from a real one: valid base64 of a valid position, with
/// the signature missing, left on a moved position, or in the old unsigned format.
fn well_formed_forgeries(cursor: &str) -> Vec<String> {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
    use base64::Engine;
    const TAG_LEN: usize = 16;
    let raw = B64.decode(cursor).expect("a real cursor is base64");
    let (payload, tag) = raw.split_at(raw.len() - TAG_LEN);
    let payload = std::str::from_utf8(payload).expect("a text position, then the tag");
    let [version, micros, id] = payload.splitn(3, ':').collect::<Vec<_>>()[..] else {
        panic!("not version:micros:id: {payload}");
    };
    let micros: i64 = micros.parse().unwrap();
    uuid::Uuid::parse_str(id).expect("the position's id");
    // One microsecond later still sorts before the newest item: the page would be valid.
    let moved = format!("{version}:{}:{id}", micros + 1);
    vec![
        B64.encode(payload),
        B64.encode([moved.as_bytes(), tag].concat()),
        B64.encode(format!("v1:{micros}:{id}")),
    ]
}

#[tokio::test]
async fn paging_while_rows_are_inserted_neither_duplicates_nor_skips() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let mut before = HashSet::new();
    for i in 0..60 {
        before.insert(
            app.note(&token, &format!("old {i}")).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (client, url, token, stop) = (
            app.client.clone(),
            app.url("/api/items"),
            token.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut inserted = 0;
            while !stop.load(Ordering::SeqCst) && inserted < 200 {
                let response = client
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&json!({"type": "note", "title": format!("new {inserted}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 201);
                inserted += 1;
            }
            inserted
        })
    };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let query = match &cursor {
            Some(c) => format!("?limit=7&cursor={c}"),
            None => "?limit=7".to_owned(),
        };
        let page = app.list_items(&token, &query).await;
        assert_eq!(page.status, 200);
        seen.extend(ids(page.body["items"].as_array().unwrap()));
        tokio::time::sleep(Duration::from_millis(5)).await;
        match page.body["nextCursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    stop.store(true, Ordering::SeqCst);
    let inserted = writer.await.unwrap();
    assert!(inserted > 5, "inserts really ran concurrently ({inserted})");
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "a row was served twice");
    for id in &before {
        assert!(unique.contains(id), "pre-existing row {id} was skipped");
    }
}

#[tokio::test]
async fn a_page_of_large_items_ends_early_with_a_cursor() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    // 12 items of 100 KB: 1.2 MB, over a page's 1 MiB budget.
    let mut created = Vec::new();
    for i in 0..12 {
        let item =
            json!({"type": "note", "title": format!("large {i}"), "content": "x".repeat(100_000)});
        let answer = app.create_item(&token, &item).await;
        assert_eq!(answer.status, 201, "{}", answer.body["error"]);
        created.push(answer.body["id"].as_str().unwrap().to_owned());
    }
    let first = app.list_items(&token, "?limit=100").await;
    assert_eq!(first.status, 200);
    let first_ids = ids(first.body["items"].as_array().unwrap());
    assert!(
        (1..12).contains(&first_ids.len()),
        "{} items in one page",
        first_ids.len()
    );
    let cursor = first.body["nextCursor"].as_str().expect("a cursor");
    let second = app
        .list_items(&token, &format!("?limit=100&cursor={cursor}"))
        .await;
    assert_eq!(second.status, 200);
    assert!(second.body["nextCursor"].is_null());
    let mut seen = first_ids;
    seen.extend(ids(second.body["items"].as_array().unwrap()));
    created.reverse();
    assert_eq!(seen, created, "every item once, newest first");
}
