//! The job's files: `/in`, the read-only input files whose bytes stay on the
//! job disk, and `/out`, an in-memory tree written to the output disk as an
//! archive when the job ends. Paths are relative to one of the two; `..`,
//! absolute paths and links do not exist here.

use alloc::collections::BTreeMap;
use alloc::string::String;
use alloc::vec::Vec;

pub enum Node {
    File(Vec<u8>),
    Dir(BTreeMap<String, Node>),
}

/// WASI errno values (wasi_snapshot_preview1).
pub mod errno {
    pub const BADF: u16 = 8;
    pub const EXIST: u16 = 20;
    pub const FAULT: u16 = 21;
    pub const INVAL: u16 = 28;
    pub const IO: u16 = 29;
    pub const ISDIR: u16 = 31;
    pub const NAMETOOLONG: u16 = 37;
    pub const NOENT: u16 = 44;
    pub const NOSYS: u16 = 52;
    pub const NOTDIR: u16 = 54;
    pub const NOTEMPTY: u16 = 55;
    pub const ROFS: u16 = 69;
    pub const SPIPE: u16 = 70;
    pub const NOTCAPABLE: u16 = 76;
}

const NAME_MAX: usize = 255;

/// Splits a WASI path into its components, refusing what would leave the
/// directory it is relative to.
pub fn components(path: &[u8]) -> Result<Vec<String>, u16> {
    let text = core::str::from_utf8(path).map_err(|_| errno::INVAL)?;
    if text.starts_with('/') {
        return Err(errno::NOTCAPABLE);
    }
    let mut parts = Vec::new();
    for part in text.split('/').filter(|p| !p.is_empty() && *p != ".") {
        if part == ".." {
            return Err(errno::NOTCAPABLE);
        }
        if part.len() > NAME_MAX || part.contains('\0') {
            return Err(errno::NAMETOOLONG);
        }
        parts.push(String::from(part));
    }
    Ok(parts)
}

impl Node {
    pub fn dir() -> Node {
        Node::Dir(BTreeMap::new())
    }

    pub fn lookup(&self, path: &[String]) -> Option<&Node> {
        path.iter().try_fold(self, |node, name| match node {
            Node::Dir(entries) => entries.get(name),
            Node::File(_) => None,
        })
    }

    pub fn lookup_mut(&mut self, path: &[String]) -> Option<&mut Node> {
        path.iter().try_fold(self, |node, name| match node {
            Node::Dir(entries) => entries.get_mut(name),
            Node::File(_) => None,
        })
    }

    /// The directory that would hold `path`'s last component.
    pub fn parent_mut(&mut self, path: &[String]) -> Result<&mut BTreeMap<String, Node>, u16> {
        let (_, parents) = path.split_last().ok_or(errno::INVAL)?;
        match self.lookup_mut(parents) {
            Some(Node::Dir(entries)) => Ok(entries),
            Some(Node::File(_)) => Err(errno::NOTDIR),
            None => Err(errno::NOENT),
        }
    }

    /// Every node below this directory, depth first, as (path, node).
    pub fn walk(&self) -> Vec<(String, &Node)> {
        let mut out = Vec::new();
        fn visit<'a>(prefix: &str, node: &'a Node, out: &mut Vec<(String, &'a Node)>) {
            if let Node::Dir(entries) = node {
                for (name, child) in entries {
                    let path = if prefix.is_empty() { name.clone() } else { alloc::format!("{prefix}/{name}") };
                    out.push((path.clone(), child));
                    visit(&path, child, out);
                }
            }
        }
        visit("", self, &mut out);
        out
    }
}
