//! Where each key of a parsed TOML document is, so that errors found after
//! deserialization, and serde's own errors (which only carry a byte span),
//! can name the key by its dotted path and the line it is on.

use std::ops::Range;

use toml::de::{DeTable, DeValue};
use toml::Spanned;

/// Every key and array element of a document, by dotted path
/// (`guest.memory_mib`, `run.args[1]`, `run.env."A B"`).
pub(crate) struct KeyIndex {
    lines: Lines,
    entries: Vec<Entry>,
}

/// Byte offset to line number.
pub(crate) struct Lines {
    /// Byte offset where each line starts.
    starts: Vec<usize>,
}

impl Lines {
    pub(crate) fn new(text: &str) -> Lines {
        Lines { starts: std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect() }
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line_of(&self, offset: usize) -> usize {
        self.starts.partition_point(|&start| start <= offset)
    }
}

struct Entry {
    path: String,
    /// The key itself; `None` for an array element, which has no key.
    key: Option<Range<usize>>,
    value: Range<usize>,
}

/// What a byte span from a serde error points at.
pub(crate) enum Spot<'a> {
    /// A key: deserialization refused the key itself (it is unknown).
    Key(&'a str),
    /// The value of this key or array element.
    Value(&'a str),
}

impl KeyIndex {
    pub(crate) fn new(text: &str, root: &DeTable<'_>) -> KeyIndex {
        let mut index = KeyIndex { lines: Lines::new(text), entries: Vec::new() };
        index.add_table("", root);
        index
    }

    fn add_table(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (key, value) in table {
            let path = join_key(prefix, key.get_ref());
            self.entries.push(Entry { path: path.clone(), key: Some(key.span()), value: value.span() });
            self.add_children(&path, value);
        }
    }

    fn add_children(&mut self, path: &str, value: &Spanned<DeValue<'_>>) {
        match value.get_ref() {
            DeValue::Table(table) => self.add_table(path, table),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let path = format!("{path}[{i}]");
                    self.entries.push(Entry { path: path.clone(), key: None, value: item.span() });
                    self.add_children(&path, item);
                }
            }
            _ => {}
        }
    }

    /// The 1-based line of byte `offset`.
    pub(crate) fn line_of_offset(&self, offset: usize) -> usize {
        self.lines.line_of(offset)
    }

    /// The line of `path`'s key, or of its nearest ancestor present in the
    /// file (a missing `run.wasm` is reported at `[run]`); `None` when not
    /// even the top-level key is there.
    pub(crate) fn line_of(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(entry) = self.entries.iter().find(|e| e.path == path) {
                let start = entry.key.as_ref().unwrap_or(&entry.value).start;
                return Some(self.line_of_offset(start));
            }
            path = &path[..path.rfind(['.', '['])?];
        }
    }

    /// The innermost key or value whose span holds `span`.
    pub(crate) fn spot(&self, span: &Range<usize>) -> Option<Spot<'_>> {
        if let Some(entry) = self.entries.iter().find(|e| e.key.as_ref() == Some(span)) {
            return Some(Spot::Key(&entry.path));
        }
        self.entries
            .iter()
            .filter(|e| e.value.start <= span.start && span.end <= e.value.end)
            .min_by_key(|e| e.value.len())
            .map(|e| Spot::Value(&e.path))
    }
}

/// `prefix.key`, with the key quoted when it is not a bare TOML key.
pub(crate) fn join_key(prefix: &str, key: &str) -> String {
    let bare = !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    let key = if bare { key.to_owned() } else { format!("{key:?}") };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}
