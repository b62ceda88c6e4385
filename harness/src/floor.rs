//! The floor of the probe benchmarks: the smallest axum server that answers `GET /live`
//! with the same bytes as the service's `/live`, on the same axum, hyper and tokio (one
//! workspace, one lockfile). No middleware, no metrics, no logging, no per-request JSON:
//! whatever the service spends beyond this is its own overhead.

use axum::http::header;
use axum::routing::get;
use axum::Router;

/// Serves `body` as `application/json` on `GET /live`, on 127.0.0.1:`port`, forever.
/// Builds its runtime the way the service's `main` does (multi-threaded, all drivers).
pub fn serve(port: u16, body: String) -> anyhow::Result<()> {
    let body: &'static str = Box::leak(body.into_boxed_str());
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let app = Router::new().route(
            "/live",
            get(move || async move { ([(header::CONTENT_TYPE, "application/json")], body) }),
        );
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}
