//! The JSON reads of the `/v1` API and the one error shape of every `/v1` answer.
//!
//! Reads go through the engine's read API exactly as the binary port's `GET_SKU`, `GET_SKUS`
//! and `GET_RESERVATION` do (`Engine::get`, `Engine::sku_ids`, `Engine::reservation`): a
//! passive SKU is answered from its compact bytes without being activated, a full mailbox is
//! a retriable 503. Every failure is `{"code": "...", "message": "..."}` with a stable
//! snake_case `code` (docs/openapi.json lists them) and the HTTP status that says what a
//! retry can do: 4xx never helps, 503 may.

use std::sync::Arc;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Extension, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures::future::join_all;
use serde::{Deserialize, Serialize};

use crate::domain::{Rejection, RejectionCode, SkuId, SkuView};
use crate::engine::{Engine, EngineError, Failure, ReservationView};
use crate::events::rfc3339_ms;
use crate::protocol::opcode;

use super::auth::authorize;
use super::{AppState, PeerIp};

/// Most SKUs one `GET /v1/atp` names or returns (`skus=` entries, `limit=`).
pub const MAX_ATP_SKUS: usize = 1000;
/// `limit` of a prefix read when none is given.
pub const DEFAULT_ATP_LIMIT: usize = 100;
/// Prefix reads running at once (each lists and sorts the SKU ids under its prefix);
/// beyond, 503 `busy`.
pub const MAX_CONCURRENT_PREFIX_READS: usize = 2;

/// A failed `/v1` request: its status and `{"code", "message"}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    header: Option<(HeaderName, HeaderValue)>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    code: &'a str,
    message: &'a str,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            header: None,
        }
    }

    pub fn with_header(mut self, name: HeaderName, value: &'static str) -> ApiError {
        self.header = Some((name, HeaderValue::from_static(value)));
        self
    }

    pub fn with_retry_after(mut self, secs: u64) -> ApiError {
        self.header = Some((header::RETRY_AFTER, HeaderValue::from(secs)));
        self
    }

    pub fn bad_request(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn unavailable(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, message)
            .with_header(header::RETRY_AFTER, "1")
    }

    /// The engine's answer as an API error.
    pub fn of_failure(f: &Failure) -> ApiError {
        match f {
            Failure::Rejected(r) => ApiError::of_rejection(r),
            Failure::Error(EngineError::ShuttingDown | EngineError::Overloaded(_)) => {
                ApiError::unavailable("unavailable", f.to_string())
            }
            Failure::Error(e) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
        }
    }

    fn of_rejection(r: &Rejection) -> ApiError {
        let (status, code) = match r.code() {
            RejectionCode::UnknownSku => (StatusCode::NOT_FOUND, "unknown_sku"),
            RejectionCode::UnknownChannel => (StatusCode::NOT_FOUND, "unknown_channel"),
            RejectionCode::ReservationNotFound => (StatusCode::NOT_FOUND, "unknown_reservation"),
            RejectionCode::SubscriptionNotFound => (StatusCode::NOT_FOUND, "unknown_subscription"),
            RejectionCode::Busy | RejectionCode::InProgress => {
                return ApiError::unavailable("busy", r.to_string())
            }
            RejectionCode::InvalidRequest => (StatusCode::BAD_REQUEST, "invalid_request"),
            _ => (StatusCode::CONFLICT, "rejected"),
        };
        ApiError::new(status, code, r.to_string())
    }

    /// The engine is not open yet (recovery) or shutting down.
    pub fn not_ready(why: impl std::fmt::Display) -> ApiError {
        ApiError::unavailable("not_ready", format!("not ready: {why}"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            code: self.code,
            message: &self.message,
        };
        let mut r = (self.status, Json(body)).into_response();
        if let Some((name, value)) = self.header {
            r.headers_mut().insert(name, value);
        }
        r
    }
}

/// The engine, once recovery is done.
pub(crate) fn engine(state: &AppState) -> Result<Arc<Engine>, ApiError> {
    match state.sources.engine() {
        Some(e) => Ok(e.clone()),
        None => Err(ApiError::not_ready(super::NotReady::Recovering)),
    }
}

fn sku_id(s: &str) -> Result<SkuId, ApiError> {
    SkuId::new(s).map_err(|r| ApiError::bad_request("bad_sku", r.to_string()))
}

/// One location's stock of a SKU.
#[derive(Serialize)]
pub(crate) struct BucketJson {
    location: String,
    on_hand: u32,
    reserved: u32,
    safety_stock: u32,
    damaged: u32,
    quality_control: u32,
    incoming: u32,
    /// Unix ms when the incoming units are expected; 0 = unknown.
    incoming_eta_ms: u64,
    shortfall: u32,
    /// on_hand - shortfall - reserved - safety_stock (may be negative).
    atp: i64,
}

/// A channel's ATP.
#[derive(Serialize)]
pub(crate) struct ChannelAtpJson {
    channel: String,
    atp: u32,
}

/// `GET /v1/skus/{sku}`.
#[derive(Serialize)]
pub(crate) struct SkuJson {
    sku: String,
    channels: Vec<ChannelAtpJson>,
    buckets: Vec<BucketJson>,
    oversold: bool,
    holds: u32,
    last_seq: u64,
}

fn channels_of(v: &SkuView) -> Vec<ChannelAtpJson> {
    v.channels
        .iter()
        .map(|(c, atp)| ChannelAtpJson {
            channel: c.to_string(),
            atp: *atp,
        })
        .collect()
}

impl SkuJson {
    fn of(v: &SkuView) -> SkuJson {
        SkuJson {
            sku: v.sku.to_string(),
            channels: channels_of(v),
            buckets: v
                .buckets
                .iter()
                .map(|b| BucketJson {
                    location: b.location.to_string(),
                    on_hand: b.on_hand,
                    reserved: b.reserved,
                    safety_stock: b.safety_stock,
                    damaged: b.damaged,
                    quality_control: b.quality_control,
                    incoming: b.incoming,
                    incoming_eta_ms: b.incoming_eta_ms,
                    shortfall: b.shortfall,
                    atp: b.atp(),
                })
                .collect(),
            oversold: v.oversold,
            holds: v.holds,
            last_seq: v.last_seq,
        }
    }
}

/// `GET /v1/skus/{sku}`: one SKU's buckets and ATP per channel.
pub(crate) async fn get_sku(
    State(state): State<Arc<AppState>>,
    Extension(PeerIp(peer)): Extension<PeerIp>,
    headers: HeaderMap,
    sku: Result<Path<String>, PathRejection>,
) -> Result<Json<SkuJson>, ApiError> {
    authorize(&state, &headers, peer, opcode::GET_SKU)?;
    let Path(sku) = sku.map_err(|e| ApiError::bad_request("bad_sku", e.body_text()))?;
    let id = sku_id(&sku)?;
    let engine = engine(&state)?;
    let view = engine
        .get(&id)
        .await
        .map_err(|f| ApiError::of_failure(&f))?;
    Ok(Json(SkuJson::of(&view)))
}

/// Query of `GET /v1/atp`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct AtpQuery {
    skus: Option<String>,
    prefix: Option<String>,
    limit: Option<usize>,
    after: Option<String>,
}

/// One SKU's ATP per channel.
#[derive(Serialize)]
pub(crate) struct SkuAtpJson {
    sku: String,
    channels: Vec<ChannelAtpJson>,
    oversold: bool,
    last_seq: u64,
}

/// `GET /v1/atp`.
#[derive(Serialize)]
pub(crate) struct AtpJson {
    skus: Vec<SkuAtpJson>,
    /// Named SKUs the engine does not know (a `skus=` read only).
    unknown: Vec<String>,
    /// A prefix read that stopped at `limit`: pass it as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next_after: Option<String>,
}

/// `GET /v1/atp?skus=a,b` or `?prefix=p&limit=n&after=s`: ATP per channel of several SKUs.
pub(crate) async fn get_atp(
    State(state): State<Arc<AppState>>,
    Extension(PeerIp(peer)): Extension<PeerIp>,
    headers: HeaderMap,
    query: Result<Query<AtpQuery>, QueryRejection>,
) -> Result<Json<AtpJson>, ApiError> {
    authorize(&state, &headers, peer, opcode::GET_SKUS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let engine = engine(&state)?;
    match (&q.skus, &q.prefix) {
        (Some(list), None) => {
            if q.limit.is_some() || q.after.is_some() {
                return Err(ApiError::bad_request(
                    "bad_query",
                    "limit and after go with prefix, not with skus",
                ));
            }
            atp_of_list(&engine, list).await
        }
        (None, Some(prefix)) => atp_of_prefix(&state, &engine, prefix, &q).await,
        _ => Err(ApiError::bad_request(
            "bad_query",
            "give exactly one of skus=a,b,... or prefix=p",
        )),
    }
}

async fn atp_of_list(engine: &Engine, list: &str) -> Result<Json<AtpJson>, ApiError> {
    let names: Vec<&str> = list.split(',').collect();
    if names.len() > MAX_ATP_SKUS {
        return Err(ApiError::bad_request(
            "too_many_skus",
            format!("{} skus; at most {MAX_ATP_SKUS}", names.len()),
        ));
    }
    let ids = names
        .iter()
        .map(|s| sku_id(s))
        .collect::<Result<Vec<_>, _>>()?;
    read_all(engine, ids, true, None).await
}

async fn atp_of_prefix(
    state: &AppState,
    engine: &Engine,
    prefix: &str,
    q: &AtpQuery,
) -> Result<Json<AtpJson>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_ATP_LIMIT);
    if !(1..=MAX_ATP_SKUS).contains(&limit) {
        return Err(ApiError::bad_request(
            "bad_limit",
            format!("limit {limit}: must be 1..={MAX_ATP_SKUS}"),
        ));
    }
    if prefix.len() > crate::domain::limits::MAX_SKU_ID_BYTES {
        return Err(ApiError::bad_request(
            "bad_sku",
            "prefix is longer than a SKU id may be",
        ));
    }
    let Ok(_scan) = state.prefix_reads.try_acquire() else {
        return Err(ApiError::unavailable(
            "busy",
            format!("{MAX_CONCURRENT_PREFIX_READS} prefix reads are running; retry"),
        ));
    };
    let (page, more) = engine.sku_page(prefix, q.after.as_deref(), limit);
    let next = more.then(|| page.last().map(|s| s.to_string())).flatten();
    read_all(engine, page, false, next).await
}

/// Reads `ids` concurrently; unknown ones listed (`list`) or skipped (a prefix page: a SKU
/// id is never forgotten once known, so this does not happen there).
async fn read_all(
    engine: &Engine,
    ids: Vec<SkuId>,
    list: bool,
    next_after: Option<String>,
) -> Result<Json<AtpJson>, ApiError> {
    let views = join_all(ids.iter().map(|id| engine.get(id))).await;
    let mut out = AtpJson {
        skus: Vec::with_capacity(ids.len()),
        unknown: Vec::new(),
        next_after,
    };
    for (id, v) in ids.iter().zip(views) {
        match v {
            Ok(v) => out.skus.push(SkuAtpJson {
                sku: v.sku.to_string(),
                channels: channels_of(&v),
                oversold: v.oversold,
                last_seq: v.last_seq,
            }),
            Err(Failure::Rejected(Rejection::UnknownSku(_))) if list => {
                out.unknown.push(id.to_string())
            }
            Err(Failure::Rejected(Rejection::UnknownSku(_))) => {}
            Err(f) => return Err(ApiError::of_failure(&f)),
        }
    }
    Ok(Json(out))
}

/// `GET /v1/reservations/{id}`.
#[derive(Serialize)]
pub(crate) struct ReservationJson {
    reservation: String,
    channel: String,
    expires_at: String,
    expires_at_ms: u64,
    lines: Vec<LineJson>,
}

#[derive(Serialize)]
pub(crate) struct LineJson {
    sku: String,
    /// Units still held.
    qty: u32,
}

impl ReservationJson {
    fn of(r: &ReservationView) -> ReservationJson {
        ReservationJson {
            reservation: format!("{:032x}", r.reservation),
            channel: r.channel.to_string(),
            expires_at: rfc3339_ms(r.expires_at_ms),
            expires_at_ms: r.expires_at_ms,
            lines: r
                .lines
                .iter()
                .map(|(s, q)| LineJson {
                    sku: s.to_string(),
                    qty: *q,
                })
                .collect(),
        }
    }
}

/// A reservation id as `ctl` prints it: exactly 32 hex digits (either case).
pub(crate) fn parse_reservation_id(s: &str) -> Option<u128> {
    if s.len() != 32 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u128::from_str_radix(s, 16).ok()
}

/// `GET /v1/reservations/{id}`: an active reservation.
pub(crate) async fn get_reservation(
    State(state): State<Arc<AppState>>,
    Extension(PeerIp(peer)): Extension<PeerIp>,
    headers: HeaderMap,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ReservationJson>, ApiError> {
    authorize(&state, &headers, peer, opcode::GET_RESERVATION)?;
    let bad = |s: &str| {
        ApiError::bad_request(
            "bad_reservation_id",
            format!("{s:?}: a reservation id is 32 hex digits"),
        )
    };
    let Path(id) = id.map_err(|e| bad(&e.body_text()))?;
    let rid = parse_reservation_id(&id).ok_or_else(|| bad(&id))?;
    let engine = engine(&state)?;
    match engine.reservation(rid) {
        Some(r) => Ok(Json(ReservationJson::of(&r))),
        None => Err(ApiError::of_rejection(&Rejection::ReservationNotFound(rid))),
    }
}

/// `GET /v1/subscriptions` query: a page of the stored named positions.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionsQuery {
    after: Option<String>,
    limit: Option<u32>,
}

/// `GET /v1/subscriptions`: the stored named positions in name order, a page at a time
/// (the binary LIST_SUBSCRIPTIONS).
pub(crate) async fn list_subscriptions(
    State(state): State<Arc<AppState>>,
    Extension(PeerIp(peer)): Extension<PeerIp>,
    headers: HeaderMap,
    query: Result<Query<SubscriptionsQuery>, QueryRejection>,
) -> Result<Json<crate::protocol::Subscriptions>, ApiError> {
    authorize(&state, &headers, peer, opcode::LIST_SUBSCRIPTIONS)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let engine = engine(&state)?;
    Ok(Json(crate::server::convert::subscriptions_page(
        &engine.feed_positions(),
        engine.feed().head(),
        q.after.as_deref().unwrap_or(""),
        q.limit.unwrap_or(0),
    )))
}

/// `DELETE /v1/subscriptions/{name}`: forgets a stored named position (admin; the binary
/// DELETE_SUBSCRIPTION). 204, or 404 `unknown_subscription`.
pub(crate) async fn delete_subscription(
    State(state): State<Arc<AppState>>,
    Extension(PeerIp(peer)): Extension<PeerIp>,
    headers: HeaderMap,
    name: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    authorize(&state, &headers, peer, opcode::DELETE_SUBSCRIPTION)?;
    let Path(name) = name.map_err(|e| ApiError::bad_request("bad_query", e.body_text()))?;
    let engine = engine(&state)?;
    engine
        .delete_position(&name)
        .await
        .map_err(|f| ApiError::of_failure(&f))?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reservation_ids_are_exactly_32_hex_digits() {
        let id = format!("{:032x}", 42u128);
        assert_eq!(parse_reservation_id(&id), Some(42));
        assert_eq!(parse_reservation_id(&id.to_uppercase()), Some(42));
        assert_eq!(
            parse_reservation_id(&format!("{:032x}", u128::MAX)),
            Some(u128::MAX)
        );
        for bad in [
            "",
            "42",
            "0x2a",
            &id[1..],
            &format!("{id}0"),
            &format!("{}g", &id[1..]),
        ] {
            assert_eq!(parse_reservation_id(bad), None, "{bad:?}");
        }
        // 32 chars but a sign: from_str_radix would accept "+..." of 31 digits.
        assert_eq!(parse_reservation_id(&format!("+{}", &id[1..])), None);
    }
}
