//! Paths resolved beneath a directory, as WASI's capability model asks: a
//! path names something inside the directory it is relative to, or nothing.
//! Absolute paths, `..` above the starting directory and symlinks that lead
//! out of it are refused with EPERM (what wasmtime answers, from cap-std's
//! "escape attempt"); `..` that stays inside is followed. Symlinks inside
//! are followed for every component but the last, and for the last when
//! asked (`lookupflags::symlink_follow`) or when a trailing slash says it
//! must be a directory (POSIX path resolution), up to [`SYMLINKS_MAX`].

use alloc::vec::Vec;
use core::iter::{Filter, Peekable};
use core::str::Split;

use super::{Body, Fs, SYMLINKS_MAX};
use crate::errno::{self, Errno};
use crate::fsimage::NAME_MAX;
use crate::BlockDevice;

/// Where a name would be: the directory that holds (or would hold) it.
#[derive(Debug, PartialEq, Eq)]
pub struct Parent<'a> {
    pub dir: u64,
    pub name: &'a str,
    /// The path ended in "/": what it names must be a directory.
    pub trailing_slash: bool,
}

/// A path's components, the empty ones (from "//" or a trailing "/") left out.
type Parts<'a> = Peekable<Filter<Split<'a, char>, fn(&&str) -> bool>>;

fn parts(path: &str) -> Parts<'_> {
    fn named(part: &&str) -> bool {
        !part.is_empty()
    }
    path.split('/').filter(named as fn(&&str) -> bool).peekable()
}

/// Checks a path from the module: no allocation, as a path is resolved on
/// every call that names one.
fn check(path: &[u8]) -> Result<&str, Errno> {
    let path = core::str::from_utf8(path).map_err(|_| errno::ILSEQ)?;
    if path.is_empty() {
        return Err(errno::NOENT);
    }
    if path.contains('\0') {
        return Err(errno::INVAL);
    }
    if path.starts_with('/') {
        return Err(errno::PERM);
    }
    if parts(path).any(|p| p.len() > NAME_MAX) {
        return Err(errno::NAMETOOLONG);
    }
    Ok(path)
}

impl<D: BlockDevice> Fs<D> {
    /// What `path` names beneath directory `base`.
    pub fn resolve(&self, base: u64, path: &[u8], follow: bool) -> Result<u64, Errno> {
        let path = check(path)?;
        self.walk(base, path, follow, path.ends_with('/'))
    }

    /// The directory that holds `path`'s last component, and that
    /// component. A last component "." or ".." names no entry a caller
    /// could create or remove: that is `dots`, the caller's errno for it.
    pub fn resolve_parent<'p>(&self, base: u64, path: &'p [u8], dots: Errno) -> Result<Parent<'p>, Errno> {
        let path = check(path)?;
        let trimmed = path.trim_end_matches('/');
        let (leading, name) = trimmed.rsplit_once('/').unwrap_or(("", trimmed));
        let dir = self.walk(base, leading, true, true)?;
        if name == "." || name == ".." {
            return Err(dots);
        }
        Ok(Parent { dir, name, trailing_slash: path.ends_with('/') })
    }

    /// Follows `path` down from `base`. Only directories are passed through,
    /// each entered from its parent, so `..` is the parent's inode, and
    /// `..` at `base` would leave it.
    fn walk<'a>(&'a self, base: u64, path: &'a str, follow_last: bool, mut dir_only: bool) -> Result<u64, Errno> {
        let mut now = parts(path);
        // What is left of the paths a symlink interrupted: allocated only
        // when a symlink is met.
        let mut interrupted: Vec<Parts<'a>> = Vec::new();
        let mut here = base;
        let mut symlinks = 0;
        loop {
            let Some(part) = now.next() else {
                match interrupted.pop() {
                    Some(rest) => {
                        now = rest;
                        continue;
                    }
                    None => return Ok(here),
                }
            };
            match part {
                "." => continue,
                ".." if here == base => return Err(errno::PERM),
                ".." => {
                    here = self.parent(here);
                    continue;
                }
                _ => {}
            }
            let child = self.entries(here)?.get(part).copied().ok_or(errno::NOENT)?;
            let last = now.peek().is_none() && interrupted.iter_mut().all(|rest| rest.peek().is_none());
            match &self.nodes[&child].body {
                Body::Dir { .. } => here = child,
                Body::Symlink(target) if !last || follow_last || dir_only => {
                    symlinks += 1;
                    if symlinks > SYMLINKS_MAX {
                        return Err(errno::LOOP);
                    }
                    if target.starts_with('/') {
                        return Err(errno::PERM);
                    }
                    dir_only |= last && target.ends_with('/');
                    interrupted.push(core::mem::replace(&mut now, parts(target)));
                }
                _ if !last || dir_only => return Err(errno::NOTDIR),
                _ => return Ok(child),
            }
        }
    }
}
