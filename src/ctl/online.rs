//! `check --addr` and `dump --addr` (`ctl check`, `ctl dump`): the offline tools against a
//! running server, honestly. sled locks a live data directory, so instead of reading it the
//! server is asked for a backup (`BACKUP`) into a scratch directory, the very code of
//! `check DIR` / `dump DIR` reads that backup, and the scratch directory is removed. What is
//! verified is therefore the server's whole state as of the backup's seq, through the same
//! checkpoint code and replay a restart would use; not the server's memory itself (see
//! docs/operations.md for the limits). The scratch path is on the server's machine and read
//! here: ctl must run there (or see the same path).

use std::path::{Path, PathBuf};

use omnistock::client::{Client, ClientConfig};

use super::exit::{Failure, Kind};
use super::render::{self, Output};

/// The scratch directory: the one given, or a new name under the temporary directory.
/// Absolute, because the server resolves it, not ctl.
fn scratch_dir(given: Option<PathBuf>) -> Result<PathBuf, Failure> {
    let dir = match given {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "omnistock-check-{}-{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )),
    };
    if dir.is_absolute() {
        return Ok(dir);
    }
    std::env::current_dir()
        .map(|cwd| cwd.join(&dir))
        .map_err(|e| Failure::usage(format!("--scratch {}: {e}", dir.display())))
}

/// Removes the scratch backup; only a directory the server wrote as a backup (it has a
/// manifest), so a mistyped path can never make ctl delete something else.
fn remove(dir: &Path) {
    if crate::tools::is_backup(dir) {
        if let Err(e) = std::fs::remove_dir_all(dir) {
            eprintln!(
                "warning: could not remove the scratch backup {}: {e}",
                dir.display()
            );
        }
    }
}

async fn take_backup(cfg: ClientConfig, dir: &Path) -> Result<Output, Failure> {
    let to = dir
        .to_str()
        .ok_or_else(|| Failure::usage(format!("{}: not valid UTF-8", dir.display())))?;
    let c = Client::connect(cfg).await?;
    let b = c.backup(to).await?;
    render::backup(&b)
}

/// `check --addr`: backup, `check` of it, removal. Prints the backup's lines, then check's.
pub async fn check(
    cfg: ClientConfig,
    scratch: Option<PathBuf>,
    json: bool,
) -> Result<Output, Failure> {
    let dir = scratch_dir(scratch)?;
    let backup = take_backup(cfg, &dir).await?;
    if !json {
        print!("{}", backup.human);
    }
    let checked = crate::tools::check_path(&dir, !json);
    remove(&dir);
    match checked {
        Ok(()) => Ok(Output {
            human: String::new(),
            json: serde_json::json!({ "backup": backup.json, "check": "ok" }),
        }),
        Err(e) => Err(Failure::new(
            Kind::Check(crate::tools::check_exit_code(&e)),
            format!("the backup of the running server failed check: {e:#}"),
        )),
    }
}

/// `dump --addr --sku X`: backup, `dump` of it, removal.
pub async fn dump(cfg: ClientConfig, scratch: Option<PathBuf>, sku: &str) -> Result<(), Failure> {
    let dir = scratch_dir(scratch)?;
    let backup = take_backup(cfg, &dir).await?;
    let out = &mut std::io::BufWriter::new(std::io::stdout().lock());
    let dumped = (|| -> anyhow::Result<()> {
        use std::io::Write;
        for line in backup.human.lines() {
            writeln!(out, "# {line}")?;
        }
        crate::tools::dump_path(&dir, sku, out)
    })();
    remove(&dir);
    dumped.map_err(|e| Failure::new(Kind::Check(1), format!("dump of the backup: {e:#}")))
}
