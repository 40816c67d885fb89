//! Catalog writes: locations, channels and thresholds, one at a time (a lock), logged,
//! applied to a new catalog snapshot and published to the feed.

use std::sync::Arc;

use crate::domain::TimeMs;

use super::api::{Change, Failure, Outcome};
use super::journal::{LogRecord, RecordBody};
use super::Core;

pub(super) async fn catalog(
    core: &Arc<Core>,
    request: u128,
    fp: u64,
    cmd: crate::domain::CatalogCommand,
    now: TimeMs,
) -> Result<Outcome, Failure> {
    let _serialised = core.catalog_write.lock().await;
    let current = core.catalog();
    let event = current.decide(&cmd)?;
    let rec = LogRecord {
        at_ms: now,
        request,
        fingerprint: fp,
        body: RecordBody::Catalog(event.clone()),
    };
    let seq = core.journal.append(&rec, false)?;
    let mut next = (*current).clone();
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
