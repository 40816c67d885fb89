//! Catalog writes: locations, channels and thresholds, one at a time (a lock), logged,
//! applied to a new catalog snapshot and published to the feed.
//!
//! Deletes (`DeleteLocation`, `DeleteChannel`) must also know that nothing refers to the
//! entry, and that nothing starts to while they look: a reserve placing a hold on a channel
//! being deleted, a stock command putting units at a location being deleted. A delete runs
//! after the other requests of its frame, outside any request epoch, holding the checkpoint
//! lock (`frame::run_exclusive`), and here:
//! 1. marks its entry *closing* ([`ClosingMark`]): from then on a request that names it (a
//!    reserve on the channel, a reserve whose channel sources the location or whose line
//!    names it, a stock command at the location, an upsert naming it) answers `Busy`
//!    (retriable; after the delete it gets `UnknownChannel` / `UnknownLocation`, or goes
//!    through if the delete was refused);
//! 2. flips the request epoch and waits for the previous one to drain: every request that
//!    might not have seen the mark has finished (its holds placed and committed, or undone);
//! 3. takes the catalog-write lock (upserts are serialised with it), counts what refers to
//!    the entry (the reservation index for a channel; every SKU, passive ones from their
//!    compact bytes and active ones through their actor, for a location), decides with the
//!    pure `Catalog::decide_delete`, logs the catalog record, publishes the new snapshot,
//!    then lifts the mark.
//!
//!
//! A frame reads the mark before its catalog snapshot: the mark is lifted only after the
//! catalog without the entry is published, so a frame that finds no mark also finds no
//! entry. The mark costs the request path one `SeqCst` load per frame while no delete runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{self, StreamExt};
use parking_lot::Mutex;

use crate::domain::{
    Catalog, CatalogCommand, CatalogEvent, CatalogRef, LocationId, References, Rejection,
    SkuCommand, TimeMs,
};

use super::actor::{SkuOp, SkuReply};
use super::api::{Change, Command, Failure, Outcome};
use super::journal::{LogRecord, RecordBody};
use super::{reads, Core, EngineError};

/// How long a delete waits for the requests already running to finish (step 2) before it
/// gives up with a retriable `Busy` (they are requests of at most a frame each; only a
/// wedged SKU actor makes this long).
const DRAIN_WAIT: Duration = Duration::from_secs(10);

/// Most active SKUs asked at once how they use a location being deleted.
const SCAN_CONCURRENCY: usize = 256;

/// The catalog entry a running delete is checking (at most one: deletes hold the
/// checkpoint lock), or none.
#[derive(Debug, Default)]
pub(crate) struct ClosingMark {
    /// Whether `what` is set: the only thing the request path reads while no delete runs.
    set: AtomicBool,
    what: Mutex<Option<CatalogRef>>,
}

/// Lifts a [`ClosingMark`] when the delete ends, whichever way.
struct Marked<'a>(&'a ClosingMark);

impl Drop for Marked<'_> {
    fn drop(&mut self) {
        *self.0.what.lock() = None;
        self.0.set.store(false, Ordering::SeqCst);
    }
}

impl ClosingMark {
    /// The entry being deleted, if any.
    pub fn get(&self) -> Option<CatalogRef> {
        if !self.set.load(Ordering::SeqCst) {
            return None;
        }
        self.what.lock().clone()
    }

    fn mark(&self, what: CatalogRef) -> Marked<'_> {
        *self.what.lock() = Some(what);
        // After `what`, and before the epoch flip (`SeqCst`, see `drain_epoch`): a request
        // entering the new epoch reads the flag after its entry and so sees it.
        self.set.store(true, Ordering::SeqCst);
        Marked(self)
    }
}

/// Whether `cmd` names the entry being deleted (it then answers `Busy`); `catalog` is the
/// snapshot the request runs with.
pub(crate) fn touches(closing: &CatalogRef, catalog: &Catalog, cmd: &Command) -> bool {
    match (closing, cmd) {
        (CatalogRef::Channel(c), Command::Reserve(r)) => &r.channel == c,
        (CatalogRef::Location(l), Command::Reserve(r)) => {
            r.lines.iter().any(|line| line.location.as_ref() == Some(l))
                || catalog
                    .channels
                    .get(&r.channel)
                    .is_some_and(|ch| ch.locations.contains(l))
        }
        (CatalogRef::Location(l), Command::Stock { command, .. }) => match command {
            SkuCommand::Adjust { location, .. }
            | SkuCommand::SetOnHand { location, .. }
            | SkuCommand::Move { location, .. }
            | SkuCommand::SetSafetyStock { location, .. }
            | SkuCommand::SetIncoming { location, .. } => location == l,
            SkuCommand::Transfer { from, to, .. } => from == l || to == l,
            _ => false,
        },
        (closing, Command::Catalog(c)) => touches_catalog(closing, c),
        _ => false,
    }
}

fn touches_catalog(closing: &CatalogRef, cmd: &CatalogCommand) -> bool {
    match (closing, cmd) {
        (CatalogRef::Location(l), CatalogCommand::UpsertLocation(loc)) => &loc.id == l,
        (CatalogRef::Location(l), CatalogCommand::UpsertChannel(ch)) => ch.locations.contains(l),
        (CatalogRef::Channel(c), CatalogCommand::UpsertChannel(ch)) => &ch.id == c,
        (CatalogRef::Channel(c), CatalogCommand::SetLowStock(s)) => &s.channel == c,
        _ => false,
    }
}

/// The entry a delete names, or `None` for the other catalog commands.
pub(crate) fn delete_target(cmd: &CatalogCommand) -> Option<CatalogRef> {
    match cmd {
        CatalogCommand::DeleteLocation(l) => Some(CatalogRef::Location(l.clone())),
        CatalogCommand::DeleteChannel(c) => Some(CatalogRef::Channel(c.clone())),
        _ => None,
    }
}

pub(super) async fn catalog(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    cmd: CatalogCommand,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    if let Some(target) = delete_target(&cmd) {
        return delete(core, request, fp, &cmd, target, now).await;
    }
    let _serialised = core.catalog_write.lock().await;
    if core
        .closing
        .get()
        .is_some_and(|c| touches_catalog(&c, &cmd))
    {
        return Err(Rejection::Busy.into());
    }
    let current = core.catalog();
    let event = current.decide(&cmd)?;
    commit(core, &current, event, request, fp, now).await
}

/// Logs `event`, publishes the catalog it makes and waits until it is durable.
async fn commit(
    core: &Arc<Core>,
    current: &Catalog,
    event: CatalogEvent,
    request: u128,
    fp: u64,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let rec = LogRecord {
        at_ms: now,
        request,
        fingerprint: fp,
        body: RecordBody::Catalog(event.clone()),
    };
    let seq = core.journal.append(&rec, false)?;
    let mut next = current.clone();
    next.apply(&event, seq);
    core.set_catalog(Arc::new(next));
    core.feed.push(
        seq,
        Some(Arc::new(crate::feed::FeedRecord::new(
            seq,
            now,
            crate::feed::FeedBody::Catalog,
        ))),
    );
    core.journal.wait_durable(seq).await?;
    Ok(Outcome {
        seq,
        changes: vec![Change::Catalog(event)],
    })
}

/// A delete (module docs). The caller holds the checkpoint lock and is in no epoch.
async fn delete(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    cmd: &CatalogCommand,
    target: CatalogRef,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let _closing = core.closing.mark(target.clone());
    if !core.drain_epoch_within(DRAIN_WAIT).await {
        return Err(EngineError::Overloaded(format!(
            "requests running before the delete of {target} did not finish within {} s",
            DRAIN_WAIT.as_secs()
        ))
        .into());
    }
    let _serialised = core.catalog_write.lock().await;
    let current = core.catalog();
    // Unknown entries are refused before anything is scanned.
    match &target {
        CatalogRef::Location(l) => current.require_location(l)?,
        CatalogRef::Channel(c) => {
            current.channel(c)?;
        }
    }
    let refs = references(core, &current, &target).await?;
    let event = current.decide_delete(cmd, &refs)?;
    commit(core, &current, event, request, fp, now).await
}

/// What refers to `target`: open reservations of a channel (the index: after the drain it
/// holds every reservation, committed or still busy with a fulfil, release or extend), or
/// every SKU's use of a location.
async fn references(
    core: &Arc<Core>,
    catalog: &Arc<Catalog>,
    target: &CatalogRef,
) -> Result<References, Failure> {
    let mut refs = References::default();
    let location = match target {
        CatalogRef::Channel(c) => {
            core.reservations.for_each(|id, e| {
                if &e.channel == c {
                    refs.add_reservation(id);
                }
            });
            return Ok(refs);
        }
        CatalogRef::Location(l) => l.clone(),
    };
    // Passive SKUs decoded off the async threads (one pass over every SKU).
    let (passive, active) = {
        let (core, catalog, location) = (core.clone(), catalog.clone(), location.clone());
        tokio::task::spawn_blocking(move || -> Result<_, EngineError> {
            let mut refs = References::default();
            let mut active = Vec::new();
            core.registry
                .for_each_slot(&catalog, |sku, slot| match slot {
                    Ok(state) => refs.add_sku(sku, state.location_use(&location)),
                    Err(_) => active.push(sku.clone()),
                })?;
            Ok((refs, active))
        })
        .await
        .map_err(|e| EngineError::Storage(format!("location scan: {e}")))??
    };
    refs.merge(passive);
    let mut answers = stream::iter(active)
        .map(|sku| {
            let (core, catalog, location) = (core.clone(), catalog.clone(), location.clone());
            async move {
                let u = location_use(&core, &catalog, &sku, location).await;
                (u, sku)
            }
        })
        .buffer_unordered(SCAN_CONCURRENCY);
    while let Some((u, sku)) = answers.next().await {
        match u {
            Ok(u) => refs.add_sku(&sku, u),
            // Gone between the listing and the question: it refers to nothing.
            Err(Failure::Rejected(Rejection::UnknownSku(_))) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(refs)
}

/// One SKU's use of `location`: from its compact bytes if it was passivated since the
/// listing, else from its actor (waiting for mailbox room).
async fn location_use(
    core: &Arc<Core>,
    catalog: &Catalog,
    sku: &crate::domain::SkuId,
    location: LocationId,
) -> Result<crate::domain::LocationUse, Failure> {
    if let Some(s) = core.registry.passive_state(sku, catalog)? {
        return Ok(s.location_use(&location));
    }
    match reads::call_wait(core, sku, SkuOp::LocationUse(location)).await? {
        SkuReply::LocationUse(u) => Ok(u),
        other => Err(EngineError::Corrupt(format!("unexpected actor reply {other:?}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{
        AdjustReason, Channel, ChannelId, Location, LocationKind, LowStock, SkuId,
    };
    use crate::engine::api::{ReserveLine, ReserveRequest};

    fn l(s: &str) -> LocationId {
        LocationId::new(s).unwrap()
    }
    fn c(s: &str) -> ChannelId {
        ChannelId::new(s).unwrap()
    }
    fn reserve(channel: &str, at: Option<&str>) -> Command {
        Command::Reserve(ReserveRequest {
            reservation: 1,
            channel: c(channel),
            lines: vec![ReserveLine {
                sku: SkuId::new("A").unwrap(),
                qty: 1,
                location: at.map(l),
            }],
            allow_split: false,
            ttl_ms: 1000,
        })
    }
    fn stock(cmd: SkuCommand) -> Command {
        Command::Stock {
            sku: SkuId::new("A").unwrap(),
            command: cmd,
        }
    }

    #[test]
    fn what_names_an_entry_being_deleted() {
        let mut cat = Catalog::default();
        for id in ["wh", "st"] {
            let loc = Location {
                id: l(id),
                kind: LocationKind::Store,
                region: "FR".into(),
            };
            cat.apply(&CatalogEvent::LocationUpserted(loc), 1);
        }
        let web = Channel {
            id: c("web"),
            locations: vec![l("wh")],
            buffer: 0,
            cap: None,
        };
        cat.apply(&CatalogEvent::ChannelUpserted(web.clone()), 2);
        let (wh, st, ch) = (
            CatalogRef::Location(l("wh")),
            CatalogRef::Location(l("st")),
            CatalogRef::Channel(c("web")),
        );
        // Reserves: on the channel; through a channel sourcing the location; a line there.
        assert!(touches(&ch, &cat, &reserve("web", None)));
        assert!(!touches(&ch, &cat, &reserve("shop", None)));
        assert!(touches(&wh, &cat, &reserve("web", None)));
        assert!(!touches(&st, &cat, &reserve("web", None)));
        assert!(touches(&st, &cat, &reserve("shop", Some("st"))));
        // Stock commands at the location, a transfer from or to it.
        let adjust = |at: &str| {
            stock(SkuCommand::Adjust {
                location: l(at),
                delta: 1,
                reason: AdjustReason::Receipt,
                reference: String::new(),
            })
        };
        assert!(touches(&wh, &cat, &adjust("wh")) && !touches(&wh, &cat, &adjust("st")));
        assert!(!touches(&ch, &cat, &adjust("wh")));
        let transfer = stock(SkuCommand::Transfer {
            from: l("st"),
            to: l("wh"),
            qty: 1,
            reference: String::new(),
        });
        assert!(touches(&wh, &cat, &transfer) && touches(&st, &cat, &transfer));
        // Catalog writes naming it.
        let upsert_web = Command::Catalog(CatalogCommand::UpsertChannel(web));
        assert!(touches(&ch, &cat, &upsert_web) && touches(&wh, &cat, &upsert_web));
        assert!(!touches(&st, &cat, &upsert_web));
        let low = Command::Catalog(CatalogCommand::SetLowStock(LowStock {
            channel: c("web"),
            sku: None,
            threshold: 1,
        }));
        assert!(touches(&ch, &cat, &low) && !touches(&wh, &cat, &low));
        // Reservation operations never place new holds: never refused for a delete.
        let release = Command::Release { reservation: 1 };
        assert!(!touches(&ch, &cat, &release) && !touches(&wh, &cat, &release));
        // Nothing but deletes is a delete.
        assert_eq!(
            delete_target(&CatalogCommand::DeleteChannel(c("web"))),
            Some(ch)
        );
        assert_eq!(
            delete_target(&CatalogCommand::DeleteLocation(l("st"))),
            Some(st)
        );
        let Command::Catalog(up) = upsert_web else {
            unreachable!()
        };
        assert_eq!(delete_target(&up), None);
    }
}
