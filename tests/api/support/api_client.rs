//! One helper per endpoint of the data API, on `TestApp`.
#![allow(dead_code)] // Shared by every test module; not each uses every helper.

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::helpers::TestApp;

pub const PASSWORD: &str = "correct horse battery";

/// Status, headers and JSON body (`Null` when empty or not JSON).
pub struct Answer {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// Asserts the error format and returns the details' paths.
    pub fn error_paths(&self) -> Vec<String> {
        assert!(
            self.body["error"].is_string(),
            "not an error body: {} {}",
            self.status,
            self.body
        );
        self.body["details"]
            .as_array()
            .expect("details array")
            .iter()
            .map(|d| {
                assert!(d["message"].is_string());
                d["path"].as_str().unwrap().to_owned()
            })
            .collect()
    }
}

pub async fn answer(request: RequestBuilder) -> Answer {
    let response = request.send().await.expect("request sent");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let text = response.text().await.unwrap_or_default();
    Answer {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
    }
}

pub fn unique_email() -> String {
    format!("user-{}@example.com", Uuid::new_v4().simple())
}

/// A note with a source, ready for upserts.
pub fn sourced(connector: &str, source_id: &str, title: &str) -> Value {
    json!({
        "type": "note",
        "title": title,
        "source": {"connector": connector, "sourceId": source_id},
    })
}

/// Registers a fresh user on the API at `base` (e.g. `http://127.0.0.1:3001`) and returns
/// their token; for replicas that are processes as well as in-process apps.
pub async fn sign_up(client: &reqwest::Client, base: &str) -> String {
    let email = unique_email();
    let body = json!({"email": email, "password": PASSWORD});
    let registered = answer(client.post(format!("{base}/api/auth/register")).json(&body)).await;
    assert_eq!(registered.status, 201, "{}", registered.body);
    let login = answer(client.post(format!("{base}/api/auth/login")).json(&body)).await;
    assert_eq!(login.status, 200, "{}", login.body);
    login.body["token"].as_str().unwrap().to_owned()
}

impl TestApp {
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let request = self.client.request(method, self.url(path));
        match token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> Answer {
        let mut request = self.request(method, path, token);
        if let Some(body) = body {
            request = request.json(body);
        }
        answer(request).await
    }

    pub async fn register(&self, email: &str, password: &str) -> Answer {
        let body = json!({"email": email, "password": password});
        self.call(Method::POST, "/api/auth/register", None, Some(&body))
            .await
    }

    pub async fn login(&self, email: &str, password: &str) -> Answer {
        let body = json!({"email": email, "password": password});
        self.call(Method::POST, "/api/auth/login", None, Some(&body))
            .await
    }

    /// A fresh user's token (once the app is ready: the API answers 503 before).
    pub async fn new_user(&self) -> String {
        self.wait_ready().await;
        sign_up(&self.client, &self.address).await
    }

    pub async fn create_item(&self, token: &str, body: &Value) -> Answer {
        self.call(Method::POST, "/api/items", Some(token), Some(body))
            .await
    }

    /// Creates a note and returns it; panics unless 201.
    pub async fn note(&self, token: &str, title: &str) -> Value {
        let created = self
            .create_item(token, &json!({"type": "note", "title": title}))
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        created.body
    }

    pub async fn get_item(&self, token: &str, id: &str) -> Answer {
        self.call(Method::GET, &format!("/api/items/{id}"), Some(token), None)
            .await
    }

    pub async fn patch_item(
        &self,
        token: &str,
        id: &str,
        if_match: Option<&str>,
        body: &Value,
    ) -> Answer {
        let mut request = self
            .request(Method::PATCH, &format!("/api/items/{id}"), Some(token))
            .json(body);
        if let Some(etag) = if_match {
            request = request.header("If-Match", etag);
        }
        answer(request).await
    }

    pub async fn list_items(&self, token: &str, query: &str) -> Answer {
        self.call(
            Method::GET,
            &format!("/api/items{query}"),
            Some(token),
            None,
        )
        .await
    }

    pub async fn upsert(&self, token: &str, body: &Value) -> Answer {
        self.call(Method::POST, "/api/items/upsert", Some(token), Some(body))
            .await
    }

    pub async fn batch(&self, token: &str, items: Vec<Value>) -> Answer {
        let body = json!({ "items": items });
        self.call(Method::POST, "/api/items/batch", Some(token), Some(&body))
            .await
    }

    pub async fn search(&self, token: &str, query: &str) -> Answer {
        self.call(
            Method::GET,
            &format!("/api/search{query}"),
            Some(token),
            None,
        )
        .await
    }

    /// POSTs `body` to `path` with an `Idempotency-Key`.
    pub async fn post_keyed(
        &self,
        token: Option<&str>,
        path: &str,
        key: &str,
        body: &Value,
    ) -> Answer {
        answer(
            self.request(Method::POST, path, token)
                .header("Idempotency-Key", key)
                .json(body),
        )
        .await
    }

    /// Every item of the user, following cursors.
    pub async fn all_items(&self, token: &str, limit: u32) -> Vec<Value> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let query = match &cursor {
                Some(c) => format!("?limit={limit}&cursor={c}"),
                None => format!("?limit={limit}"),
            };
            let page = self.list_items(token, &query).await;
            assert_eq!(page.status, 200, "{}", page.body);
            items.extend(page.body["items"].as_array().unwrap().iter().cloned());
            match page.body["nextCursor"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return items,
            }
        }
    }
}
