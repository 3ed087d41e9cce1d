//! The Python example end to end: CPython for WASI (fetched by
//! scripts/setup) reads a read-only mounted directory tree and a read-only
//! mounted script, and writes a summary and a tree of counts under /out,
//! which come back to the host. Runs from a temporary copy of the example.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use common::{mvm, text};

/// What report.py computes for one directory's own files, counted here
/// from the host's copy of the input as wc(1) counts.
#[derive(Default, Clone, Copy, PartialEq, Debug)]
struct Counts {
    files: u64,
    lines: u64,
    words: u64,
    bytes: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.files += other.files;
        self.lines += other.lines;
        self.words += other.words;
        self.bytes += other.bytes;
    }

    fn of(data: &[u8]) -> Counts {
        Counts {
            files: 1,
            lines: data.iter().filter(|&&b| b == b'\n').count() as u64,
            words: data.split(|b| b.is_ascii_whitespace()).filter(|w| !w.is_empty()).count() as u64,
            bytes: data.len() as u64,
        }
    }
}

/// The input tree, read on the host: per directory (relative, "." for the
/// root) its counts and its counts.txt as report.py writes it, and the
/// words (runs of letters, lower-cased) with how often each occurs.
struct Expected {
    dirs: BTreeMap<String, (Counts, String)>,
    words: BTreeMap<String, u64>,
}

fn read_tree(root: &Path, rel: &str, expected: &mut Expected) {
    let dir = if rel == "." { root.to_path_buf() } else { root.join(rel) };
    let mut entries: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap()).collect();
    entries.sort_by_key(|e| e.file_name());
    let (mut mine, mut listing, mut subdirs) = (Counts::default(), String::new(), Vec::new());
    for entry in entries {
        let name = entry.file_name().into_string().unwrap();
        if entry.file_type().unwrap().is_dir() {
            subdirs.push(if rel == "." { name } else { format!("{rel}/{name}") });
            continue;
        }
        let data = std::fs::read(entry.path()).unwrap();
        let counts = Counts::of(&data);
        listing += &format!("{name} lines={} words={} bytes={}\n", counts.lines, counts.words, counts.bytes);
        mine.add(counts);
        let text = String::from_utf8(data).unwrap();
        for word in text.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
            *expected.words.entry(word.to_lowercase()).or_default() += 1;
        }
    }
    listing += &format!("total files={} lines={} words={} bytes={}\n", mine.files, mine.lines, mine.words, mine.bytes);
    expected.dirs.insert(rel.to_string(), (mine, listing));
    for sub in subdirs {
        read_tree(root, &sub, expected);
    }
}

/// Every file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                found.push(entry.path().strip_prefix(dir).unwrap().to_str().unwrap().to_string());
            }
        }
    }
    found.sort();
    found
}

/// Every file under `dir` with its bytes, to check that read-only mounts
/// come back unchanged.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    files_under(dir).into_iter().map(|f| (f.clone(), std::fs::read(dir.join(&f)).unwrap())).collect()
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn python_example_reads_a_tree_and_writes_nested_outputs() {
    common::require_kvm();
    let work = common::example("python");
    assert!(
        work.path.join("python.wasm").exists(),
        "examples/python/python.wasm is missing: run scripts/setup (or scripts/fetch-python --dest examples/python/python.wasm)"
    );
    let data = work.path.join("data");
    let mut expected = Expected { dirs: BTreeMap::new(), words: BTreeMap::new() };
    read_tree(&data, ".", &mut expected);
    let (app_before, data_before) = (snapshot(&work.path.join("app")), snapshot(&data));

    // Compiling CPython (a 26 MB module) on a busy two-core host takes a
    // while the first time; later runs take the compiled code from the cache.
    let out = common::measure_within(mvm().arg("up").arg(work.job()), Duration::from_secs(600));
    assert_eq!(out.code(), 0, "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr).lines().last(), Some("mvm: job python ended: exit 0"));

    let mut total = Counts::default();
    for (counts, _) in expected.dirs.values() {
        total.add(*counts);
    }
    let mut top: Vec<(&String, &u64)> = expected.words.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    top.truncate(5);
    let n_dirs = expected.dirs.len();
    let common_words: Vec<String> = top.iter().map(|(w, n)| format!("{w} ({n})")).collect();
    assert_eq!(
        text(&out.stdout),
        format!(
            "{} files in {n_dirs} directories: {} lines, {} words, {} bytes\nmost common words: {}\n\
             wrote /out/summary.json and {n_dirs} counts.txt under /out/by-dir\n",
            total.files,
            total.lines,
            total.words,
            total.bytes,
            common_words.join(", ")
        )
    );

    let outputs = work.path.join("out");
    let mut want_files: Vec<String> = expected
        .dirs
        .keys()
        .map(|rel| if rel == "." { "by-dir/counts.txt".to_string() } else { format!("by-dir/{rel}/counts.txt") })
        .collect();
    want_files.push("summary.json".to_string());
    want_files.sort();
    assert_eq!(files_under(&outputs), want_files);
    for (rel, (_, listing)) in &expected.dirs {
        let path = if rel == "." {
            outputs.join("by-dir/counts.txt")
        } else {
            outputs.join("by-dir").join(rel).join("counts.txt")
        };
        assert_eq!(&std::fs::read_to_string(&path).unwrap(), listing, "{}", path.display());
    }

    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(outputs.join("summary.json")).unwrap()).unwrap();
    let as_json =
        |c: &Counts| serde_json::json!({"files": c.files, "lines": c.lines, "words": c.words, "bytes": c.bytes});
    let dirs: serde_json::Map<String, serde_json::Value> =
        expected.dirs.iter().map(|(rel, (c, _))| (rel.clone(), as_json(c))).collect();
    assert_eq!(
        summary,
        serde_json::json!({
            "input": "/data",
            "directories": dirs,
            "total": as_json(&total),
            "top_words": top.iter().map(|(w, n)| serde_json::json!([w, n])).collect::<Vec<_>>(),
        })
    );

    // The read-only mounts come back as they were.
    assert_eq!(snapshot(&work.path.join("app")), app_before);
    assert_eq!(snapshot(&data), data_before);
}
