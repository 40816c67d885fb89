//! The data directory's identity file, `omnistock.id`, and what opening decides from it.
//!
//! The file is written once, when a new directory is initialised, and never changed:
//!
//! ```text
//! # omnistock data directory: do not edit, delete or copy it to another directory
//! format = 1
//! id = "0f5c1e9a3b7d4c2e8a6f1b0d9c3e7a55"
//! ```
//!
//! It turns "the directory is empty" into a question instead of a silent fresh start: a
//! volume that failed to mount, or a data directory whose files were deleted, looks empty,
//! and starting an empty inventory on it would answer every stock query with zero. See
//! [`Init`] for the rules, and [`inspect`] for how a directory is classified (before sled
//! touches it: opening sled on a missing `db` would create one).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::WalError;

/// Name of the identity file inside the data directory.
pub const IDENTITY_FILE: &str = "omnistock.id";
/// Name of sled's main data file; the log and checkpoints live in it.
pub const DB_FILE: &str = "db";
/// Format version written into new identity files.
const FORMAT: u32 = 1;

/// What [`super::Wal::open`] does with a data directory that has no identity file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Init {
    /// A missing or empty directory is initialised (created, identity written); a
    /// directory from before identity files (a sled database, no `omnistock.id`) is
    /// adopted: the identity is written, with a warning. The library default, so tests
    /// and embedded uses open fresh temporary directories as before.
    #[default]
    Allow,
    /// A missing or empty directory is refused with [`WalError::NotInitialised`]; a
    /// directory from before identity files is adopted as with `Allow`. What
    /// `omnistock serve` does without `--init`.
    Refuse,
    /// Like `Refuse`, but a directory from before identity files is opened without
    /// writing the identity: for inspection tools (`omnistock check`, `dump`).
    RefuseReadOnly,
}

/// The parsed identity file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// File format version.
    pub format: u32,
    /// Random id chosen when the directory was initialised (32 hex digits).
    pub id: String,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityToml {
    format: u32,
    id: String,
}

/// What a data directory holds, judged from its files alone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirState {
    /// The path does not exist.
    Missing,
    /// A directory with neither an identity file nor sled files (other entries, such as
    /// `lost+found` on a fresh volume, are ignored).
    Empty,
    /// A sled database without an identity file: a directory created before identity
    /// files existed.
    Unidentified,
    /// An identity file and a non-empty sled database.
    Identified(Identity),
}

fn corrupt_file(dir: &Path, file: PathBuf, reason: String) -> WalError {
    WalError::CorruptFile {
        dir: dir.to_path_buf(),
        file,
        reason,
    }
}

fn io_error(dir: &Path, file: PathBuf, what: &str, e: std::io::Error) -> WalError {
    corrupt_file(dir, file, format!("cannot {what}: {e}"))
}

/// Size of `dir/name`, or `None` if it does not exist.
fn file_len(dir: &Path, name: &str) -> Result<Option<u64>, WalError> {
    let path = dir.join(name);
    match fs::metadata(&path) {
        Ok(m) if m.is_file() => Ok(Some(m.len())),
        Ok(_) => Err(corrupt_file(dir, path, "is not a regular file".into())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(dir, path, "read its metadata", e)),
    }
}

/// Whether `name` is one of sled's files (`db`, `conf`, `blobs`, `snap.*`).
fn is_sled_file(name: &str) -> bool {
    matches!(name, "db" | "conf" | "blobs") || name.starts_with("snap.")
}

/// Classifies `dir` without changing it. Errors: the path is not a directory, the
/// identity file is unreadable or malformed ([`WalError::CorruptFile`]), or the
/// identity file exists but the sled database is missing or empty, or sled files exist
/// without the database ([`WalError::LostLog`]).
pub fn inspect(dir: &Path) -> Result<DirState, WalError> {
    if dir.exists() && !dir.is_dir() {
        let reason = "is not a directory".to_owned();
        return Err(corrupt_file(dir, dir.to_path_buf(), reason));
    }
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(DirState::Missing),
        Err(e) => return Err(io_error(dir, dir.to_path_buf(), "list the directory", e)),
    };
    let mut sled_files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| io_error(dir, dir.to_path_buf(), "list the directory", e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_sled_file(&name) {
            sled_files.push(name);
        }
    }
    sled_files.sort();
    let identity = read(dir)?;
    let db_len = file_len(dir, DB_FILE)?;
    match (identity, db_len) {
        (Some(identity), Some(len)) if len > 0 => Ok(DirState::Identified(identity)),
        (Some(identity), len) => Err(WalError::LostLog {
            dir: dir.to_path_buf(),
            id: Some(identity.id),
            what: if len.is_some() {
                "the db is empty (0 bytes)".into()
            } else {
                "the db is missing".into()
            },
        }),
        (None, Some(len)) if len > 0 => Ok(DirState::Unidentified),
        (None, _) if sled_files.iter().any(|f| f != DB_FILE) => Err(WalError::LostLog {
            dir: dir.to_path_buf(),
            id: None,
            what: format!(
                "sled files ({}) are there but the db is missing or empty",
                sled_files.join(", ")
            ),
        }),
        (None, _) => Ok(DirState::Empty),
    }
}

/// Reads and parses `dir/omnistock.id`; `None` if it does not exist.
pub fn read(dir: &Path) -> Result<Option<Identity>, WalError> {
    let path = dir.join(IDENTITY_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(dir, path, "read it", e)),
    };
    let parsed: IdentityToml = toml::from_str(&text)
        .map_err(|e| corrupt_file(dir, path.clone(), format!("not a valid identity file: {e}")))?;
    if parsed.format != FORMAT {
        return Err(corrupt_file(
            dir,
            path,
            format!(
                "identity format {} is not supported (this version knows {FORMAT})",
                parsed.format
            ),
        ));
    }
    if parsed.id.is_empty() {
        return Err(corrupt_file(dir, path, "the id is empty".into()));
    }
    Ok(Some(Identity {
        format: parsed.format,
        id: parsed.id,
    }))
}

/// Writes a new identity file atomically. Returns what it wrote.
pub(crate) fn write_new(dir: &Path) -> Result<Identity, WalError> {
    let identity = Identity {
        format: FORMAT,
        id: format!("{:032x}", rand::random::<u128>()),
    };
    let text = format!(
        "# omnistock data directory: do not edit, delete or copy it to another directory\n\
         format = {}\nid = \"{}\"\n",
        identity.format, identity.id
    );
    write_atomically(dir, IDENTITY_FILE, &text)?;
    Ok(identity)
}

/// Writes the identity file of a backup of the directory whose id is `id`: a backup is the
/// same inventory (its copy), so it keeps the id; `check` prints it, so a backup can be
/// matched with its source.
pub(crate) fn write_copy(dir: &Path, id: &str) -> Result<(), WalError> {
    let text = format!(
        "# omnistock data directory: do not edit, delete or copy it to another directory\n\
         format = {FORMAT}\nid = \"{id}\"\n"
    );
    write_atomically(dir, IDENTITY_FILE, &text)
}

/// Name of the file holding the highest seq known durable at the last clean shutdown or
/// checkpoint: a lower bound for the log's end at the next open.
pub const DURABLE_MARK_FILE: &str = "omnistock.durable";

#[derive(serde::Deserialize)]
struct MarkToml {
    last_seq: u64,
}

/// Reads `dir/omnistock.durable`; `None` if it does not exist.
pub(crate) fn read_durable_mark(dir: &Path) -> Result<Option<u64>, WalError> {
    let path = dir.join(DURABLE_MARK_FILE);
    let text = match fs::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error(dir, path, "read it", e)),
    };
    let parsed: MarkToml = toml::from_str(&text)
        .map_err(|e| corrupt_file(dir, path, format!("not a valid durable mark: {e}")))?;
    Ok(Some(parsed.last_seq))
}

/// Records that every seq up to `last_seq` is durable (atomically, like the identity).
pub(crate) fn write_durable_mark(dir: &Path, last_seq: u64) -> Result<(), WalError> {
    let text = format!(
        "# highest log seq known durable at the last clean shutdown or checkpoint\n\
         last_seq = {last_seq}\n"
    );
    write_atomically(dir, DURABLE_MARK_FILE, &text)
}

/// Writes `dir/name`: a temporary file, fsync, rename over `name`, fsync of the directory.
pub(crate) fn write_atomically(dir: &Path, name: &str, text: &str) -> Result<(), WalError> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let step = |what: &str, r: std::io::Result<()>| {
        r.map_err(|e| WalError::Identity {
            path: path.clone(),
            reason: format!("{what}: {e}"),
        })
    };
    step("create the temporary file", {
        fs::File::create(&tmp).and_then(|mut f| {
            f.write_all(text.as_bytes())?;
            f.sync_all()
        })
    })?;
    step("rename the temporary file", fs::rename(&tmp, &path))?;
    step(
        "fsync the directory",
        fs::File::open(dir).and_then(|d| d.sync_all()),
    )
}
