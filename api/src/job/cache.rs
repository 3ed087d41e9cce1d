//! The compiled-code cache: modules compiled once, by mvm, reused by every
//! later job that runs the same module with the same engine.
//!
//! Entries live in `<root>/compiled/<key>.cwasm`, where the key is the
//! SHA-256 of the module and of everything about the compiling engine (see
//! [`Compiler::key`](super::compile::Compiler::key)), so an entry is never
//! looked up for anything else. Each file is a 48-byte header (magic, the
//! code's length, the SHA-256 of the code) followed by the code: an entry
//! that was truncated, torn or altered fails its check, is removed and
//! compiled again, and never reaches a guest.
//!
//! Entries are written to a temporary file in the same directory, synced
//! and renamed into place, so that a reader sees a whole entry or none and
//! concurrent writers of one key each succeed (the last rename wins; both
//! wrote the same code). A hit sets the entry's modification time; after a
//! write, the least recently used entries are removed until the total is
//! within the cap. A reader keeps its open file: an entry evicted or
//! replaced meanwhile stays readable to it.

use std::ffi::OsString;
use std::fmt;
use std::fs::{self, DirBuilder, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tracing::{debug, warn};

/// The default cap on the cache's total size, in MiB.
pub const DEFAULT_MAX_MIB: u64 = 1024;

/// The subdirectory of the cache root that holds entries: the root may
/// later hold other kinds of cached things.
const ENTRIES_DIR: &str = "compiled";
const SUFFIX: &str = ".cwasm";
const TEMP_PREFIX: &str = ".tmp-";
const LOCK_PREFIX: &str = ".lock-";
/// A temporary or lock file this old belongs to a writer that died (a
/// writer takes seconds), so eviction removes it.
const STALE_TEMP: Duration = Duration::from_secs(3600);

const MAGIC: [u8; 8] = *b"mvmcode1";
/// Magic, the code's length (u64, little-endian), SHA-256 of the code.
const HEADER_LEN: u64 = 8 + 8 + 32;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("cannot create the cache directory {}: {source}", .path.display())]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("cannot write {}: {source}", .path.display())]
    Write { path: PathBuf, source: io::Error },
    #[error("cannot read the cache directory {}: {source}", .path.display())]
    ReadDir { path: PathBuf, source: io::Error },
    #[error("cannot remove {}: {source}", .path.display())]
    Remove { path: PathBuf, source: io::Error },
    #[error("{size} bytes of compiled code is more than the cache's cap of {} MiB (--cache-max-mib)", .max >> 20)]
    TooLarge { size: u64, max: u64 },
}

/// Held while compiling one key (see [`Cache::lock_compile`]). Dropped, it
/// removes its lock file (still holding the lock, so a waiter that opened
/// it takes the lock next and finds the code) and the cache's directories
/// if they are empty: a module that failed to compile leaves nothing. A
/// process that comes just then makes a new lock file and may compile in
/// parallel with that waiter: duplicate work, never a wrong entry.
pub struct CompileLock {
    path: PathBuf,
    /// The directories `lock_compile` made, innermost first.
    made: Vec<PathBuf>,
    _file: File,
}

impl Drop for CompileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
        for dir in &self.made {
            // Only if still empty: a cache with entries stays.
            let _ = fs::remove_dir(dir);
        }
    }
}

/// A cache key: the SHA-256 of a module and the engine that compiles it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key([u8; 32]);

impl Key {
    pub fn new(digest: [u8; 32]) -> Key {
        Key(digest)
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// A verified entry, open and positioned at the start of its code.
#[derive(Debug)]
pub struct Entry {
    path: PathBuf,
    file: File,
    len: u64,
}

impl Entry {
    /// The entry's path, its open file (at the code's first byte) and the
    /// code's length.
    pub fn into_parts(self) -> (PathBuf, File, u64) {
        (self.path, self.file, self.len)
    }
}

/// One entry as `mvm cache list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryInfo {
    /// The key, in hex.
    pub key: String,
    /// The file's size, header included.
    pub bytes: u64,
    pub last_used: SystemTime,
}

pub struct Cache {
    root: PathBuf,
    max_bytes: u64,
}

impl Cache {
    /// A cache at `root` of at most `max_bytes`; nothing is touched until
    /// it is used.
    pub fn new(root: PathBuf, max_bytes: u64) -> Cache {
        Cache { root, max_bytes }
    }

    /// `$XDG_CACHE_HOME/mvm`, else `~/.cache/mvm`; `None` without either.
    pub fn default_root() -> Option<PathBuf> {
        root_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"))
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the entries are.
    pub fn entries_dir(&self) -> PathBuf {
        self.root.join(ENTRIES_DIR)
    }

    fn entry_path(&self, key: &Key) -> PathBuf {
        self.entries_dir().join(format!("{key}{SUFFIX}"))
    }

    /// The entry for `key`, verified, or `None`. A corrupt entry is removed
    /// (with a warning) so that the code is compiled and written again.
    pub fn get(&self, key: &Key) -> Option<Entry> {
        let path = self.entry_path(key);
        let mut file = match File::open(&path) {
            Ok(file) => file,
            Err(e) => {
                if e.kind() != io::ErrorKind::NotFound {
                    debug!("cache entry {} unreadable, compiling instead: {e}", path.display());
                }
                return None;
            }
        };
        match verify(&mut file) {
            Ok(len) => {
                // Marks it recently used; a cache entry mvm did not write
                // (another user's) just keeps its time.
                if let Err(e) = file.set_modified(SystemTime::now()) {
                    debug!("cannot mark {} as used: {e}", path.display());
                }
                Some(Entry { path, file, len })
            }
            Err(why) => {
                warn!("cache entry {} is corrupt ({why}); compiling the module again", path.display());
                if let Err(e) = fs::remove_file(&path) {
                    debug!("cannot remove {}: {e}", path.display());
                }
                None
            }
        }
    }

    /// Waits until no other process is compiling `key` for this cache, and
    /// keeps others waiting until the returned lock is dropped: a daemon
    /// that starts many jobs of one module at once compiles it once, and
    /// the others find it here. `None` (compile without waiting: only
    /// duplicate work) when the lock file cannot be had.
    pub fn lock_compile(&self, key: &Key) -> Option<CompileLock> {
        let dir = self.entries_dir();
        let path = dir.join(format!("{LOCK_PREFIX}{key}"));
        let made: Vec<PathBuf> = [dir.clone(), self.root.clone()].into_iter().filter(|d| !d.exists()).collect();
        let locked = DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .and_then(|()| File::options().create(true).truncate(false).write(true).open(&path))
            .and_then(|file| {
                rustix::fs::flock(&file, rustix::fs::FlockOperation::LockExclusive)?;
                Ok(file)
            });
        match locked {
            Ok(file) => Some(CompileLock { path, made, _file: file }),
            Err(e) => {
                debug!("compiling without the cache's lock {}: {e}", path.display());
                None
            }
        }
    }

    /// Stores `code` under `key`, then evicts least recently used entries
    /// while the cache is over its cap.
    pub fn put(&self, key: &Key, code: &[u8]) -> Result<(), CacheError> {
        let size = HEADER_LEN + code.len() as u64;
        if size > self.max_bytes {
            return Err(CacheError::TooLarge { size, max: self.max_bytes });
        }
        let dir = self.entries_dir();
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|source| CacheError::CreateDir { path: dir.clone(), source })?;
        let write_err = |source| CacheError::Write { path: dir.clone(), source };
        // Dropped (and so removed) on any failure below.
        let mut temp = tempfile::Builder::new().prefix(TEMP_PREFIX).tempfile_in(&dir).map_err(write_err)?;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(&MAGIC);
        header.extend_from_slice(&(code.len() as u64).to_le_bytes());
        header.extend_from_slice(&Sha256::digest(code));
        let file = temp.as_file_mut();
        file.write_all(&header).map_err(write_err)?;
        file.write_all(code).map_err(write_err)?;
        // The kernel stamps writes with its coarse clock, which can lag the
        // time a hit stamps; one clock for both keeps the LRU order true.
        file.set_modified(SystemTime::now()).map_err(write_err)?;
        // Renamed only once the bytes are on disk, so a crash leaves the old
        // entry, none, or this one whole. The directory is not synced: a
        // rename lost in a crash is only a miss.
        file.sync_all().map_err(write_err)?;
        let path = self.entry_path(key);
        temp.persist(&path).map_err(|e| CacheError::Write { path: path.clone(), source: e.error })?;
        if let Err(e) = self.evict() {
            warn!("cannot keep the cache within its cap: {e}");
        }
        Ok(())
    }

    /// Every entry, least recently used first. A cache not yet made has none.
    pub fn entries(&self) -> Result<Vec<EntryInfo>, CacheError> {
        let mut entries: Vec<EntryInfo> = self
            .files()?
            .into_iter()
            .filter_map(|(name, meta)| {
                let key = name.strip_suffix(SUFFIX)?.to_owned();
                Some(EntryInfo { key, bytes: meta.len(), last_used: meta.modified().ok()? })
            })
            .collect();
        entries.sort_by(|a, b| (a.last_used, &a.key).cmp(&(b.last_used, &b.key)));
        Ok(entries)
    }

    /// Removes every entry (and any temporary file) and returns how many
    /// entries there were.
    pub fn clear(&self) -> Result<usize, CacheError> {
        let mut removed = 0;
        for (name, _) in self.files()? {
            self.remove(&name)?;
            removed += usize::from(name.ends_with(SUFFIX));
        }
        Ok(removed)
    }

    fn evict(&self) -> Result<(), CacheError> {
        let now = SystemTime::now();
        for (name, meta) in self.files()? {
            let stale =
                meta.modified().ok().and_then(|t| now.duration_since(t).ok()).is_some_and(|age| age > STALE_TEMP);
            if (name.starts_with(TEMP_PREFIX) || name.starts_with(LOCK_PREFIX)) && stale {
                self.remove(&name)?;
            }
        }
        let entries = self.entries()?;
        let mut total: u64 = entries.iter().map(|e| e.bytes).sum();
        for entry in entries {
            if total <= self.max_bytes {
                break;
            }
            debug!(key = %entry.key, bytes = entry.bytes, "evicting the least recently used cache entry");
            self.remove(&format!("{}{SUFFIX}", entry.key))?;
            total -= entry.bytes;
        }
        Ok(())
    }

    /// Regular files in the entries directory, by name.
    fn files(&self) -> Result<Vec<(String, fs::Metadata)>, CacheError> {
        let dir = self.entries_dir();
        let read_err = |source| CacheError::ReadDir { path: dir.clone(), source };
        let listing = match fs::read_dir(&dir) {
            Ok(listing) => listing,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(read_err(e)),
        };
        let mut files = Vec::new();
        for item in listing {
            let item = item.map_err(read_err)?;
            // Gone since the listing: another process evicted or renamed it.
            let Ok(meta) = item.metadata() else { continue };
            if let (true, Ok(name)) = (meta.is_file(), item.file_name().into_string()) {
                files.push((name, meta));
            }
        }
        Ok(files)
    }

    /// Removes the file `name` of the entries directory; one already gone
    /// (another process evicted it) is no error.
    pub(crate) fn remove(&self, name: &str) -> Result<(), CacheError> {
        let path = self.entries_dir().join(name);
        match fs::remove_file(&path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(CacheError::Remove { path, source: e }),
            _ => Ok(()),
        }
    }
}

/// The cache root for these values of XDG_CACHE_HOME and HOME: a relative
/// XDG_CACHE_HOME is ignored, as the XDG specification says, and so is an
/// empty HOME.
pub(crate) fn root_from(xdg_cache_home: Option<OsString>, home: Option<OsString>) -> Option<PathBuf> {
    let xdg = xdg_cache_home.map(PathBuf::from).filter(|p| p.is_absolute());
    let base = xdg.or_else(|| home.filter(|h| !h.is_empty()).map(|h| Path::new(&h).join(".cache")));
    base.map(|b| b.join("mvm"))
}

/// Checks an entry's header against its contents; returns the code's
/// length with the file at the code's first byte, or why it is corrupt.
fn verify(file: &mut File) -> Result<u64, String> {
    let mut header = [0u8; HEADER_LEN as usize];
    file.read_exact(&mut header).map_err(|e| format!("cannot read its header: {e}"))?;
    if header[..8] != MAGIC {
        return Err("no mvm cache header".into());
    }
    let len = u64::from_le_bytes(header[8..16].try_into().expect("8 bytes"));
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != HEADER_LEN.saturating_add(len) {
        return Err(format!("{size} bytes where its header says {}", HEADER_LEN.saturating_add(len)));
    }
    let mut hasher = Sha256::new();
    let copied = io::copy(&mut (&mut *file).take(len), &mut hasher).map_err(|e| e.to_string())?;
    if copied != len {
        return Err(format!("{copied} bytes of code where its header says {len}"));
    }
    if hasher.finalize()[..] != header[16..] {
        return Err("checksum mismatch".into());
    }
    file.seek(SeekFrom::Start(HEADER_LEN)).map_err(|e| e.to_string())?;
    Ok(len)
}
