//! Runs the operations of one request frame against the engine and builds their results.
//! Every outcome, including a body that does not decode, becomes a per-operation status:
//! nothing an operation carries can fail the connection or panic the server.

use std::sync::Arc;

use futures::future::join_all;
use serde::Serialize;

use crate::domain::{Rejection, SkuId};
use crate::engine::{Command, Engine, Failure, Outcome, Request};
use crate::protocol::ops::is_reserved;
use crate::protocol::{self, failed, opcode, status, Op, OpResult, RawOp, ReserveRef, Role};
use crate::protocol::{CompareFacts, InsufficientFacts, Pong, ServerInfo, WireSkus};

use super::convert::{self, *};
use super::status::{of_engine_error, of_rejection};
use super::{ServerConfig, ServerStats};

/// What an operation needs besides its body.
#[derive(Clone)]
pub(crate) struct Ctx {
    pub engine: Arc<Engine>,
    pub config: Arc<ServerConfig>,
    pub stats: Arc<ServerStats>,
    /// The connections' memory budget (`max_connections_memory_bytes`).
    pub budget: Arc<super::budget::Budget>,
    /// The thread large reads run on (`heavy.rs`).
    pub heavy: Arc<super::heavy::HeavyReads>,
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
        Rejection::InUse(u) => protocol::encode_payload(&convert::in_use_facts(u)),
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

/// Runs the operations of one request frame; results in request order. Every mutating
/// operation of the frame goes to the engine in one call (`Engine::execute_frame`: one
/// reply buffer, one durability wait); the others (reads, ping, ack) run beside it.
pub(crate) async fn run_batch(ctx: &Ctx, role: Role, ops: &[RawOp]) -> Vec<OpResult> {
    let started = crate::metrics::op_clock();
    if let [raw] = ops {
        // One operation (an unpipelined client's every request): the same plan and engine
        // call without the bookkeeping that keeps many in request order.
        let catalog = ctx.engine.catalog();
        let ids = SharedIds {
            engine: Some(&ctx.engine),
            catalog: &catalog,
        };
        let result = match plan(ctx, role, raw, &ids) {
            Plan::Answer(r) => r,
            Plan::Write(req, fp, on_ok) => {
                match ctx.engine.execute_frame(vec![(req, fp)]).await.pop() {
                    Some(Ok(outcome)) => on_ok(&outcome),
                    Some(Err(f)) => failure(&f),
                    None => failed(status::INTERNAL_ERROR, "operation not answered"),
                }
            }
            Plan::Other(op) => run_other(ctx, op).await,
        };
        let results = vec![result];
        record_latency(started, ops, &results);
        return results;
    }
    let mut results: Vec<Option<OpResult>> = (0..ops.len()).map(|_| None).collect();
    let mut writes = Vec::with_capacity(ops.len());
    let mut writes_at = Vec::with_capacity(ops.len());
    let mut others = Vec::new();
    // One catalog snapshot for the frame's ids (reserves resolve their channel from it).
    let catalog = ctx.engine.catalog();
    let ids = SharedIds {
        engine: Some(&ctx.engine),
        catalog: &catalog,
    };
    for (i, raw) in ops.iter().enumerate() {
        match plan(ctx, role, raw, &ids) {
            Plan::Answer(r) => results[i] = Some(r),
            Plan::Write(req, fp, on_ok) => {
                writes.push((req, fp));
                writes_at.push((i, on_ok));
            }
            Plan::Other(op) => others.push((i, op)),
        }
    }
    let writes_fut = async {
        if writes.is_empty() {
            Vec::new()
        } else {
            ctx.engine.execute_frame(writes).await
        }
    };
    let others_fut = join_all(
        others
            .into_iter()
            .map(|(i, op)| async move { (i, run_other(ctx, op).await) }),
    );
    let (answers, others) = futures::join!(writes_fut, others_fut);
    for ((i, on_ok), answer) in writes_at.into_iter().zip(answers) {
        results[i] = Some(match answer {
            Ok(outcome) => on_ok(&outcome),
            Err(f) => failure(&f),
        });
    }
    for (i, r) in others {
        results[i] = Some(r);
    }
    let results: Vec<OpResult> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| failed(status::INTERNAL_ERROR, "operation not answered")))
        .collect();
    record_latency(started, ops, &results);
    results
}

/// Records the frame's latency for each of its operations.
fn record_latency(started: Option<std::time::Instant>, ops: &[RawOp], results: &[OpResult]) {
    if let Some(t) = started {
        // Every operation gets the frame's latency: one clock read, and one recording per
        // run of equal (opcode, status) (a batch of reserves is one run).
        let elapsed = t.elapsed();
        let mut run: Option<(u16, u16, usize)> = None;
        for (raw, r) in ops.iter().zip(results) {
            match &mut run {
                Some((op, st, n)) if *op == raw.opcode && *st == r.status => *n += 1,
                _ => {
                    if let Some((op, st, n)) = run.take() {
                        crate::metrics::record_ops(op, st, elapsed, n);
                    }
                    run = Some((raw.opcode, r.status, 1));
                }
            }
        }
        if let Some((op, st, n)) = run {
            crate::metrics::record_ops(op, st, elapsed, n);
        }
    }
}

/// What a frame does with one operation.
enum Plan {
    /// Answered at once: forbidden, reserved, unknown, malformed, over a limit, rejected.
    Answer(OpResult),
    /// A mutating request for the engine's frame, and how its outcome is encoded.
    Write(Request, u64, fn(&Outcome) -> OpResult),
    /// A read or a connection-level operation.
    Other(Op),
}

fn plan(ctx: &Ctx, role: Role, raw: &RawOp, ids: &SharedIds<'_>) -> Plan {
    if !role.may(raw.opcode) {
        return Plan::Answer(failed(
            status::FORBIDDEN,
            format!("role {role:?} may not run opcode {:#06x}", raw.opcode),
        ));
    }
    if is_reserved(raw.opcode) {
        return Plan::Answer(failed(
            status::NOT_IMPLEMENTED,
            format!("opcode {:#06x} is reserved for a later version", raw.opcode),
        ));
    }
    if raw.opcode == opcode::RESERVE {
        // The hot path: decoded in place, its ids resolved to the engine's shared copies.
        // A body that does not decode takes the general path below, which words the error.
        if let Ok(r) = protocol::ops::decode_reserve_ref(&raw.body) {
            return plan_reserve(ctx, &r, fingerprint(raw), ids);
        }
    }
    match Op::from_raw(raw) {
        Ok(Some(op)) => plan_typed(ctx, op, fingerprint(raw), ids),
        Ok(None) => Plan::Answer(failed(
            status::UNKNOWN_OPERATION,
            format!("unknown opcode {:#06x}", raw.opcode),
        )),
        Err(e) => Plan::Answer(failed(
            status::PROTOCOL_ERROR,
            format!("opcode {:#06x}: {e}", raw.opcode),
        )),
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

fn write(
    (id, fp): (u128, u64),
    cmd: Result<Command, Rejection>,
    on_ok: fn(&Outcome) -> OpResult,
) -> Plan {
    match cmd {
        Ok(command) => Plan::Write(Request { id, command }, fp, on_ok),
        Err(r) => Plan::Answer(rejected(&r)),
    }
}

fn reserved_result(o: &Outcome) -> OpResult {
    OpResult {
        status: status::OK,
        message: String::new(),
        body: convert::reserved_bytes(o),
    }
}
fn applied_result(o: &Outcome) -> OpResult {
    ok(&convert::applied_of(o))
}

/// A `RESERVE` decoded in place: the same checks, command and answers as
/// [`plan_typed`] gives the owned body.
fn plan_reserve(ctx: &Ctx, r: &ReserveRef<'_>, fp: u64, ids: &SharedIds<'_>) -> Plan {
    let max = ctx.config.max_lines_per_reservation;
    if r.lines.len() > max {
        let msg = format!("{} lines; at most {max} per reservation", r.lines.len());
        return Plan::Answer(failed(status::LIMIT_EXCEEDED, msg));
    }
    write(
        (r.request_id, fp),
        reserve_command_ref(r, ids),
        reserved_result,
    )
}

fn plan_typed(ctx: &Ctx, op: Op, fp: u64, ids: &SharedIds<'_>) -> Plan {
    let a = applied_result;
    match op {
        Op::Reserve(r) => {
            let max = ctx.config.max_lines_per_reservation;
            if r.lines.len() > max {
                let msg = format!("{} lines; at most {max} per reservation", r.lines.len());
                return Plan::Answer(failed(status::LIMIT_EXCEEDED, msg));
            }
            write((r.request_id, fp), reserve_command(&r), reserved_result)
        }
        Op::Fulfill(f) => write((f.request_id, fp), fulfill_command(&f), a),
        Op::Release(r) => {
            let c = Ok(Command::Release {
                reservation: r.reservation,
            });
            write((r.request_id, fp), c, a)
        }
        Op::Extend(e) => {
            let c = Ok(Command::Extend {
                reservation: e.reservation,
                ttl_ms: e.ttl_ms,
            });
            write((e.request_id, fp), c, a)
        }
        Op::Adjust(b) => write((b.request_id, fp), adjust_command(&b, ids), a),
        Op::SetOnHand(b) => write((b.request_id, fp), set_on_hand_command(&b, ids), a),
        Op::Move(b) => write((b.request_id, fp), move_command(&b, ids), a),
        Op::Transfer(b) => write((b.request_id, fp), transfer_command(&b, ids), a),
        Op::SetSafetyStock(b) => write((b.request_id, fp), safety_command(&b, ids), a),
        Op::SetIncoming(b) => write((b.request_id, fp), incoming_command(&b, ids), a),
        Op::UpsertLocation(b) => write((b.request_id, fp), location_command(&b), a),
        Op::UpsertChannel(b) => write((b.request_id, fp), channel_command(&b, ids), a),
        Op::SetLowStock(b) => write((b.request_id, fp), low_stock_command(&b), a),
        Op::DeleteLocation(b) => write((b.request_id, fp), delete_location_command(&b), a),
        Op::DeleteChannel(b) => write((b.request_id, fp), delete_channel_command(&b), a),
        Op::SetStockoutThreshold(b) => write((b.request_id, fp), stockout_threshold_command(&b), a),
        // The connection runs these itself when they come alone (they change its state).
        Op::Subscribe(_) | Op::Unsubscribe => Plan::Answer(rejected(&Rejection::invalid(
            "SUBSCRIBE and UNSUBSCRIBE must be the only operation of their request frame",
        ))),
        other => Plan::Other(other),
    }
}

/// Runs the read `read` builds, given its own copy of the context, on the heavy reads'
/// thread (`heavy.rs`).
async fn on_heavy<F, Fut>(ctx: &Ctx, read: F) -> OpResult
where
    F: FnOnce(Ctx) -> Fut,
    Fut: std::future::Future<Output = OpResult> + Send + 'static,
{
    ctx.heavy.run(read(ctx.clone())).await
}

/// A read's value as a successful result, or its failure.
fn answer<T: Serialize>(r: Result<T, Failure>) -> OpResult {
    match r {
        Ok(v) => ok(&v),
        Err(f) => failure(&f),
    }
}

/// Runs a read or connection-level operation.
async fn run_other(ctx: &Ctx, op: Op) -> OpResult {
    match op {
        Op::Ping => ok(&Pong {
            server_time_ms: now_ms(),
        }),
        Op::ServerInfo => ok(&server_info(ctx)),
        Op::ListLocations => ok(&convert::locations_of(&ctx.engine.catalog())),
        Op::ListChannels => ok(&convert::channels_of(&ctx.engine.catalog())),
        Op::GetSku(g) => match get_sku(ctx, &g.sku).await {
            Ok(v) => ok(&v),
            Err(f) => failure(&f),
        },
        Op::GetSkus(g) if g.skus.len() <= super::heavy::HEAVY_GET_SKUS => {
            get_skus(ctx, &g.skus).await
        }
        Op::GetSkus(g) => on_heavy(ctx, |c| async move { get_skus(&c, &g.skus).await }).await,
        Op::ExplainAtp(e) => match explain(ctx, &e).await {
            Ok(v) => ok(&v),
            Err(f) => failure(&f),
        },
        Op::Velocity(v) => match velocity(ctx, &v.sku).await {
            Ok(v) => ok(&v),
            Err(f) => failure(&f),
        },
        Op::AtRisk(q) => on_heavy(ctx, |c| async move { answer(at_risk(&c, &q).await) }).await,
        Op::AtRiskRegion(q) => {
            on_heavy(ctx, |c| async move { answer(at_risk_region(&c, &q).await) }).await
        }
        Op::RebalanceList(q) => {
            on_heavy(ctx, |c| async move { answer(rebalance_list(&c, &q).await) }).await
        }
        Op::ListSkus(q) => match list_skus(ctx, &q) {
            Ok(v) => ok(&v),
            Err(r) => rejected(&r),
        },
        Op::ListReservations(q) => match list_reservations(ctx, &q).await {
            Ok(v) => ok(&v),
            Err(f) => failure(&f),
        },
        Op::SkuHistory(q) if ctx.engine.log_stats().is_none() => failed(
            status::NOT_IMPLEMENTED,
            format!(
                "SKU_HISTORY for {}: this server keeps no data directory, so no history",
                q.sku
            ),
        ),
        Op::SkuHistory(q) => match sku_history(ctx, &q).await {
            Ok(v) => ok(&v),
            Err(f) => failure(&f),
        },
        Op::GetReservation(g) => match ctx.engine.reservation(g.reservation) {
            Some(r) => ok(&convert::reservation_of(&r)),
            None => rejected(&Rejection::ReservationNotFound(g.reservation)),
        },
        Op::Ack(b) if crate::feed::subscription::is_reserved_name(&b.name) => {
            rejected(&Rejection::invalid(format!(
                "names starting with {:?} or {:?} hold webhook and NATS bridge positions; \
                 a client cannot ACK them",
                crate::feed::subscription::RESERVED_NAME_PREFIX,
                crate::feed::subscription::RESERVED_NATS_PREFIX
            )))
        }
        Op::Ack(b) => match ctx.engine.ack_position(&b.name, b.seq).await {
            Ok(()) => ok(&protocol::Empty {}),
            Err(f) => failure(&f),
        },
        Op::ListSubscriptions(l) => ok(&convert::subscriptions_page(
            &ctx.engine.feed_positions(),
            ctx.engine.feed().head(),
            &l.after,
            l.limit,
        )),
        Op::DeleteSubscription(d) => match ctx.engine.delete_position(&d.name).await {
            Ok(()) => ok(&protocol::Empty {}),
            Err(f) => failure(&f),
        },
        Op::Backup(b) => backup(ctx, &b).await,
        other => failed(
            status::INTERNAL_ERROR,
            format!("operation {other:?} has no read path"),
        ),
    }
}

async fn get_sku(ctx: &Ctx, s: &str) -> Result<crate::protocol::WireSku, Failure> {
    let id = SkuId::new(s)?;
    let v = ctx.engine.get(&id).await?;
    Ok(convert::sku_of(&v))
}

async fn explain(
    ctx: &Ctx,
    e: &crate::protocol::ExplainAtp,
) -> Result<crate::protocol::WireAtpExplanation, Failure> {
    let (sku, channel) = convert::explain_ids(e)?;
    let v = ctx.engine.explain(&sku, &channel).await?;
    Ok(convert::explanation_of(&v))
}

async fn velocity(ctx: &Ctx, s: &str) -> Result<crate::protocol::WireVelocity, Failure> {
    let id = SkuId::new(s)?;
    let v = ctx.engine.velocity(&id).await?;
    Ok(convert::velocity_of(&id, &v))
}

async fn at_risk(
    ctx: &Ctx,
    q: &crate::protocol::AtRiskQuery,
) -> Result<crate::protocol::WireAtRisk, Failure> {
    let channel = crate::domain::ChannelId::new(&q.channel)?;
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let list = ctx
        .engine
        .at_risk(&channel, usize::from(q.window), limit)
        .await?;
    Ok(convert::at_risk_of(&channel, q.window, &list))
}

async fn at_risk_region(
    ctx: &Ctx,
    q: &crate::protocol::AtRiskRegionQuery,
) -> Result<crate::protocol::WireAtRiskRegion, Failure> {
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let list = ctx
        .engine
        .at_risk_region(&q.region, usize::from(q.window), limit)
        .await?;
    Ok(convert::at_risk_region_of(&q.region, q.window, &list))
}

/// `REBALANCE_LIST`: the policy checked, the SKU id checked, the list from the engine,
/// cut (`truncated`) where the next recommendation would pass `max_frame_bytes` less
/// [`LIST_SKUS_FRAME_RESERVE`].
async fn rebalance_list(
    ctx: &Ctx,
    q: &crate::protocol::RebalanceQuery,
) -> Result<crate::protocol::WireRebalance, Failure> {
    let policy = convert::rebalance_policy(q)?;
    let sku = q.sku.as_deref().map(SkuId::new).transpose()?;
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let list = ctx
        .engine
        .rebalance(sku.as_ref(), q.region.as_deref(), policy, limit)
        .await?;
    let budget = ctx
        .config
        .max_frame_bytes
        .saturating_sub(LIST_SKUS_FRAME_RESERVE);
    let mut used = 0usize;
    let mut recommendations = Vec::with_capacity(list.len());
    for r in &list {
        let w = convert::recommendation_of(r);
        used += convert::recommendation_bytes(&w);
        if used > budget {
            break;
        }
        recommendations.push(w);
    }
    Ok(crate::protocol::WireRebalance {
        // Whole hours on the wire: the policy was built from them or is the default.
        near_hours: policy.near_hours as u32,
        surplus_hours: policy.surplus_hours as u32,
        window: u8::try_from(policy.window).unwrap_or(u8::MAX),
        truncated: recommendations.len() < list.len(),
        recommendations,
    })
}

/// Most ids in one `LIST_SKUS` page.
pub const MAX_LIST_SKUS: u32 = 1000;

/// Bytes of a `LIST_SKUS` answer kept for the frame header, the result header and the
/// page's other fields: the ids stop before they would pass `max_frame_bytes` less this.
const LIST_SKUS_FRAME_RESERVE: usize = 160;

/// One page of SKU ids (`LIST_SKUS`): at most `limit` ids and at most
/// `max_frame_bytes - LIST_SKUS_FRAME_RESERVE` bytes of them (each counted as its length
/// plus 8, a generous bound on its encoding); a page cut by bytes has `next_after` set.
fn list_skus(
    ctx: &Ctx,
    q: &crate::protocol::ListSkus,
) -> Result<crate::protocol::WireSkuList, Rejection> {
    if !(1..=MAX_LIST_SKUS).contains(&q.limit) {
        return Err(Rejection::invalid(format!(
            "limit {}: must be 1..={MAX_LIST_SKUS}",
            q.limit
        )));
    }
    let max_id = crate::domain::limits::MAX_SKU_ID_BYTES;
    if q.prefix.len() > max_id || q.after.as_ref().is_some_and(|a| a.len() > max_id) {
        return Err(Rejection::invalid(format!(
            "prefix and after are at most {max_id} bytes (a SKU id's limit)"
        )));
    }
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let (page, more) = ctx.engine.sku_page(&q.prefix, q.after.as_deref(), limit);
    let budget = ctx
        .config
        .max_frame_bytes
        .saturating_sub(LIST_SKUS_FRAME_RESERVE);
    let mut used = 0usize;
    let mut skus = Vec::with_capacity(page.len());
    for id in &page {
        used += id.as_str().len() + 8;
        if used > budget {
            break;
        }
        skus.push(id.to_string());
    }
    let cut = skus.len() < page.len();
    let next_after = if more || cut {
        skus.last().cloned()
    } else {
        None
    };
    Ok(crate::protocol::WireSkuList { skus, next_after })
}

/// `BACKUP` (admin only, by the role matrix): the engine writes a backup into the path the
/// request names, on this machine. Refusals and failures keep their own statuses (21, 22),
/// a second backup while one runs is `busy` (13); the path is bounded in bytes.
async fn backup(ctx: &Ctx, b: &protocol::Backup) -> OpResult {
    use crate::engine::BackupError;
    if b.to.len() > protocol::MAX_BACKUP_PATH_BYTES {
        return failed(
            status::BACKUP_REFUSED,
            format!(
                "the path is {} bytes; at most {}",
                b.to.len(),
                protocol::MAX_BACKUP_PATH_BYTES
            ),
        );
    }
    let target = std::path::PathBuf::from(&b.to);
    if let Some(root) = &ctx.config.backup_dir {
        // The parent resolved (symbolic links, `..`), as the engine will use it.
        let inside = target
            .parent()
            .and_then(|p| std::fs::canonicalize(p).ok())
            .is_some_and(|p| p.starts_with(root));
        if !inside {
            return failed(
                status::BACKUP_REFUSED,
                format!(
                    "backup target {} refused: not inside the server's backup_dir {}",
                    b.to,
                    root.display()
                ),
            );
        }
    }
    match ctx.engine.backup(target).await {
        Ok(r) => ok(&protocol::WireBackup {
            as_of_seq: r.as_of_seq,
            checkpoint_start_seq: r.checkpoint_start_seq,
            skus: r.skus as u64,
            bytes: r.bytes,
            log_records: r.log_records,
            duration_ms: r.duration.as_millis() as u64,
            dir: r.dir.display().to_string(),
        }),
        Err(BackupError::Busy) => rejected(&Rejection::Busy),
        Err(e @ BackupError::Refused(_)) => failed(status::BACKUP_REFUSED, e.to_string()),
        Err(e @ BackupError::Failed(_)) => failed(status::BACKUP_FAILED, e.to_string()),
        Err(BackupError::Engine(e)) => failed(of_engine_error(&e), e.to_string()),
    }
}

/// One page of the reservations holding a SKU (`LIST_RESERVATIONS`), from the SKU's own
/// holds (a copy of its state, as `GET_SKU` sees it; a passive SKU is not activated): by
/// reservation id, at most `limit` and at most `max_frame_bytes - LIST_SKUS_FRAME_RESERVE`
/// bytes of encoded holds; a page cut either way has `next_after` set.
async fn list_reservations(
    ctx: &Ctx,
    q: &crate::protocol::ListReservations,
) -> Result<crate::protocol::WireSkuReservations, Failure> {
    if !(1..=MAX_LIST_SKUS).contains(&q.limit) {
        return Err(
            Rejection::invalid(format!("limit {}: must be 1..={MAX_LIST_SKUS}", q.limit)).into(),
        );
    }
    let sku = SkuId::new(&q.sku)?;
    let state = ctx.engine.sku_state(&sku).await?;
    let mut ids: Vec<u128> = state
        .holds
        .keys()
        .copied()
        .filter(|id| q.after.is_none_or(|a| *id > a))
        .collect();
    ids.sort_unstable();
    let limit = usize::try_from(q.limit).unwrap_or(usize::MAX);
    let budget = ctx
        .config
        .max_frame_bytes
        .saturating_sub(LIST_SKUS_FRAME_RESERVE + q.sku.len());
    let mut used = 0usize;
    let mut out = Vec::with_capacity(ids.len().min(limit));
    for id in ids.iter().take(limit) {
        let h = &state.holds[id];
        let hold = crate::protocol::WireSkuHold {
            reservation: *id,
            channel: h.channel.to_string(),
            expires_at_ms: h.expires_at_ms,
            allocations: h
                .allocations
                .iter()
                .map(|a| (a.location.to_string(), a.qty))
                .collect(),
        };
        // Its encoding: id 16, channel 8 + len, expiry 8, vec 8 + (8 + len + 4) a line.
        used += 40
            + hold.channel.len()
            + hold
                .allocations
                .iter()
                .map(|(l, _)| 12 + l.len())
                .sum::<usize>();
        if used > budget {
            break;
        }
        out.push(hold);
    }
    let next_after = if out.len() < ids.len() {
        out.last().map(|h| h.reservation)
    } else {
        None
    };
    Ok(crate::protocol::WireSkuReservations {
        sku: sku.to_string(),
        reservations: out,
        next_after,
    })
}

/// One page of a SKU's durable history (`SKU_HISTORY`), oldest first: at most `limit`
/// (1..=1000) events and at most `max_frame_bytes - LIST_SKUS_FRAME_RESERVE - sku length`
/// bytes of them (`WireHistoryEvent::encoded_len`); a page cut either way, or by the
/// engine's bound on log records read per call, has `next` set. An unknown SKU has an
/// empty history.
async fn sku_history(
    ctx: &Ctx,
    q: &crate::protocol::SkuHistory,
) -> Result<crate::protocol::WireSkuHistory, Failure> {
    let max = crate::engine::history::MAX_HISTORY_PAGE;
    if !(1..=max).contains(&q.limit) {
        return Err(Rejection::invalid(format!("limit {}: must be 1..={max}", q.limit)).into());
    }
    let sku = SkuId::new(&q.sku)?;
    let page = ctx
        .engine
        .history(&sku, (q.from_seq, q.from_index), q.limit)
        .await?;
    let budget = ctx
        .config
        .max_frame_bytes
        .saturating_sub(LIST_SKUS_FRAME_RESERVE + q.sku.len());
    let mut used = 0usize;
    let mut events = Vec::with_capacity(page.entries.len());
    let mut next = page.next;
    for e in &page.entries {
        let w = convert::history_event_of(e);
        used += w.encoded_len();
        if used > budget {
            next = Some(e.cursor());
            break;
        }
        events.push(w);
    }
    Ok(crate::protocol::WireSkuHistory {
        sku: sku.to_string(),
        base_seq: page.base,
        events,
        next,
    })
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
