//! `mvm cache`, and the cache `mvm up` compiles into.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context;
use mvm_api::job::Cache;

use crate::CacheAction;

const MIB: f64 = (1 << 20) as f64;

/// The cache for `mvm up`: `dir`, else the default one. Without either the
/// job still runs, compiled for this run only, after one warning.
pub fn for_job(dir: Option<PathBuf>, max_mib: u64) -> Option<Cache> {
    let Some(root) = dir.or_else(Cache::default_root) else {
        tracing::warn!(
            "no cache directory (neither XDG_CACHE_HOME nor HOME is set; use --cache-dir): compiling for this run only"
        );
        return None;
    };
    Some(Cache::new(root, max_mib << 20))
}

pub fn run(dir: Option<PathBuf>, action: CacheAction) -> anyhow::Result<u8> {
    let root =
        dir.or_else(Cache::default_root).context("no --cache-dir, and neither XDG_CACHE_HOME nor HOME is set")?;
    // The cap matters only when writing, which these actions never do.
    let cache = Cache::new(root, u64::MAX);
    match action {
        CacheAction::Show => {
            let entries = cache.entries()?;
            let bytes: u64 = entries.iter().map(|e| e.bytes).sum();
            println!("dir: {}", cache.root().display());
            println!("entries: {}", entries.len());
            println!("size: {bytes} bytes ({:.1} MiB)", bytes as f64 / MIB);
        }
        CacheAction::List => {
            let now = SystemTime::now();
            for entry in cache.entries()? {
                let age = now.duration_since(entry.last_used).unwrap_or_default().as_secs();
                println!("{}  {:>10} bytes  used {age} s ago", entry.key, entry.bytes);
            }
        }
        CacheAction::Clear => {
            let removed = cache.clear()?;
            println!("removed {removed} entries from {}", cache.root().display());
        }
    }
    Ok(0)
}
