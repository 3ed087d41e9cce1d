use std::fs::{self, File};
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::job::cache::{root_from, Cache, CacheError, Key};

const HEADER: u64 = 48;

fn key(n: u8) -> Key {
    Key::new([n; 32])
}

fn code(n: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(n)).collect()
}

/// The code an entry holds, read the way the job disk is staged from it.
fn read(cache: &Cache, key: &Key) -> Option<Vec<u8>> {
    let (_, mut file, len) = cache.get(key)?.into_parts();
    let mut out = Vec::new();
    file.read_to_end(&mut out).unwrap();
    assert_eq!(out.len() as u64, len);
    Some(out)
}

fn entry_file(cache: &Cache, key: &Key) -> std::path::PathBuf {
    cache.entries_dir().join(format!("{key}.cwasm"))
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

fn set_mtime(path: &Path, time: SystemTime) {
    File::options().write(true).open(path).unwrap().set_modified(time).unwrap();
}

#[test]
fn a_miss_then_a_hit_of_the_same_code() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("c"), 1 << 20);
    assert!(cache.get(&key(1)).is_none());
    assert!(!tmp.path().join("c").exists(), "a lookup creates nothing");
    cache.put(&key(1), &code(3, 5000)).unwrap();
    assert_eq!(read(&cache, &key(1)).unwrap(), code(3, 5000));
    assert!(cache.get(&key(2)).is_none(), "another key is another entry");
    let entries = cache.entries().unwrap();
    assert_eq!(entries.len(), 1);
    assert_eq!((entries[0].key.as_str(), entries[0].bytes), (key(1).to_string().as_str(), HEADER + 5000));
    assert_eq!(names(&cache.entries_dir()), [format!("{}.cwasm", key(1))], "no temporary file left");
}

#[test]
fn a_hit_marks_the_entry_used() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 20);
    cache.put(&key(1), b"code").unwrap();
    let old = SystemTime::now() - Duration::from_secs(1000);
    set_mtime(&entry_file(&cache, &key(1)), old);
    assert!(cache.get(&key(1)).is_some());
    assert!(cache.entries().unwrap()[0].last_used > old + Duration::from_secs(900));
}

#[test]
fn a_corrupt_entry_is_removed_and_written_again() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 20);
    cache.put(&key(1), &code(5, 3000)).unwrap();
    let path = entry_file(&cache, &key(1));
    let mut bytes = fs::read(&path).unwrap();
    bytes[HEADER as usize + 1234] ^= 1;
    fs::write(&path, &bytes).unwrap();
    assert!(cache.get(&key(1)).is_none(), "one flipped bit is a miss");
    assert!(!path.exists(), "and the entry is gone");
    cache.put(&key(1), &code(5, 3000)).unwrap();
    assert_eq!(read(&cache, &key(1)).unwrap(), code(5, 3000));
}

#[test]
fn truncated_or_foreign_entries_are_misses() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 20);
    cache.put(&key(1), &code(7, 3000)).unwrap();
    let path = entry_file(&cache, &key(1));
    let whole = fs::read(&path).unwrap();
    let mut longer = whole.clone();
    longer.push(0);
    let mut bad_magic = whole.clone();
    bad_magic[0] ^= 0x20;
    let mut bad_length = whole.clone();
    bad_length[8] ^= 1;
    let cases: [(&str, &[u8]); 6] = [
        ("cut in its code", &whole[..whole.len() - 1]),
        ("cut in its header", &whole[..20]),
        ("empty", b""),
        ("longer than its header says", &longer),
        ("another magic", &bad_magic),
        ("another length", &bad_length),
    ];
    for (what, bytes) in cases {
        fs::write(&path, bytes).unwrap();
        assert!(cache.get(&key(1)).is_none(), "{what}");
        assert!(!path.exists(), "{what}: removed");
    }
    fs::write(&path, &whole).unwrap();
    assert_eq!(read(&cache, &key(1)).unwrap(), code(7, 3000), "the whole entry still reads");
}

#[test]
fn concurrent_writers_of_one_key_all_succeed() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Arc::new(Cache::new(tmp.path().to_path_buf(), 64 << 20));
    let code = Arc::new(code(11, 1 << 20));
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let (cache, code) = (cache.clone(), code.clone());
            std::thread::spawn(move || {
                for _ in 0..4 {
                    cache.put(&key(1), &code).unwrap();
                    // Every reader sees a whole entry, never a partial one.
                    if let Some(got) = read(&cache, &key(1)) {
                        assert_eq!(got, *code, "thread {i}");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(read(&cache, &key(1)).unwrap(), *code);
    assert_eq!(names(&cache.entries_dir()), [format!("{}.cwasm", key(1))], "no temporary file left");
}

#[test]
fn the_least_recently_used_entries_go_first() {
    let tmp = tempfile::tempdir().unwrap();
    let each = HEADER + 1000;
    let cache = Cache::new(tmp.path().to_path_buf(), 3 * each + 100);
    let start = SystemTime::now() - Duration::from_secs(100);
    for n in 1..=3 {
        cache.put(&key(n), &code(n, 1000)).unwrap();
        set_mtime(&entry_file(&cache, &key(n)), start + Duration::from_secs(u64::from(n)));
    }
    assert!(cache.get(&key(1)).is_some(), "1 is now the most recently used");
    cache.put(&key(4), &code(4, 1000)).unwrap();
    let kept: Vec<String> = cache.entries().unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(kept, [key(3), key(1), key(4)].map(|k| k.to_string()), "2 was the least recently used");

    cache.put(&key(5), &code(5, 2500)).unwrap();
    let kept: Vec<String> = cache.entries().unwrap().into_iter().map(|e| e.key).collect();
    assert_eq!(kept, [key(5).to_string()], "as many as needed go, oldest first");
}

#[test]
fn code_that_fills_the_cap_exactly_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), (1 << 20) + HEADER);
    cache.put(&key(1), &code(1, 1 << 20)).unwrap();
    assert_eq!(read(&cache, &key(1)).unwrap(), code(1, 1 << 20));
}

#[test]
fn code_larger_than_the_cap_is_not_written() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 20);
    let e = cache.put(&key(1), &code(1, 1 << 20)).unwrap_err();
    assert!(matches!(e, CacheError::TooLarge { .. }), "{e}");
    assert_eq!(e.to_string(), "1048624 bytes of compiled code is more than the cache's cap of 1 MiB (--cache-max-mib)");
    assert!(!cache.entries_dir().exists());
}

#[test]
fn an_unwritable_cache_fails_to_put_and_misses() {
    let tmp = tempfile::tempdir().unwrap();
    // A file where the directory should be: refused even to root.
    let root = tmp.path().join("file");
    fs::write(&root, "not a directory").unwrap();
    let cache = Cache::new(root.clone(), 1 << 20);
    let e = cache.put(&key(1), b"code").unwrap_err();
    assert!(matches!(e, CacheError::CreateDir { .. }), "{e}");
    assert!(cache.get(&key(1)).is_none());
    assert!(cache.entries().is_err(), "listing says it cannot read the directory");
    assert_eq!(fs::read(&root).unwrap(), b"not a directory");
}

#[test]
fn stale_temporary_files_are_removed_on_the_next_write() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 20);
    cache.put(&key(1), b"code").unwrap();
    let dir = cache.entries_dir();
    fs::write(dir.join(".tmp-stale"), "left by a writer that died").unwrap();
    set_mtime(&dir.join(".tmp-stale"), SystemTime::now() - Duration::from_secs(2 * 3600));
    fs::write(dir.join(".tmp-busy"), "being written").unwrap();
    cache.put(&key(2), b"more code").unwrap();
    let mut expected = vec![".tmp-busy".to_string(), format!("{}.cwasm", key(1)), format!("{}.cwasm", key(2))];
    expected.sort();
    assert_eq!(names(&dir), expected);
    assert_eq!(cache.entries().unwrap().len(), 2, "temporary files are not entries");
}

#[test]
fn clear_removes_everything() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 20);
    assert_eq!(cache.clear().unwrap(), 0, "nothing to clear in a cache not yet made");
    for n in 1..=3 {
        cache.put(&key(n), b"code").unwrap();
    }
    fs::write(cache.entries_dir().join(".tmp-x"), "").unwrap();
    assert_eq!(cache.clear().unwrap(), 3);
    assert!(names(&cache.entries_dir()).is_empty());
    assert!(cache.get(&key(1)).is_none());
}

#[test]
fn the_root_is_xdg_cache_home_else_home_dot_cache() {
    let some = |s: &str| Some(std::ffi::OsString::from(s));
    assert_eq!(root_from(some("/x"), some("/h")), Some("/x/mvm".into()));
    assert_eq!(root_from(some("rel"), some("/h")), Some("/h/.cache/mvm".into()), "a relative XDG path is ignored");
    assert_eq!(root_from(None, some("/h")), Some("/h/.cache/mvm".into()));
    assert_eq!(root_from(None, some("")), None, "an empty HOME is none");
    assert_eq!(root_from(None, None), None);
    // And this process's own environment is what decides.
    let env = root_from(std::env::var_os("XDG_CACHE_HOME"), std::env::var_os("HOME"));
    assert!(env.is_some(), "the tests run with HOME set");
    assert_eq!(Cache::default_root(), env);
}

#[test]
fn removing_an_entry_already_gone_is_no_error_but_a_failed_removal_is() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().to_path_buf(), 1 << 30);
    cache.put(&key(1), &code(1, 100)).unwrap();
    let name = |k: &Key| entry_file(&cache, k).file_name().unwrap().to_str().unwrap().to_owned();
    cache.remove(&name(&key(1))).unwrap();
    assert!(read(&cache, &key(1)).is_none());
    cache.remove(&name(&key(1))).unwrap();
    // A directory where an entry's file would be cannot be removed as one
    // (root bypasses permissions, so this is the failure a test can make).
    fs::create_dir(entry_file(&cache, &key(2))).unwrap();
    assert!(matches!(cache.remove(&name(&key(2))), Err(CacheError::Remove { .. })));
}

#[test]
fn a_compile_lock_leaves_no_file_and_only_removes_directories_it_made() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"), 1 << 30);
    drop(cache.lock_compile(&key(1)).unwrap());
    assert!(!tmp.path().join("cache").exists(), "nothing is left of a compile that stored nothing");
    // A cache directory the user made stays, empty or not.
    fs::create_dir(tmp.path().join("cache")).unwrap();
    drop(cache.lock_compile(&key(1)).unwrap());
    assert_eq!(names(&tmp.path().join("cache")), Vec::<String>::new());
    let lock = cache.lock_compile(&key(1)).unwrap();
    cache.put(&key(1), &code(1, 10)).unwrap();
    drop(lock);
    assert_eq!(names(&cache.entries_dir()), [format!("{}.cwasm", key(1))]);
}
