//! Opcodes, the typed [`Op`] enum (one variant per operation body), and which role may run
//! which opcode. The opcode table is the wire contract; `Op` is the Rust convenience that
//! turns a body into a [`RawOp`] and back.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::messages::*;
use super::ProtocolError;
use crate::codec;

/// Opcodes (`u16`). Ranges: 0x00xx meta, 0x01xx reservations, 0x02xx stock, 0x03xx catalog,
/// 0x04xx reads, 0x05xx subscriptions, 0x06xx history, 0x07xx maintenance (admin).
pub mod opcode {
    /// Liveness check.
    pub const PING: u16 = 0x0001;
    /// Server name, version, counts.
    pub const SERVER_INFO: u16 = 0x0002;
    /// Reserve a cart.
    pub const RESERVE: u16 = 0x0101;
    /// Fulfil a reservation.
    pub const FULFILL: u16 = 0x0102;
    /// Release a reservation.
    pub const RELEASE: u16 = 0x0103;
    /// Extend a reservation.
    pub const EXTEND: u16 = 0x0104;
    /// Adjust sellable on hand.
    pub const ADJUST: u16 = 0x0201;
    /// Set sellable on hand (optionally compare-and-set).
    pub const SET_ON_HAND: u16 = 0x0202;
    /// Move units between stock states.
    pub const MOVE: u16 = 0x0203;
    /// Transfer units between locations.
    pub const TRANSFER: u16 = 0x0204;
    /// Set safety stock.
    pub const SET_SAFETY_STOCK: u16 = 0x0205;
    /// Set incoming.
    pub const SET_INCOMING: u16 = 0x0206;
    /// Create or replace a location.
    pub const UPSERT_LOCATION: u16 = 0x0301;
    /// Create or replace a channel.
    pub const UPSERT_CHANNEL: u16 = 0x0302;
    /// List locations.
    pub const LIST_LOCATIONS: u16 = 0x0303;
    /// List channels.
    pub const LIST_CHANNELS: u16 = 0x0304;
    /// Set a channel's (or one SKU's) low-stock threshold (admin).
    pub const SET_LOW_STOCK: u16 = 0x0305;
    /// Delete a location nothing refers to (admin).
    pub const DELETE_LOCATION: u16 = 0x0306;
    /// Delete a channel no open reservation is on (admin).
    pub const DELETE_CHANNEL: u16 = 0x0307;
    /// Set a channel's stockout-projection threshold in hours (admin).
    pub const SET_STOCKOUT_THRESHOLD: u16 = 0x0308;
    /// Read one SKU.
    pub const GET_SKU: u16 = 0x0401;
    /// Read several SKUs.
    pub const GET_SKUS: u16 = 0x0402;
    /// Read one reservation.
    pub const GET_RESERVATION: u16 = 0x0403;
    /// Explain one channel's ATP for one SKU.
    pub const EXPLAIN_ATP: u16 = 0x0404;
    /// Demand velocity and projected stockout of one SKU on every channel.
    pub const VELOCITY: u16 = 0x0405;
    /// The SKUs of one channel whose projected stockout comes first (adapter, admin).
    pub const AT_RISK: u16 = 0x0406;
    /// One page of the known SKU ids by prefix.
    pub const LIST_SKUS: u16 = 0x0407;
    /// One page of the open reservations holding a SKU.
    pub const LIST_RESERVATIONS: u16 = 0x0408;
    /// Rebalance recommendations of one SKU or ranked over every SKU (adapter, admin).
    pub const REBALANCE_LIST: u16 = 0x0409;
    /// The SKUs of one region whose projected stockout comes first (adapter, admin).
    pub const AT_RISK_REGION: u16 = 0x040A;
    /// Start a stock-change subscription on this connection (alone in its request).
    pub const SUBSCRIBE: u16 = 0x0501;
    /// End this connection's subscription (alone in its request).
    pub const UNSUBSCRIBE: u16 = 0x0502;
    /// Store the position of a named subscription.
    pub const ACK: u16 = 0x0503;
    /// The stored named positions, by name, a page at a time (adapter, admin).
    pub const LIST_SUBSCRIPTIONS: u16 = 0x0504;
    /// Forget a stored named position (admin).
    pub const DELETE_SUBSCRIPTION: u16 = 0x0505;
    /// One page of a SKU's durable history (adapter, admin).
    pub const SKU_HISTORY: u16 = 0x0601;
    /// Write a backup of the whole state into a new server-local directory (admin).
    pub const BACKUP: u16 = 0x0701;
}

/// What a connection may do, chosen by its token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Checkout services: reserve, fulfil, release, extend, reads.
    Checkout,
    /// Channel adapters: reads and subscriptions.
    Adapter,
    /// Everything.
    Admin,
}

impl Role {
    /// Parses `checkout`, `adapter` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "checkout" => Some(Role::Checkout),
            "adapter" => Some(Role::Adapter),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// Whether this role may run `opcode`. Unknown opcodes are "allowed" here so that the
    /// caller answers them `UNKNOWN_OPERATION` rather than `FORBIDDEN`.
    pub fn may(self, op: u16) -> bool {
        use opcode::*;
        let read = matches!(
            op,
            PING | SERVER_INFO
                | GET_SKU
                | GET_SKUS
                | GET_RESERVATION
                | EXPLAIN_ATP
                | VELOCITY
                | LIST_SKUS
                | LIST_RESERVATIONS
                | LIST_LOCATIONS
                | LIST_CHANNELS
        );
        match self {
            Role::Admin => true,
            Role::Checkout => read || matches!(op, RESERVE | FULFILL | RELEASE | EXTEND),
            // AT_RISK, AT_RISK_REGION and REBALANCE_LIST read every SKU: for the channel
            // side and operators, not checkout.
            Role::Adapter => {
                read || matches!(
                    op,
                    SUBSCRIBE
                        | UNSUBSCRIBE
                        | ACK
                        | LIST_SUBSCRIPTIONS
                        | SKU_HISTORY
                        | AT_RISK
                        | AT_RISK_REGION
                        | REBALANCE_LIST
                )
            }
        }
    }
}

/// A typed operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// `PING`
    Ping,
    /// `SERVER_INFO`
    ServerInfo,
    /// `RESERVE`
    Reserve(Reserve),
    /// `FULFILL`
    Fulfill(Fulfill),
    /// `RELEASE`
    Release(Release),
    /// `EXTEND`
    Extend(Extend),
    /// `ADJUST`
    Adjust(Adjust),
    /// `SET_ON_HAND`
    SetOnHand(SetOnHand),
    /// `MOVE`
    Move(MoveStock),
    /// `TRANSFER`
    Transfer(Transfer),
    /// `SET_SAFETY_STOCK`
    SetSafetyStock(SetSafetyStock),
    /// `SET_INCOMING`
    SetIncoming(SetIncoming),
    /// `UPSERT_LOCATION`
    UpsertLocation(UpsertLocation),
    /// `UPSERT_CHANNEL`
    UpsertChannel(UpsertChannel),
    /// `LIST_LOCATIONS`
    ListLocations,
    /// `LIST_CHANNELS`
    ListChannels,
    /// `GET_SKU`
    GetSku(GetSku),
    /// `GET_SKUS`
    GetSkus(GetSkus),
    /// `GET_RESERVATION`
    GetReservation(GetReservation),
    /// `EXPLAIN_ATP`
    ExplainAtp(ExplainAtp),
    /// `VELOCITY`
    Velocity(GetVelocity),
    /// `AT_RISK`
    AtRisk(AtRiskQuery),
    /// `AT_RISK_REGION`
    AtRiskRegion(AtRiskRegionQuery),
    /// `REBALANCE_LIST`
    RebalanceList(RebalanceQuery),
    /// `LIST_SKUS`
    ListSkus(ListSkus),
    /// `LIST_RESERVATIONS`
    ListReservations(ListReservations),
    /// `SET_LOW_STOCK`
    SetLowStock(SetLowStock),
    /// `DELETE_LOCATION`
    DeleteLocation(DeleteLocation),
    /// `DELETE_CHANNEL`
    DeleteChannel(DeleteChannel),
    /// `SET_STOCKOUT_THRESHOLD`
    SetStockoutThreshold(SetStockoutThreshold),
    /// `SUBSCRIBE`
    Subscribe(Subscribe),
    /// `UNSUBSCRIBE`
    Unsubscribe,
    /// `ACK`
    Ack(Ack),
    /// `LIST_SUBSCRIPTIONS`
    ListSubscriptions(ListSubscriptions),
    /// `DELETE_SUBSCRIPTION`
    DeleteSubscription(DeleteSubscription),
    /// `BACKUP`
    Backup(Backup),
    /// `SKU_HISTORY`
    SkuHistory(SkuHistory),
}

fn body<T: Serialize>(v: &T) -> Result<Vec<u8>, ProtocolError> {
    codec::encode(v).map_err(|e| ProtocolError::Encode(e.to_string()))
}

/// Decodes an operation's body sent by a peer, with a decode limit that scales with its
/// length ([`codec::decode_bounded`]): a few bytes cannot make the decoder allocate
/// megabytes.
fn decode_request_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    codec::decode_bounded(bytes).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// Decodes a `RESERVE` body borrowing its strings, with the limits of every request body:
/// the same answer as [`Op::from_raw`] gives for the opcode, without a `String` per id.
pub fn decode_reserve_ref(bytes: &[u8]) -> Result<super::messages::ReserveRef<'_>, ProtocolError> {
    if let Some(r) = reserve_ref_direct(bytes) {
        return Ok(r);
    }
    codec::decode_bounded(bytes).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// The wire layout of a `RESERVE` body read directly (serde through bincode costs ~1K
/// instructions per reserve, a visitor call per field and a `DecodeError` built and
/// dropped per body): u128 request id, u128 reservation, the channel (u64 length, UTF-8),
/// u64 line count and per line the SKU (u64 length, UTF-8), u32 qty and an optional
/// location (u8 tag 0 or 1, then u64 length, UTF-8), a bool (u8 0 or 1), u64 ttl, nothing
/// after. `None` for anything else; the caller then decodes with the codec, which accepts
/// nothing this refuses and words the error (a property test holds the two equal).
fn reserve_ref_direct(bytes: &[u8]) -> Option<super::messages::ReserveRef<'_>> {
    let mut r = Direct(bytes);
    let request_id = u128::from_le_bytes(r.array()?);
    let reservation = u128::from_le_bytes(r.array()?);
    let channel = r.str()?;
    let n = usize::try_from(u64::from_le_bytes(r.array()?)).ok()?;
    // Each line takes at least 13 bytes: a count the rest cannot hold is not allocated.
    if n > r.0.len() / 13 {
        return None;
    }
    let mut lines = Vec::with_capacity(n);
    for _ in 0..n {
        let sku = r.str()?;
        let qty = u32::from_le_bytes(r.array()?);
        let location = match r.byte()? {
            0 => None,
            1 => Some(r.str()?),
            _ => return None,
        };
        lines.push(super::messages::WireLineRef { sku, qty, location });
    }
    let allow_split = match r.byte()? {
        0 => false,
        1 => true,
        _ => return None,
    };
    let ttl_ms = u64::from_le_bytes(r.array()?);
    if !r.0.is_empty() {
        return None;
    }
    Some(super::messages::ReserveRef {
        request_id,
        reservation,
        channel,
        lines,
        allow_split,
        ttl_ms,
    })
}

/// A reader over the bytes left of a body (see [`reserve_ref_direct`], [`decode_push_batch`]).
struct Direct<'a>(&'a [u8]);

impl<'a> Direct<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn byte(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn str(&mut self) -> Option<&'a str> {
        let n = usize::try_from(u64::from_le_bytes(self.array()?)).ok()?;
        std::str::from_utf8(self.take(n)?).ok()
    }
}

/// Decodes an operation or result body (the client decodes results with it).
pub fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ProtocolError> {
    codec::decode(bytes).map_err(|e| ProtocolError::Decode(e.to_string()))
}

/// An ATP item of a `Push` payload whose strings borrow the payload's bytes
/// ([`decode_push_refs`]): [`WireAtp`](crate::protocol::WireAtp) without its two
/// allocations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WireAtpRef<'a> {
    /// Log sequence number of the change.
    pub seq: u64,
    /// When the engine accepted it (Unix ms).
    pub at_ms: u64,
    /// The SKU.
    pub sku: &'a str,
    /// The channel.
    pub channel: &'a str,
    /// ATP before.
    pub previous: u32,
    /// ATP after.
    pub atp: u32,
    /// See [`crate::protocol::cause`].
    pub cause: u8,
    /// See [`crate::protocol::transition`].
    pub transition: u8,
    /// Whether several changes were merged into this one.
    pub coalesced: bool,
}

impl WireAtpRef<'_> {
    /// The owned item.
    pub fn to_owned(&self) -> crate::protocol::WireAtp {
        crate::protocol::WireAtp {
            seq: self.seq,
            at_ms: self.at_ms,
            sku: self.sku.to_owned(),
            channel: self.channel.to_owned(),
            previous: self.previous,
            atp: self.atp,
            cause: self.cause,
            transition: self.transition,
            coalesced: self.coalesced,
        }
    }
}

/// One item of a `Push` payload as [`decode_push_refs`] gives it: an ATP item (nearly every
/// item a subscriber receives) borrowing the payload, any other item owned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushItemRef<'a> {
    /// [`PushItem::Atp`](crate::protocol::PushItem::Atp).
    Atp(WireAtpRef<'a>),
    /// Any other item.
    Other(crate::protocol::PushItem),
}

impl PushItemRef<'_> {
    /// Into the owned item (no copy of an item that is owned already).
    pub fn into_owned(self) -> crate::protocol::PushItem {
        match self {
            PushItemRef::Atp(a) => crate::protocol::PushItem::Atp(a.to_owned()),
            PushItemRef::Other(i) => i,
        }
    }

    /// A frame's items owned (what [`decode_push_batch`] and the client's `next` give).
    pub fn all_owned(items: Vec<PushItemRef<'_>>) -> Vec<crate::protocol::PushItem> {
        items.into_iter().map(PushItemRef::into_owned).collect()
    }
}

/// Decodes a `Push` payload ([`PushBatch`]) to what [`decode_body`] gives, and refuses what
/// it refuses: ATP items (nearly every item a subscriber receives) read field by field,
/// any other item through the codec. A subscriber spends most of its time here, and serde
/// goes through each ATP item's nine fields and two strings one call at a time.
pub fn decode_push_batch(bytes: &[u8]) -> Result<crate::protocol::PushBatch, ProtocolError> {
    let items = PushItemRef::all_owned(decode_push_refs(bytes)?);
    Ok(crate::protocol::PushBatch { items })
}

/// [`decode_push_batch`] with the ATP items' strings borrowed from `bytes`: one allocation
/// per payload instead of two more per ATP item. The whole payload is checked before
/// anything is returned.
pub fn decode_push_refs(bytes: &[u8]) -> Result<Vec<PushItemRef<'_>>, ProtocolError> {
    use crate::protocol::PushItem;
    let bad = |m: &str| ProtocolError::Decode(format!("push batch: {m}"));
    let mut r = Direct(bytes);
    let n = u64::from_le_bytes(r.array().ok_or_else(|| bad("truncated item count"))?);
    // Each item takes at least its 4-byte variant index: a count beyond that is refused
    // before anything is allocated for it.
    if n > (r.0.len() / 4) as u64 {
        return Err(bad("more items announced than bytes for them"));
    }
    let mut items = Vec::with_capacity(n as usize);
    for _ in 0..n {
        if r.0.get(..4) == Some(&0u32.to_le_bytes()[..]) {
            r.take(4);
            let atp = (|| {
                Some(WireAtpRef {
                    seq: u64::from_le_bytes(r.array()?),
                    at_ms: u64::from_le_bytes(r.array()?),
                    sku: r.str()?,
                    channel: r.str()?,
                    previous: u32::from_le_bytes(r.array()?),
                    atp: u32::from_le_bytes(r.array()?),
                    cause: r.byte()?,
                    transition: r.byte()?,
                    coalesced: match r.byte()? {
                        0 => false,
                        1 => true,
                        _ => return None,
                    },
                })
            })()
            .ok_or_else(|| bad("malformed ATP item"))?;
            items.push(PushItemRef::Atp(atp));
        } else {
            let (item, used) = codec::decode_prefix::<PushItem>(r.0)
                .map_err(|e| ProtocolError::Decode(e.to_string()))?;
            r.take(used);
            items.push(PushItemRef::Other(item));
        }
    }
    if !r.0.is_empty() {
        return Err(bad(&format!("{} byte(s) after the last item", r.0.len())));
    }
    Ok(items)
}

impl Op {
    /// Its opcode.
    pub fn opcode(&self) -> u16 {
        use opcode::*;
        match self {
            Op::Ping => PING,
            Op::ServerInfo => SERVER_INFO,
            Op::Reserve(_) => RESERVE,
            Op::Fulfill(_) => FULFILL,
            Op::Release(_) => RELEASE,
            Op::Extend(_) => EXTEND,
            Op::Adjust(_) => ADJUST,
            Op::SetOnHand(_) => SET_ON_HAND,
            Op::Move(_) => MOVE,
            Op::Transfer(_) => TRANSFER,
            Op::SetSafetyStock(_) => SET_SAFETY_STOCK,
            Op::SetIncoming(_) => SET_INCOMING,
            Op::UpsertLocation(_) => UPSERT_LOCATION,
            Op::UpsertChannel(_) => UPSERT_CHANNEL,
            Op::ListLocations => LIST_LOCATIONS,
            Op::ListChannels => LIST_CHANNELS,
            Op::GetSku(_) => GET_SKU,
            Op::GetSkus(_) => GET_SKUS,
            Op::GetReservation(_) => GET_RESERVATION,
            Op::ExplainAtp(_) => EXPLAIN_ATP,
            Op::Velocity(_) => VELOCITY,
            Op::AtRisk(_) => AT_RISK,
            Op::AtRiskRegion(_) => AT_RISK_REGION,
            Op::RebalanceList(_) => REBALANCE_LIST,
            Op::ListSkus(_) => LIST_SKUS,
            Op::ListReservations(_) => LIST_RESERVATIONS,
            Op::SetLowStock(_) => SET_LOW_STOCK,
            Op::DeleteLocation(_) => DELETE_LOCATION,
            Op::DeleteChannel(_) => DELETE_CHANNEL,
            Op::SetStockoutThreshold(_) => SET_STOCKOUT_THRESHOLD,
            Op::Subscribe(_) => SUBSCRIBE,
            Op::Unsubscribe => UNSUBSCRIBE,
            Op::Ack(_) => ACK,
            Op::ListSubscriptions(_) => LIST_SUBSCRIPTIONS,
            Op::DeleteSubscription(_) => DELETE_SUBSCRIPTION,
            Op::Backup(_) => BACKUP,
            Op::SkuHistory(_) => SKU_HISTORY,
        }
    }

    /// The request id of a mutating operation (reads have none).
    pub fn request_id(&self) -> Option<u128> {
        Some(match self {
            Op::Reserve(b) => b.request_id,
            Op::Fulfill(b) => b.request_id,
            Op::Release(b) => b.request_id,
            Op::Extend(b) => b.request_id,
            Op::Adjust(b) => b.request_id,
            Op::SetOnHand(b) => b.request_id,
            Op::Move(b) => b.request_id,
            Op::Transfer(b) => b.request_id,
            Op::SetSafetyStock(b) => b.request_id,
            Op::SetIncoming(b) => b.request_id,
            Op::UpsertLocation(b) => b.request_id,
            Op::UpsertChannel(b) => b.request_id,
            Op::SetLowStock(b) => b.request_id,
            Op::DeleteLocation(b) => b.request_id,
            Op::DeleteChannel(b) => b.request_id,
            Op::SetStockoutThreshold(b) => b.request_id,
            _ => return None,
        })
    }

    /// Encodes it as a raw operation.
    pub fn to_raw(&self) -> Result<RawOp, ProtocolError> {
        let body = match self {
            Op::Ping | Op::ServerInfo | Op::ListLocations | Op::ListChannels | Op::Unsubscribe => {
                body(&Empty {})?
            }
            Op::Reserve(b) => body(b)?,
            Op::Fulfill(b) => body(b)?,
            Op::Release(b) => body(b)?,
            Op::Extend(b) => body(b)?,
            Op::Adjust(b) => body(b)?,
            Op::SetOnHand(b) => body(b)?,
            Op::Move(b) => body(b)?,
            Op::Transfer(b) => body(b)?,
            Op::SetSafetyStock(b) => body(b)?,
            Op::SetIncoming(b) => body(b)?,
            Op::UpsertLocation(b) => body(b)?,
            Op::UpsertChannel(b) => body(b)?,
            Op::GetSku(b) => body(b)?,
            Op::GetSkus(b) => body(b)?,
            Op::GetReservation(b) => body(b)?,
            Op::ExplainAtp(b) => body(b)?,
            Op::Velocity(b) => body(b)?,
            Op::AtRisk(b) => body(b)?,
            Op::AtRiskRegion(b) => body(b)?,
            Op::RebalanceList(b) => body(b)?,
            Op::ListSkus(b) => body(b)?,
            Op::ListReservations(b) => body(b)?,
            Op::SetLowStock(b) => body(b)?,
            Op::DeleteLocation(b) => body(b)?,
            Op::DeleteChannel(b) => body(b)?,
            Op::SetStockoutThreshold(b) => body(b)?,
            Op::Subscribe(b) => body(b)?,
            Op::Ack(b) => body(b)?,
            Op::ListSubscriptions(b) => body(b)?,
            Op::DeleteSubscription(b) => body(b)?,
            Op::Backup(b) => body(b)?,
            Op::SkuHistory(b) => body(b)?,
        };
        Ok(RawOp {
            opcode: self.opcode(),
            body,
        })
    }

    /// Decodes a raw operation. `Ok(None)`: the opcode is not one of [`Op`]'s (reserved or
    /// unknown); an error: the body does not decode.
    pub fn from_raw(raw: &RawOp) -> Result<Option<Op>, ProtocolError> {
        use opcode::*;
        let b = raw.body.as_slice();
        Ok(Some(match raw.opcode {
            PING => decode_request_body::<Empty>(b).map(|_| Op::Ping)?,
            SERVER_INFO => decode_request_body::<Empty>(b).map(|_| Op::ServerInfo)?,
            LIST_LOCATIONS => decode_request_body::<Empty>(b).map(|_| Op::ListLocations)?,
            LIST_CHANNELS => decode_request_body::<Empty>(b).map(|_| Op::ListChannels)?,
            RESERVE => Op::Reserve(decode_request_body(b)?),
            FULFILL => Op::Fulfill(decode_request_body(b)?),
            RELEASE => Op::Release(decode_request_body(b)?),
            EXTEND => Op::Extend(decode_request_body(b)?),
            ADJUST => Op::Adjust(decode_request_body(b)?),
            SET_ON_HAND => Op::SetOnHand(decode_request_body(b)?),
            MOVE => Op::Move(decode_request_body(b)?),
            TRANSFER => Op::Transfer(decode_request_body(b)?),
            SET_SAFETY_STOCK => Op::SetSafetyStock(decode_request_body(b)?),
            SET_INCOMING => Op::SetIncoming(decode_request_body(b)?),
            UPSERT_LOCATION => Op::UpsertLocation(decode_request_body(b)?),
            UPSERT_CHANNEL => Op::UpsertChannel(decode_request_body(b)?),
            GET_SKU => Op::GetSku(decode_request_body(b)?),
            GET_SKUS => Op::GetSkus(decode_request_body(b)?),
            GET_RESERVATION => Op::GetReservation(decode_request_body(b)?),
            EXPLAIN_ATP => Op::ExplainAtp(decode_request_body(b)?),
            VELOCITY => Op::Velocity(decode_request_body(b)?),
            AT_RISK => Op::AtRisk(decode_request_body(b)?),
            AT_RISK_REGION => Op::AtRiskRegion(decode_request_body(b)?),
            REBALANCE_LIST => Op::RebalanceList(decode_request_body(b)?),
            LIST_SKUS => Op::ListSkus(decode_request_body(b)?),
            LIST_RESERVATIONS => Op::ListReservations(decode_request_body(b)?),
            SET_LOW_STOCK => Op::SetLowStock(decode_request_body(b)?),
            DELETE_LOCATION => Op::DeleteLocation(decode_request_body(b)?),
            DELETE_CHANNEL => Op::DeleteChannel(decode_request_body(b)?),
            SET_STOCKOUT_THRESHOLD => Op::SetStockoutThreshold(decode_request_body(b)?),
            SUBSCRIBE => Op::Subscribe(decode_request_body(b)?),
            UNSUBSCRIBE => decode_request_body::<Empty>(b).map(|_| Op::Unsubscribe)?,
            ACK => Op::Ack(decode_request_body(b)?),
            LIST_SUBSCRIPTIONS => Op::ListSubscriptions(decode_request_body(b)?),
            DELETE_SUBSCRIPTION => Op::DeleteSubscription(decode_request_body(b)?),
            BACKUP => Op::Backup(decode_request_body(b)?),
            SKU_HISTORY => Op::SkuHistory(decode_request_body(b)?),
            _ => return Ok(None),
        }))
    }
}

/// Whether `op` is reserved for a later version (answered `NOT_IMPLEMENTED`). None is
/// now: `SKU_HISTORY`, the last one, is implemented. Kept for the next reservation.
pub fn is_reserved(op: u16) -> bool {
    let _ = op;
    false
}

#[cfg(test)]
mod tests {
    use super::super::messages::{Reserve, ReserveRef, WireLine};
    use super::*;
    use proptest::prelude::*;

    /// What the codec (serde through bincode, the definition of the wire layout) makes of
    /// the bytes.
    fn by_codec(b: &[u8]) -> Option<ReserveRef<'_>> {
        codec::decode_bounded(b).ok()
    }

    fn id() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9-]{0,12}",
            "\\PC{0,6}", // any Unicode, multi-byte included
        ]
    }

    fn reserve() -> impl Strategy<Value = Reserve> {
        let line = (id(), any::<u32>(), proptest::option::of(id()))
            .prop_map(|(sku, qty, location)| WireLine { sku, qty, location });
        (
            any::<u128>(),
            any::<u128>(),
            id(),
            proptest::collection::vec(line, 0..6),
            any::<bool>(),
            any::<u64>(),
        )
            .prop_map(
                |(request_id, reservation, channel, lines, allow_split, ttl_ms)| Reserve {
                    request_id,
                    reservation,
                    channel,
                    lines,
                    allow_split,
                    ttl_ms,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        /// Every encoded body is read directly, to what the codec reads.
        #[test]
        fn direct_reads_every_body_as_the_codec_does(r in reserve()) {
            let b = codec::encode(&r).unwrap();
            let direct = reserve_ref_direct(&b);
            prop_assert!(direct.is_some());
            prop_assert_eq!(direct, by_codec(&b));
        }

        /// Damaged bodies (a byte changed, cut short, bytes appended): whatever the direct
        /// reader accepts, the codec accepts as the same value; what it refuses goes to
        /// the codec anyway.
        #[test]
        fn direct_accepts_nothing_the_codec_refuses(
            r in reserve(),
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
            extra in proptest::collection::vec(any::<u8>(), 0..3),
            how in 0..3u8,
        ) {
            let mut b = codec::encode(&r).unwrap();
            match how {
                0 => { let i = at.index(b.len()); b[i] = byte; }
                1 => b.truncate(cut.index(b.len())),
                _ => b.extend_from_slice(&extra),
            }
            if let Some(d) = reserve_ref_direct(&b) {
                prop_assert_eq!(Some(d), by_codec(&b));
            }
        }

        /// Arbitrary bytes, the same.
        #[test]
        fn direct_on_arbitrary_bytes(b in proptest::collection::vec(any::<u8>(), 0..120)) {
            if let Some(d) = reserve_ref_direct(&b) {
                prop_assert_eq!(Some(d), by_codec(&b));
            }
        }
    }

    #[test]
    fn direct_refuses_what_the_codec_refuses() {
        let r = Reserve {
            request_id: 1,
            reservation: 2,
            channel: "web".into(),
            lines: vec![WireLine {
                sku: "a".into(),
                qty: 3,
                location: None,
            }],
            allow_split: false,
            ttl_ms: 60_000,
        };
        let b = codec::encode(&r).unwrap();
        let n = b.len();
        // the bool, the option tag, one byte more, an invalid UTF-8 channel
        let mut bad_bool = b.clone();
        bad_bool[n - 9] = 2;
        let mut bad_tag = b.clone();
        bad_tag[n - 10] = 2;
        let mut longer = b.clone();
        longer.push(0);
        let mut bad_utf8 = b.clone();
        bad_utf8[40] = 0xff;
        for bad in [bad_bool, bad_tag, longer, bad_utf8, b[..n - 1].to_vec()] {
            assert!(by_codec(&bad).is_none());
            assert!(reserve_ref_direct(&bad).is_none());
            assert!(decode_reserve_ref(&bad).is_err());
        }
        assert_eq!(decode_reserve_ref(&b).unwrap(), by_codec(&b).unwrap());
    }
}
