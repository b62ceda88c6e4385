//! Full-text search (ranked) and stats.

use reqwest::Method;
use serde_json::json;

use crate::helpers::spawn_app;

#[tokio::test]
async fn search_ranks_title_matches_first_and_filters_by_tags() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let body_only = app
        .create_item(&token, &json!({"type": "document", "title": "Notes", "content": "we discussed the budget at length", "tags": ["finance"]}))
        .await;
    let title = app
        .create_item(&token, &json!({"type": "email", "title": "Budget review", "content": "see attached", "tags": ["finance", "urgent"]}))
        .await;
    app.create_item(
        &token,
        &json!({"type": "note", "title": "Groceries", "content": "milk, eggs"}),
    )
    .await;

    let found = app.search(&token, "?q=budgets").await;
    assert_eq!(found.status, 200, "{}", found.body);
    assert_eq!(found.body["query"], "budgets");
    assert_eq!(found.body["count"], 2, "stemming: budgets finds budget");
    let results = found.body["results"].as_array().unwrap();
    assert_eq!(
        results[0]["item"]["id"], title.body["id"],
        "title match ranks first"
    );
    assert_eq!(results[1]["item"]["id"], body_only.body["id"]);
    let (first, second) = (
        results[0]["score"].as_f64().unwrap(),
        results[1]["score"].as_f64().unwrap(),
    );
    assert!(first > second && second > 0.0, "{first} {second}");

    let tagged = app.search(&token, "?q=budget&tags=urgent").await;
    assert_eq!(tagged.body["count"], 1);
    assert_eq!(tagged.body["results"][0]["item"]["id"], title.body["id"]);
    let both = app.search(&token, "?q=budget&tags=finance,urgent").await;
    assert_eq!(both.body["count"], 1);
    let limited = app.search(&token, "?q=budget&limit=1").await;
    assert_eq!(limited.body["count"], 1);
    let none = app.search(&token, "?q=spaceship").await;
    assert_eq!(
        none.body,
        json!({"query": "spaceship", "count": 0, "results": []})
    );

    // Search syntax from users never errors.
    for q in [
        "%22unbalanced",
        "-",
        "or%20or%20or",
        "budget%20-groceries",
        "%27%3B%20DROP%20TABLE",
        "%26%7C!%3A*",
        "%E2%9C%93",
    ] {
        let answer = app.search(&token, &format!("?q={q}")).await;
        assert_eq!(answer.status, 200, "{q}: {}", answer.body);
    }
    for (query, param) in [
        ("", "q"),
        ("?q=", "q"),
        ("?q=%20%20", "q"),
        ("?q=a&limit=0", "limit"),
        ("?q=a&limit=500", "limit"),
    ] {
        let answer = app.search(&token, query).await;
        assert_eq!(answer.status, 400, "{query}: {}", answer.body);
        assert_eq!(answer.error_paths(), vec![param.to_owned()], "{query}");
    }
    let long = format!("?q={}", "a".repeat(501));
    assert_eq!(app.search(&token, &long).await.status, 400);
}

#[tokio::test]
async fn stats_count_items_by_type() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    let empty = app
        .call(Method::GET, "/api/stats", Some(&token), None)
        .await;
    assert_eq!(empty.status, 200);
    assert_eq!(empty.body["total"], 0);
    assert_eq!(
        empty.body["byType"].as_object().unwrap().len(),
        8,
        "every type, zeros included"
    );
    for kind in ["task", "task", "email", "file"] {
        app.create_item(&token, &json!({"type": kind, "title": "x"}))
            .await;
    }
    let stats = app
        .call(Method::GET, "/api/stats", Some(&token), None)
        .await;
    assert_eq!(stats.body["total"], 4);
    assert_eq!(stats.body["byType"]["task"], 2);
    assert_eq!(stats.body["byType"]["email"], 1);
    assert_eq!(stats.body["byType"]["file"], 1);
    assert_eq!(stats.body["byType"]["note"], 0);
}

#[tokio::test]
async fn search_results_stop_at_about_1_mib() {
    let app = spawn_app().await;
    let token = app.new_user().await;
    // 12 matches of 100 KB each: 1.2 MB.
    for i in 0..12 {
        let item = json!({"type": "note", "title": format!("budget {i}"), "content": "lorem ".repeat(16_000)});
        let answer = app.create_item(&token, &item).await;
        assert_eq!(answer.status, 201, "{}", answer.body["error"]);
    }
    let found = app
        .call(
            Method::GET,
            "/api/search?q=budget&limit=100",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(found.status, 200, "{}", found.body["error"]);
    let results = found.body["results"].as_array().unwrap().len();
    assert!((1..12).contains(&results), "{results} results");
    assert_eq!(found.body["count"], results);
}
