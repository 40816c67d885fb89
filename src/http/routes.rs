//! The routes: one table ([`routes`]) that both builds the router and is what
//! tests/openapi.rs compares with docs/openapi.json, so the document cannot list a route the
//! server lacks or miss one it has. Also the operational handlers (`/metrics`, `/healthz`,
//! `/readyz`) and the answer for everything else (404; 405 with `Allow` comes from axum).

use std::sync::Arc;

use axum::extract::{MatchedPath, Request};
use axum::handler::Handler;
use axum::http::{header, StatusCode, Uri};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, MethodRouter};
use axum::Router;

use crate::metrics::HTTP_REQUESTS_TOTAL;

use super::api::{self, ApiError};
use super::{events, AppState};

/// One route of the endpoint: method (lowercase, as OpenAPI writes it) and path template
/// (`{name}` for a path parameter, as both axum and OpenAPI write it).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Route {
    /// `get`.
    pub method: &'static str,
    /// `/v1/skus/{sku}`.
    pub path: &'static str,
}

type Entry = (Route, MethodRouter<Arc<AppState>>);

/// A GET route; axum answers HEAD on it too (without the body).
fn get_route<H, T>(path: &'static str, handler: H) -> Entry
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    (
        Route {
            method: "get",
            path,
        },
        get(handler),
    )
}

fn table() -> Vec<Entry> {
    vec![
        get_route("/metrics", metrics),
        get_route("/healthz", healthz),
        get_route("/readyz", readyz),
        get_route("/v1/skus/{sku}", api::get_sku),
        get_route("/v1/atp", api::get_atp),
        get_route("/v1/reservations/{id}", api::get_reservation),
        get_route("/v1/events", events::stream),
        get_route("/v1/subscriptions", api::list_subscriptions),
        (
            Route {
                method: "delete",
                path: "/v1/subscriptions/{name}",
            },
            axum::routing::delete(api::delete_subscription),
        ),
    ]
}

/// Every route the server has.
pub fn routes() -> Vec<Route> {
    table().into_iter().map(|(r, _)| r).collect()
}

/// The router of [`routes`], with the 404 answer for everything else.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    table()
        .into_iter()
        .fold(Router::new(), |r, (route, m)| r.route(route.path, m))
        .route_layer(axum::middleware::from_fn(count))
        .fallback(not_found)
        .with_state(state)
}

/// Counts an answered request of a route (405s included) by its template and status.
async fn count(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_string(), |p| p.as_str().to_string());
    let answer = next.run(req).await;
    record(route, answer.status());
    answer
}

fn record(route: String, status: StatusCode) {
    let status = status.as_str().to_string();
    ::metrics::counter!(HTTP_REQUESTS_TOTAL, "route" => route, "status" => status).increment(1);
}

fn text(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

async fn not_found(uri: Uri) -> Response {
    record("other".into(), StatusCode::NOT_FOUND);
    if uri.path().starts_with("/v1/") {
        return ApiError::new(
            StatusCode::NOT_FOUND,
            "no_route",
            format!("no route {}: see docs/openapi.json", uri.path()),
        )
        .into_response();
    }
    text(
        StatusCode::NOT_FOUND,
        "not found: try /metrics, /healthz, /readyz, /v1 (docs/openapi.json)\n".into(),
    )
}

async fn healthz() -> Response {
    text(StatusCode::OK, "ok\n".into())
}

async fn readyz(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    match state.sources.ready() {
        Ok(()) => text(StatusCode::OK, "ready\n".into()),
        Err(why) => text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {why}\n"),
        ),
    }
}

async fn metrics(axum::extract::State(state): axum::extract::State<Arc<AppState>>) -> Response {
    let (sources, handle) = (state.sources.clone(), state.metrics.clone());
    let rendered = tokio::task::spawn_blocking(move || {
        sources.collect();
        crate::metrics::render(&handle)
    })
    .await;
    match rendered {
        Ok(body) => (
            StatusCode::OK,
            [
                (
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                ),
                (header::CACHE_CONTROL, "no-store"),
            ],
            body,
        )
            .into_response(),
        Err(e) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("scrape failed: {e}\n"),
        ),
    }
}
