//! Runs the operations of one request frame against the engine and builds their results.
//! Every outcome, including a body that does not decode, becomes a per-operation status:
//! nothing an operation carries can fail the connection or panic the server.

use std::sync::Arc;

use futures::future::join_all;
use serde::Serialize;

use crate::domain::{Rejection, SkuId};
use crate::engine::{Command, Engine, Failure, Outcome, Request};
use crate::protocol::ops::is_reserved;
use crate::protocol::{self, failed, status, Op, OpResult, RawOp, Role};
use crate::protocol::{CompareFacts, InsufficientFacts, Pong, ServerInfo, WireSkus};

use super::convert::{self, *};
use super::status::{of_engine_error, of_rejection};
use super::{ServerConfig, ServerStats};

/// What an operation needs besides its body.
pub(crate) struct Ctx {
    pub engine: Arc<Engine>,
    pub config: Arc<ServerConfig>,
    pub stats: Arc<ServerStats>,
}

/// A successful result carrying `v` (an encoding failure becomes `INTERNAL_ERROR`).
pub(crate) fn ok<T: Serialize>(v: &T) -> OpResult {
    match protocol::encode_payload(v) {
        Ok(body) => OpResult {
            status: status::OK,
            message: String::new(),
            body,
        },
        Err(e) => failed(status::INTERNAL_ERROR, e.to_string()),
    }
}

/// The result of a rejection, with its facts in the body where the protocol defines them.
fn rejected(r: &Rejection) -> OpResult {
    let body = match r {
        Rejection::InsufficientStock {
            line,
            sku,
            requested,
            available,
        } => protocol::encode_payload(&InsufficientFacts {
            line: *line,
            sku: sku.to_string(),
            requested: *requested,
            available: *available,
        }),
        Rejection::CompareFailed { expected, actual } => protocol::encode_payload(&CompareFacts {
            expected: *expected,
            actual: *actual,
        }),
        _ => Ok(Vec::new()),
    };
    OpResult {
        status: of_rejection(r),
        message: r.to_string(),
        body: body.unwrap_or_default(),
    }
}

fn failure(f: &Failure) -> OpResult {
    match f {
        Failure::Rejected(r) => rejected(r),
        Failure::Error(e) => failed(of_engine_error(e), e.to_string()),
    }
}

/// Runs every operation of a batch concurrently; results in request order.
pub(crate) async fn run_batch(ctx: &Ctx, role: Role, ops: &[RawOp]) -> Vec<OpResult> {
    join_all(
        ops.iter()
            .map(|op| crate::metrics::timed_op(op.opcode, run_op(ctx, role, op))),
    )
    .await
}

/// Runs one raw operation.
pub(crate) async fn run_op(ctx: &Ctx, role: Role, raw: &RawOp) -> OpResult {
    if !role.may(raw.opcode) {
        return failed(
            status::FORBIDDEN,
            format!("role {role:?} may not run opcode {:#06x}", raw.opcode),
        );
    }
    if is_reserved(raw.opcode) {
        return failed(
            status::NOT_IMPLEMENTED,
            format!("opcode {:#06x} is reserved for a later version", raw.opcode),
        );
    }
    match Op::from_raw(raw) {
        Ok(Some(op)) => run_typed(ctx, op, fingerprint(raw)).await,
        Ok(None) => failed(
            status::UNKNOWN_OPERATION,
            format!("unknown opcode {:#06x}", raw.opcode),
        ),
        Err(e) => failed(
            status::PROTOCOL_ERROR,
            format!("opcode {:#06x}: {e}", raw.opcode),
        ),
    }
}

/// The idempotency fingerprint of a wire operation: xxh3 of its body's bytes, seeded with
/// the opcode and [`FINGERPRINT_VERSION`] (no re-encoding of the decoded command). The
/// encoding is canonical (fixed-width, trailing bytes refused), so equal bytes mean an
/// equal operation. Persisted in the log: a change of definition bumps the version.
fn fingerprint(raw: &RawOp) -> u64 {
    let seed = (FINGERPRINT_VERSION << 16) | u64::from(raw.opcode);
    xxhash_rust::xxh3::xxh3_64_with_seed(&raw.body, seed)
}

/// Version of [`fingerprint`]'s definition.
const FINGERPRINT_VERSION: u64 = 1;

async fn exec(
    ctx: &Ctx,
    (id, fp): (u128, u64),
    cmd: Result<Command, Rejection>,
    on_ok: fn(&Outcome) -> OpResult,
) -> OpResult {
    let command = match cmd {
        Ok(c) => c,
        Err(r) => return rejected(&r),
    };
    // Boxed: the engine's future is several KB, and every future that holds it inline
    // (this one, the batch's FuturesOrdered slot, the timing wrapper) was moved by memcpy
    // about seven times per operation (5K instructions); a box is moved as a pointer.
    let fut = Box::pin(
        ctx.engine
            .execute_fingerprinted(Request { id, command }, fp),
    );
    match fut.await {
        Ok(outcome) => on_ok(&outcome),
        Err(f) => failure(&f),
    }
}

fn reserved_result(o: &Outcome) -> OpResult {
    ok(&convert::reserved_view(o))
}
fn applied_result(o: &Outcome) -> OpResult {
    ok(&convert::applied_of(o))
}

async fn run_typed(ctx: &Ctx, op: Op, fp: u64) -> OpResult {
    let a = applied_result;
    match op {
        Op::Ping => ok(&Pong {
            server_time_ms: now_ms(),
        }),
        Op::ServerInfo => ok(&server_info(ctx)),
        Op::Reserve(r) => {
            let max = ctx.config.max_lines_per_reservation;
            if r.lines.len() > max {
                let msg = format!("{} lines; at most {max} per reservation", r.lines.len());
                return failed(status::LIMIT_EXCEEDED, msg);
            }
            exec(
                ctx,
                (r.request_id, fp),
                reserve_command(&r),
                reserved_result,
            )
            .await
        }
        Op::Fulfill(f) => exec(ctx, (f.request_id, fp), fulfill_command(&f), a).await,
        Op::Release(r) => {
            let c = Ok(Command::Release {
                reservation: r.reservation,
            });
            exec(ctx, (r.request_id, fp), c, a).await
        }
        Op::Extend(e) => {
            let c = Ok(Command::Extend {
                reservation: e.reservation,
                ttl_ms: e.ttl_ms,
            });
            exec(ctx, (e.request_id, fp), c, a).await
        }
        Op::Adjust(b) => exec(ctx, (b.request_id, fp), adjust_command(&b), a).await,
        Op::SetOnHand(b) => exec(ctx, (b.request_id, fp), set_on_hand_command(&b), a).await,
        Op::Move(b) => exec(ctx, (b.request_id, fp), move_command(&b), a).await,
        Op::Transfer(b) => exec(ctx, (b.request_id, fp), transfer_command(&b), a).await,
        Op::SetSafetyStock(b) => exec(ctx, (b.request_id, fp), safety_command(&b), a).await,
        Op::SetIncoming(b) => exec(ctx, (b.request_id, fp), incoming_command(&b), a).await,
        Op::UpsertLocation(b) => exec(ctx, (b.request_id, fp), location_command(&b), a).await,
        Op::UpsertChannel(b) => exec(ctx, (b.request_id, fp), channel_command(&b), a).await,
        Op::ListLocations => ok(&convert::locations_of(&ctx.engine.catalog())),
        Op::ListChannels => ok(&convert::channels_of(&ctx.engine.catalog())),
        Op::GetSku(g) => match get_sku(ctx, &g.sku).await {
            Ok(v) => ok(&v),
            Err(f) => failure(&f),
        },
        Op::GetSkus(g) => get_skus(ctx, &g.skus).await,
        Op::GetReservation(g) => match ctx.engine.reservation(g.reservation) {
            Some(r) => ok(&convert::reservation_of(&r)),
            None => rejected(&Rejection::ReservationNotFound(g.reservation)),
        },
        Op::SetLowStock(b) => exec(ctx, (b.request_id, fp), low_stock_command(&b), a).await,
        Op::Ack(b) => match ctx.engine.ack_position(&b.name, b.seq).await {
            Ok(()) => ok(&protocol::Empty {}),
            Err(f) => failure(&f),
        },
        // The connection runs these itself when they come alone (they change its state).
        Op::Subscribe(_) | Op::Unsubscribe => rejected(&Rejection::invalid(
            "SUBSCRIBE and UNSUBSCRIBE must be the only operation of their request frame",
        )),
    }
}

async fn get_sku(ctx: &Ctx, s: &str) -> Result<crate::protocol::WireSku, Failure> {
    let id = SkuId::new(s)?;
    let v = ctx.engine.get(&id).await?;
    Ok(convert::sku_of(&v))
}

async fn get_skus(ctx: &Ctx, skus: &[String]) -> OpResult {
    let max = ctx.config.max_batch_ops;
    if skus.len() > max {
        let msg = format!("{} skus; at most {max} per get-many", skus.len());
        return failed(status::LIMIT_EXCEEDED, msg);
    }
    let mut out = Vec::with_capacity(skus.len());
    for r in join_all(skus.iter().map(|s| get_sku(ctx, s))).await {
        match r {
            Ok(v) => out.push(Some(v)),
            Err(Failure::Rejected(Rejection::UnknownSku(_))) => out.push(None),
            Err(f) => return failure(&f),
        }
    }
    ok(&WireSkus { skus: out })
}

fn server_info(ctx: &Ctx) -> ServerInfo {
    let s = ctx.engine.stats();
    ServerInfo {
        server_name: ctx.config.server_name.clone(),
        server_version: env!("CARGO_PKG_VERSION").to_string(),
        protocol_version: protocol::PROTOCOL_VERSION,
        skus: s.skus as u64,
        reservations: s.reservations as u64,
        connections: ctx
            .stats
            .connections_open
            .load(std::sync::atomic::Ordering::Relaxed),
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
