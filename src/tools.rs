//! `omnistock check DIR` and `omnistock dump DIR --sku SKU`: offline verification of a data
//! directory and the per-SKU audit ledger (the durable history, `engine::history`). Both open the log exclusively (sled locks the
//! directory), so they refuse to run against a directory a live server holds. Neither
//! initialises a directory nor writes an identity file (`Init::RefuseReadOnly`).
//!
//! `check`'s exit status: 0 the directory is sound; 1 it is corrupt or unreadable (a
//! damaged file, a failed replay or invariant, any other error); 2 usage (bad flags, from
//! clap); 3 not an initialised data directory (missing, or empty: no `omnistock.id` and no
//! database); 4 the log was lost (`omnistock.id` or sled's other files are there but the
//! database is missing or empty); 5 the directory is in use: another process (a running
//! server) holds its lock ([`WalError::Locked`], said in one line, after a 250 ms wait).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use omnistock::domain::{HalfLives, SkuId};
use omnistock::engine::journal::RecordBody;
use omnistock::engine::{history, recovery};
use omnistock::wal::{identity, DirState, Init, Wal, WalConfig, WalError};

/// How long `check` and `dump` wait for the directory lock (a server that just exited
/// lets go when its process ends, so a short wait suffices).
const TOOL_LOCK_WAIT_MS: u64 = 250;

/// Events `dump` reads per history page (memory by the page, not the SKU's history).
const DUMP_PAGE: usize = 1000;

/// Flags of `check`.
#[derive(clap::Args)]
pub struct CheckArgs {
    /// The data directory.
    dir: PathBuf,
}

/// Flags of `dump`.
#[derive(clap::Args)]
pub struct DumpArgs {
    /// The data directory.
    dir: PathBuf,
    /// The SKU whose history to print.
    #[arg(long)]
    sku: String,
}

fn open(dir: &PathBuf) -> anyhow::Result<Wal> {
    let mut config = WalConfig::new(dir);
    config.init = Init::RefuseReadOnly;
    // A lock another process holds is a running server (or tool): say so at once rather
    // than after serve's 5 s wait for a handle of its own process.
    config.lock_wait_ms = TOOL_LOCK_WAIT_MS;
    Wal::open(config).with_context(|| format!("opening the log in {}", dir.display()))
}

/// `check`'s exit status for an error (see the module documentation).
fn check_exit_code(e: &anyhow::Error) -> u8 {
    match e.chain().find_map(|c| c.downcast_ref::<WalError>()) {
        Some(WalError::NotInitialised { .. }) => 3,
        Some(WalError::LostLog { .. }) => 4,
        Some(WalError::Locked { .. }) => 5,
        _ => 1,
    }
}

/// Runs `check`, printing an error and mapping it to the exit status.
pub fn check(args: CheckArgs) -> ExitCode {
    match check_dir(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(check_exit_code(&e))
        }
    }
}

/// Verifies checkpoint and log: the identity file, every record's checksum and decoding,
/// sequence continuity, a full replay through `apply`, and every SKU's invariants. Prints
/// counts.
fn check_dir(args: CheckArgs) -> anyhow::Result<()> {
    let t = Instant::now();
    match identity::inspect(&args.dir)? {
        DirState::Identified(id) => {
            println!("identity: {} (format {})", id.id, id.format);
        }
        DirState::Unidentified => println!(
            "identity: none (the directory predates {}; serve adopts it and writes one)",
            identity::IDENTITY_FILE
        ),
        // Refused by the open below, with the message.
        DirState::Missing | DirState::Empty => {}
    }
    let wal = open(&args.dir)?;
    let stats = wal.log_stats();
    let cp = wal.latest_checkpoint().context("reading the checkpoint")?;
    let start = cp.as_ref().map_or(1, |c| c.start_seq);
    let cp_state = match &cp {
        Some(c) => Some(recovery::decode_checkpoint(&c.state)?),
        None => None,
    };
    if let (Some(c), Some(s)) = (&cp, &cp_state) {
        println!(
            "checkpoint: starts at seq {}, {} bytes, {} SKUs, {} remembered request ids",
            c.start_seq,
            c.state.len(),
            s.skus.len(),
            s.idempotency.len()
        );
    } else {
        println!("checkpoint: none");
    }
    let marks = wal.history_marks().context("reading the history markers")?;
    let (events, bytes) = wal.history_size().context("reading the history")?;
    println!(
        "history: {events} events ({bytes} bytes of keys and values) from seq {}, derived below seq {}",
        marks.base, marks.upto
    );
    let mut kinds: HashMap<&'static str, u64> = HashMap::new();
    let records = wal.replay_from(start).inspect(|r| {
        if let Ok((seq, bytes)) = r {
            let kind = match recovery::decode_record(*seq, bytes).map(|r| r.body) {
                Ok(RecordBody::Sku { .. }) => "sku",
                Ok(RecordBody::Catalog(_)) => "catalog",
                Ok(RecordBody::OpBegun { .. }) => "operation begun",
                Ok(RecordBody::CartPlaced { .. }) => "cart placed",
                Err(_) => "undecodable",
            };
            *kinds.entry(kind).or_default() += 1;
        }
    });
    let rec = recovery::recover(
        cp_state,
        records,
        0,
        HalfLives::default(),
        1_000_000,
        |n, seq| eprintln!("  ... {n} records (seq {seq})"),
    )?;
    let mut holds = 0usize;
    let mut oversold = 0usize;
    for s in &rec.skus {
        if let Err(m) = s.check_invariants() {
            bail!("invariant broken after replay: {m}");
        }
        holds += s.holds.len();
        oversold += usize::from(s.oversold());
    }
    println!(
        "log: {} records (seq {:?}..={:?}), {} sku records, {} catalog records, {} bytes on disk",
        stats.records,
        stats.first_seq,
        stats.last_seq,
        kinds.get("sku").unwrap_or(&0),
        kinds.get("catalog").unwrap_or(&0),
        stats.approx_disk_bytes
    );
    println!("state: {} locations, {} channels, {} SKUs, {} holds, {} oversold SKUs, {} remembered request ids, {} cut multi-SKU operations to finish and {} unacknowledged carts to release at start", rec.catalog.locations.len(), rec.catalog.channels.len(), rec.skus.len(), holds, oversold, rec.idempotency.len(), rec.rolled_forward, rec.rolled_back);
    println!(
        "ok: replayed {} records ({} already in the checkpoint) in {:.2}s",
        rec.records_replayed,
        rec.records_skipped,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Prints a SKU's state at the checkpoint, then its whole durable history (every event
/// retention kept, across checkpoints), oldest first.
pub fn dump(args: DumpArgs) -> anyhow::Result<()> {
    // `dump ... | head` closes the pipe early: that ends the dump, it is not an error.
    match dump_to(args, &mut std::io::BufWriter::new(std::io::stdout().lock())) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

fn dump_to(args: DumpArgs, out: &mut impl std::io::Write) -> anyhow::Result<()> {
    let sku = SkuId::new(&args.sku).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wal = open(&args.dir)?;
    let cp = wal.latest_checkpoint().context("reading the checkpoint")?;
    let start = cp.as_ref().map_or(1, |c| c.start_seq);
    if let Some(c) = cp {
        let state = recovery::decode_checkpoint(&c.state)?;
        match state.skus.iter().find(|s| s.sku == sku) {
            Some(s) => {
                writeln!(
                    out,
                    "# {sku} at checkpoint (seq < {start}), last change seq {}",
                    s.last_seq
                )?;
                for b in &s.buckets {
                    writeln!(out,
                        "#   {}: on_hand {} reserved {} safety {} damaged {} qc {} incoming {} shortfall {}",
                        b.location,
                        b.on_hand,
                        b.reserved,
                        b.safety_stock,
                        b.damaged,
                        b.quality_control,
                        b.incoming,
                        b.shortfall
                    )?;
                }
                writeln!(out, "#   {} active holds", s.holds.len())?;
            }
            None => writeln!(out, "# {sku} not in the checkpoint (seq < {start})")?,
        }
    }
    // The full durable history: the history tree, then the log since its marker (the
    // same merged view the server's SKU_HISTORY reads), without a bound on records read.
    let mut n = 0u64;
    let mut from = (0u64, 0u16);
    let mut first = true;
    loop {
        let page = history::read_page(&wal, sku.as_str(), from, DUMP_PAGE, u64::MAX)?;
        if first {
            writeln!(out, "# history from seq {}", page.base)?;
            first = false;
        }
        for h in &page.entries {
            writeln!(
                out,
                "seq={} index={} at_ms={} request={:032x} {:?}",
                h.seq, h.index, h.at_ms, h.request, h.event
            )?;
            n += 1;
        }
        match page.next {
            Some(next) => from = next,
            None => break,
        }
    }
    writeln!(out, "# {n} events")?;
    out.flush()?;
    Ok(())
}
