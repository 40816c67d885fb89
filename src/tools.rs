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
use std::path::{Path, PathBuf};
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
#[command(
    after_help = "With --addr HOST[:PORT] instead of DIR, checks a running server: it \
    writes a backup into a scratch directory on its machine, which is checked like DIR and \
    removed (`omnistock ctl check`, whose flags --token, --tls, --scratch, --json apply; \
    docs/operations.md)."
)]
pub struct CheckArgs {
    /// The data directory (of a stopped server, or a backup).
    dir: PathBuf,
}

/// Flags of `dump`.
#[derive(clap::Args)]
#[command(
    after_help = "With --addr HOST[:PORT] instead of DIR, dumps from a backup of a \
    running server (`omnistock ctl dump --sku SKU`; docs/operations.md)."
)]
pub struct DumpArgs {
    /// The data directory.
    dir: PathBuf,
    /// The SKU whose history to print.
    #[arg(long)]
    sku: String,
}

/// Flags of `restore`.
#[derive(clap::Args)]
pub struct RestoreArgs {
    /// A complete backup (written by `omnistock backup`; it has an `omnistock.backup`
    /// manifest).
    #[arg(long, value_name = "BACKUP")]
    from: PathBuf,
    /// The new data directory: must not exist, or be empty.
    #[arg(long, value_name = "DIR")]
    data_dir: PathBuf,
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
pub(crate) fn check_exit_code(e: &anyhow::Error) -> u8 {
    match e.chain().find_map(|c| c.downcast_ref::<WalError>()) {
        Some(WalError::NotInitialised { .. }) => 3,
        Some(WalError::LostLog { .. }) => 4,
        Some(WalError::Locked { .. }) => 5,
        _ => 1,
    }
}

/// Runs `check`, printing an error and mapping it to the exit status.
pub fn check(args: CheckArgs) -> ExitCode {
    match check_path(&args.dir, true) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(check_exit_code(&e))
        }
    }
}

/// Verifies checkpoint and log: the identity file, every record's checksum and decoding,
/// sequence continuity, a full replay through `apply`, and every SKU's invariants. Prints
/// counts when `print`. The one check of a data directory: `check DIR`, `check --addr` (on
/// a backup of the running server) and `restore` (on the backup, then on the restored
/// directory) all run it.
pub(crate) fn check_path(dir: &Path, print: bool) -> anyhow::Result<()> {
    check_counts(dir, print).map(|_| ())
}

/// [`check_path`], returning the state's SKU count and the last log seq replayed (0: none).
fn check_counts(dir: &Path, print: bool) -> anyhow::Result<(usize, u64)> {
    macro_rules! say {
        ($($t:tt)*) => { if print { println!($($t)*); } };
    }
    let t = Instant::now();
    let dir = &dir.to_path_buf();
    if print {
        if let Some(m) = omnistock::wal::backup::read_manifest(dir)? {
            println!(
                "backup: as of seq {}, checkpoint at seq {}, {} log records, of {}",
                m.as_of_seq, m.checkpoint_start_seq, m.log_records, m.source_id
            );
        }
    }
    match identity::inspect(dir)? {
        DirState::Identified(id) => {
            say!("identity: {} (format {})", id.id, id.format);
        }
        DirState::Unidentified => say!(
            "identity: none (the directory predates {}; serve adopts it and writes one)",
            identity::IDENTITY_FILE
        ),
        // Refused by the open below, with the message.
        DirState::Missing | DirState::Empty => {}
    }
    let wal = open(dir)?;
    let stats = wal.log_stats();
    let cp = wal.latest_checkpoint().context("reading the checkpoint")?;
    let start = cp.as_ref().map_or(1, |c| c.start_seq);
    let cp_state = match &cp {
        Some(c) => Some(recovery::decode_checkpoint(&c.state)?),
        None => None,
    };
    if let (Some(c), Some(s)) = (&cp, &cp_state) {
        say!(
            "checkpoint: starts at seq {}, {} bytes, {} SKUs, {} remembered request ids",
            c.start_seq,
            c.state.len(),
            s.skus.len(),
            s.idempotency.len()
        );
    } else {
        say!("checkpoint: none");
    }
    let marks = wal.history_marks().context("reading the history markers")?;
    let (events, bytes) = wal.history_size().context("reading the history")?;
    say!(
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
        |n, seq| {
            if print {
                eprintln!("  ... {n} records (seq {seq})")
            }
        },
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
    say!(
        "log: {} records (seq {:?}..={:?}), {} sku records, {} catalog records, {} bytes on disk",
        stats.records,
        stats.first_seq,
        stats.last_seq,
        kinds.get("sku").unwrap_or(&0),
        kinds.get("catalog").unwrap_or(&0),
        stats.approx_disk_bytes
    );
    say!("state: {} locations, {} channels, {} SKUs, {} holds, {} oversold SKUs, {} remembered request ids, {} cut multi-SKU operations to finish and {} unacknowledged carts to release at start", rec.catalog.locations.len(), rec.catalog.channels.len(), rec.skus.len(), holds, oversold, rec.idempotency.len(), rec.rolled_forward, rec.rolled_back);
    say!(
        "ok: replayed {} records ({} already in the checkpoint) in {:.2}s",
        rec.records_replayed,
        rec.records_skipped,
        t.elapsed().as_secs_f64()
    );
    Ok((rec.skus.len(), rec.last_seq))
}

/// Prints a SKU's state at the checkpoint, then its whole durable history (every event
/// retention kept, across checkpoints), oldest first.
pub fn dump(args: DumpArgs) -> anyhow::Result<()> {
    // `dump ... | head` closes the pipe early: that ends the dump, it is not an error.
    let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
    match dump_path(&args.dir, &args.sku, out) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
}

/// Writes `dump`'s lines for `sku` from the data directory `dir` (also `dump --addr`, on a
/// backup of the running server).
pub(crate) fn dump_path(
    dir: &Path,
    sku: &str,
    out: &mut impl std::io::Write,
) -> anyhow::Result<()> {
    let sku = SkuId::new(sku).map_err(|e| anyhow::anyhow!("{e}"))?;
    let wal = open(&dir.to_path_buf())?;
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

/// Whether `dir` holds a complete backup (its manifest).
pub(crate) fn is_backup(dir: &Path) -> bool {
    dir.join(omnistock::wal::backup::MANIFEST_FILE).is_file()
}

/// `restore --from BACKUP --data-dir DIR`: refuses a directory without a backup manifest and
/// a non-empty DIR, copies the backup into a staging directory beside DIR (every file but
/// the manifest: a restored directory is a data directory, not a backup), verifies the copy
/// with `check`'s code (and that its log ends at the manifest's seq), fsyncs, renames it
/// onto DIR and prints what it restored. Offline: no server may hold either directory.
pub fn restore(args: RestoreArgs) -> anyhow::Result<()> {
    let from = &args.from;
    let Some(m) = omnistock::wal::backup::read_manifest(from)? else {
        bail!(
            "{} is not a complete backup: it has no {} (an interrupted backup, or not a \
             backup at all); nothing was restored",
            from.display(),
            omnistock::wal::backup::MANIFEST_FILE
        );
    };
    let target = &args.data_dir;
    match std::fs::read_dir(target) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!(
                    "{} exists and is not empty: restore only into a new or empty directory",
                    target.display()
                );
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("{}: {e}", target.display()),
    }
    let name = target
        .file_name()
        .with_context(|| format!("{}: no directory name", target.display()))?;
    let parent = match target.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(
        ".{}.restore-partial-{:016x}",
        name.to_string_lossy(),
        rand::random::<u64>()
    ));
    // The copy is verified, not the original: what is checked is exactly what is restored,
    // and sled never opens the backup itself (which would write to it).
    let verified = copy_tree(from, &staging, true).and_then(|bytes| {
        let (skus, last_seq) = check_counts(&staging, false)
            .with_context(|| format!("verifying the backup {}", from.display()))?;
        let want = if m.log_records == 0 { 0 } else { m.as_of_seq };
        if last_seq != want {
            bail!(
                "the backup's log ends at seq {last_seq} but its manifest says {}",
                m.as_of_seq
            );
        }
        sync_dir(&staging)?;
        std::fs::rename(&staging, target)
            .with_context(|| format!("renaming {} onto {}", staging.display(), target.display()))?;
        sync_dir(&parent)?;
        Ok((bytes, skus))
    });
    let (bytes, skus) = match verified {
        Ok(v) => v,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    println!(
        "restored: {} as of seq {} (checkpoint at seq {}, {} log records), {} SKUs, {} bytes, into {}",
        m.source_id,
        m.as_of_seq,
        m.checkpoint_start_seq,
        m.log_records,
        skus,
        bytes,
        target.display()
    );
    println!(
        "start it with: omnistock serve --data-dir {}",
        target.display()
    );
    Ok(())
}

/// Copies the directory `from` to the new directory `to`, recursively, fsyncing each file;
/// at the top level the backup manifest is left out when `skip_manifest`. Returns the bytes
/// copied.
fn copy_tree(from: &Path, to: &Path, skip_manifest: bool) -> anyhow::Result<u64> {
    std::fs::create_dir(to).with_context(|| format!("creating {}", to.display()))?;
    let mut bytes = 0;
    for entry in std::fs::read_dir(from).with_context(|| format!("listing {}", from.display()))? {
        let entry = entry?;
        let name = entry.file_name();
        if skip_manifest && name == omnistock::wal::backup::MANIFEST_FILE {
            continue;
        }
        let (src, dst) = (entry.path(), to.join(&name));
        let kind = entry.file_type()?;
        if kind.is_dir() {
            bytes += copy_tree(&src, &dst, false)?;
            sync_dir(&dst)?;
        } else if kind.is_file() {
            bytes += std::fs::copy(&src, &dst)
                .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
            std::fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .with_context(|| format!("fsync of {}", dst.display()))?;
        } else {
            bail!(
                "{}: not a file or directory; a backup holds neither links nor devices",
                src.display()
            );
        }
    }
    Ok(bytes)
}

fn sync_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("fsync of {}", dir.display()))
}
