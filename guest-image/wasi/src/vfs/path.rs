//! Paths resolved beneath a directory, as WASI's capability model asks: a
//! path names something inside the directory it is relative to, or nothing.
//! Absolute paths, `..` above the starting directory and symlinks that lead
//! out of it are refused with EPERM (what wasmtime answers, from cap-std's
//! "escape attempt"); `..` that stays inside is followed. Symlinks inside
//! are followed for every component but the last, and for the last when
//! asked (`lookupflags::symlink_follow`) or when a trailing slash says it
//! must be a directory (POSIX path resolution), up to [`SYMLINKS_MAX`].

use alloc::vec;
use alloc::vec::Vec;

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

/// Checks a path from the module and splits it into components.
fn split(path: &[u8]) -> Result<(&str, Vec<&str>), Errno> {
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
    let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
    if parts.iter().any(|p| p.len() > NAME_MAX) {
        return Err(errno::NAMETOOLONG);
    }
    Ok((path, parts))
}

impl<D: BlockDevice> Fs<D> {
    /// What `path` names beneath directory `base`.
    pub fn resolve(&self, base: u64, path: &[u8], follow: bool) -> Result<u64, Errno> {
        let (text, parts) = split(path)?;
        self.walk(base, parts, follow, text.ends_with('/'))
    }

    /// The directory that holds `path`'s last component, and that
    /// component. A last component "." or ".." names no entry a caller
    /// could create or remove: that is `dots`, the caller's errno for it.
    pub fn resolve_parent<'p>(&self, base: u64, path: &'p [u8], dots: Errno) -> Result<Parent<'p>, Errno> {
        let (text, mut parts) = split(path)?;
        let name = parts.pop().ok_or(errno::NOENT)?;
        if name == "." || name == ".." {
            // Still checked, so that a path that leads nowhere says so.
            self.walk(base, parts, true, true)?;
            return Err(dots);
        }
        let dir = if parts.is_empty() { base } else { self.walk(base, parts, true, true)? };
        Ok(Parent { dir, name, trailing_slash: text.ends_with('/') })
    }

    fn walk<'a>(&'a self, base: u64, parts: Vec<&'a str>, follow_last: bool, mut dir_only: bool) -> Result<u64, Errno> {
        let mut todo: Vec<&str> = parts.into_iter().rev().collect();
        let mut dirs = vec![base];
        let mut symlinks = 0;
        while let Some(part) = todo.pop() {
            let here = *dirs.last().expect("the base stays");
            match part {
                "." => continue,
                ".." if dirs.len() == 1 => return Err(errno::PERM),
                ".." => {
                    dirs.pop();
                    continue;
                }
                _ => {}
            }
            let child = self.entries(here)?.get(part).copied().ok_or(errno::NOENT)?;
            let last = todo.is_empty();
            match &self.nodes[&child].body {
                Body::Dir { .. } => dirs.push(child),
                Body::Symlink(target) if !last || follow_last || dir_only => {
                    symlinks += 1;
                    if symlinks > SYMLINKS_MAX {
                        return Err(errno::LOOP);
                    }
                    if target.starts_with('/') {
                        return Err(errno::PERM);
                    }
                    dir_only |= last && target.ends_with('/');
                    todo.extend(target.split('/').filter(|p| !p.is_empty()).rev());
                }
                _ if !last || dir_only => return Err(errno::NOTDIR),
                _ => return Ok(child),
            }
        }
        Ok(*dirs.last().expect("the base stays"))
    }
}
