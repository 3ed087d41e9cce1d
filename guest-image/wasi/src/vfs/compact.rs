//! Compact forms of what every inode has: a name in its directory and, for
//! a file, its extents. The common case, a short name and a file in one
//! extent, is held inline, so that making and removing a file allocates and
//! frees nothing of its own on the guest's heap (a first-fit list, where
//! each allocation and each free costs a walk of it).

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use core::borrow::Borrow;
use core::cmp::Ordering;

const INLINE_NAME: usize = 30;

/// A name in a directory, ordered as its text.
pub enum Name {
    Inline { len: u8, bytes: [u8; INLINE_NAME] },
    Heap(Box<str>),
}

impl Name {
    pub fn new(name: &str) -> Name {
        if name.len() <= INLINE_NAME {
            let mut bytes = [0; INLINE_NAME];
            bytes[..name.len()].copy_from_slice(name.as_bytes());
            Name::Inline { len: name.len() as u8, bytes }
        } else {
            Name::Heap(name.into())
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            Name::Inline { len, bytes } => core::str::from_utf8(&bytes[..*len as usize]).expect("made from a str"),
            Name::Heap(name) => name,
        }
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq for Name {
    fn eq(&self, other: &Name) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Name {}

impl PartialOrd for Name {
    fn partial_cmp(&self, other: &Name) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

// As the text orders: lookups by &str (Borrow) rely on it.
impl Ord for Name {
    fn cmp(&self, other: &Name) -> Ordering {
        self.as_str().cmp(other.as_str())
    }
}

/// A file's extents by logical block: (logical, first image block, count),
/// sorted and not overlapping.
#[derive(Default)]
pub enum Extents {
    #[default]
    None,
    One(u64, u64, u32),
    Many(BTreeMap<u64, (u64, u32)>),
}

type Extent = (u64, u64, u32);

impl Extents {
    pub fn len(&self) -> usize {
        match self {
            Extents::None => 0,
            Extents::One(..) => 1,
            Extents::Many(map) => map.len(),
        }
    }

    /// The last extent starting at or before `logical` (`inclusive`), or
    /// strictly before it.
    pub fn before(&self, logical: u64, inclusive: bool) -> Option<Extent> {
        match self {
            Extents::None => None,
            Extents::One(l, s, c) => (*l < logical || (inclusive && *l == logical)).then_some((*l, *s, *c)),
            Extents::Many(map) => {
                let found =
                    if inclusive { map.range(..=logical).next_back() } else { map.range(..logical).next_back() };
                found.map(|(l, (s, c))| (*l, *s, *c))
            }
        }
    }

    pub fn starting_at(&self, logical: u64) -> Option<Extent> {
        match self {
            Extents::One(l, s, c) if *l == logical => Some((*l, *s, *c)),
            Extents::Many(map) => map.get(&logical).map(|(s, c)| (logical, *s, *c)),
            _ => None,
        }
    }

    pub fn last(&self) -> Option<Extent> {
        match self {
            Extents::None => None,
            Extents::One(l, s, c) => Some((*l, *s, *c)),
            Extents::Many(map) => map.last_key_value().map(|(l, (s, c))| (*l, *s, *c)),
        }
    }

    pub fn remove(&mut self, logical: u64) {
        match self {
            Extents::One(l, ..) if *l == logical => *self = Extents::None,
            Extents::Many(map) => {
                map.remove(&logical);
            }
            _ => {}
        }
    }

    /// Adds (or replaces) the extent starting at `logical`.
    pub fn insert(&mut self, logical: u64, start: u64, count: u32) {
        match self {
            Extents::None => *self = Extents::One(logical, start, count),
            Extents::One(l, ..) if *l == logical => *self = Extents::One(logical, start, count),
            Extents::One(l, s, c) => {
                let map = BTreeMap::from([(*l, (*s, *c)), (logical, (start, count))]);
                *self = Extents::Many(map);
            }
            Extents::Many(map) => {
                map.insert(logical, (start, count));
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = Extent> + '_ {
        let one = match self {
            Extents::One(l, s, c) => Some((*l, *s, *c)),
            _ => None,
        };
        let many = match self {
            Extents::Many(map) => Some(map.iter().map(|(l, (s, c))| (*l, *s, *c))),
            _ => None,
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::collections::BTreeSet;
    use alloc::vec::Vec;

    #[test]
    fn names_order_and_compare_as_their_text_inline_or_not() {
        let long = "l".repeat(40);
        let names: BTreeSet<Name> = ["b", "a", long.as_str(), "ab", ""].into_iter().map(Name::new).collect();
        let texts: Vec<&str> = names.iter().map(Name::as_str).collect();
        assert_eq!(texts, ["", "a", "ab", "b", long.as_str()]);
        assert!(matches!(Name::new(&"x".repeat(30)), Name::Inline { .. }));
        assert!(matches!(Name::new(&"x".repeat(31)), Name::Heap(_)));
        assert!(names.contains(long.as_str()) && names.contains("ab") && !names.contains("c"));
    }

    #[test]
    fn extents_answer_alike_with_one_or_many() {
        let mut e = Extents::default();
        assert_eq!((e.len(), e.last(), e.before(5, true)), (0, None, None));
        e.insert(4, 100, 2);
        assert!(matches!(e, Extents::One(..)));
        assert_eq!(e.before(4, true), Some((4, 100, 2)));
        assert_eq!(e.before(4, false), None);
        assert_eq!(e.before(9, false), Some((4, 100, 2)));
        assert_eq!(e.starting_at(4), Some((4, 100, 2)));
        assert_eq!(e.starting_at(5), None);
        e.insert(0, 50, 1);
        assert_eq!(e.len(), 2);
        assert_eq!(e.iter().collect::<Vec<_>>(), [(0, 50, 1), (4, 100, 2)]);
        assert_eq!(e.before(3, true), Some((0, 50, 1)));
        assert_eq!(e.last(), Some((4, 100, 2)));
        e.remove(4);
        e.remove(7);
        assert_eq!(e.iter().collect::<Vec<_>>(), [(0, 50, 1)]);
        let mut one = Extents::One(3, 1, 1);
        one.insert(3, 9, 9);
        assert_eq!(one.iter().collect::<Vec<_>>(), [(3, 9, 9)]);
        one.remove(3);
        assert_eq!(one.len(), 0);
    }
}
