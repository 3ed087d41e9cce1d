use std::fs;
use std::io::Read;
use std::path::Path;

use crate::job::cache::{Cache, Key};
use crate::job::{write_input_image, ArchiveError, CompiledModule};

struct Entry {
    path: String,
    mode: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
    ustar: bool,
    data: Vec<u8>,
}

/// Every entry of a tar file, read with the `tar` crate.
fn read_tar(image: &Path) -> Vec<Entry> {
    let mut archive = tar::Archive::new(fs::File::open(image).unwrap());
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let h = e.header().clone();
            let mut data = Vec::new();
            e.read_to_end(&mut data).unwrap();
            assert_eq!(h.entry_type(), tar::EntryType::Regular);
            assert_eq!(h.size().unwrap(), data.len() as u64);
            Entry {
                path: e.path().unwrap().to_str().unwrap().to_owned(),
                mode: h.mode().unwrap(),
                mtime: h.mtime().unwrap(),
                uid: h.uid().unwrap(),
                gid: h.gid().unwrap(),
                ustar: h.as_ustar().is_some(),
                data,
            }
        })
        .collect()
}

fn code(bytes: &[u8]) -> CompiledModule {
    CompiledModule::Fresh(bytes.to_vec())
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

#[test]
fn input_image_round_trips_through_tar() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("in.img");
    let module = b"\x7fELF compiled code";
    let argv = strings(&["wc.wasm", "/in/words.txt", "", "-x"]);
    let env = vec![("LANG".to_string(), "C".to_string()), ("EMPTY".to_string(), String::new())];
    let preopens = strings(&["/in", "/out", "/data/set", "/"]);
    let size = write_input_image(&image, code(module), &argv, &env, &preopens).unwrap();

    assert_eq!(size, fs::metadata(&image).unwrap().len());
    assert_eq!(size % 4096, 0);
    let entries = read_tar(&image);
    let names: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["job/module.cwasm", "job/args", "job/env", "job/preopens"]);
    for e in &entries {
        assert!(e.ustar, "{} is not a ustar header", e.path);
        assert_eq!((e.mode, e.mtime, e.uid, e.gid), (0o444, 0, 0, 0), "{}", e.path);
    }
    assert_eq!(entries[0].data, module);
    assert_eq!(entries[1].data, b"wc.wasm\0/in/words.txt\0\0-x\0");
    assert_eq!(entries[2].data, b"LANG=C\0EMPTY=\0");
    assert_eq!(entries[3].data, b"/in\0/out\0/data/set\0/\0");
}

#[test]
fn cached_code_is_streamed_from_its_entry_even_once_evicted() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"), 1 << 30);
    let code: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let key = Key::new([9; 32]);
    cache.put(&key, &code).unwrap();
    let entry = cache.get(&key).unwrap();
    // Another job's eviction or `mvm cache clear` between lookup and staging.
    assert_eq!(cache.clear().unwrap(), 1);
    let image = tmp.path().join("in.img");
    write_input_image(&image, CompiledModule::Cached(entry), &strings(&["m.wasm"]), &[], &[]).unwrap();
    let entries = read_tar(&image);
    assert_eq!(entries[0].path, "job/module.cwasm");
    assert_eq!(entries[0].data, code, "the code alone, without the entry's header");
}

#[test]
fn small_input_image_is_one_page_and_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a.img");
    let b = tmp.path().join("b.img");
    assert_eq!(write_input_image(&a, code(b"\x7fELF"), &strings(&["m.wasm"]), &[], &[]).unwrap(), 4096);
    write_input_image(&b, code(b"\x7fELF"), &strings(&["m.wasm"]), &[], &[]).unwrap();
    assert_eq!(fs::read(&a).unwrap(), fs::read(&b).unwrap());
    let entries = read_tar(&a);
    assert_eq!(entries[2].path, "job/env");
    assert!(entries[2].data.is_empty());
}

#[test]
fn nul_bytes_in_argv_or_env_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let image = tmp.path().join("in.img");
    let e = write_input_image(&image, code(b""), &strings(&["m", "a\0b"]), &[], &[]).unwrap_err();
    assert!(matches!(e, ArchiveError::ContainsNul { what: "argument", .. }), "{e}");
    let env = [("K".to_string(), "v\0".to_string())];
    let e = write_input_image(&image, code(b""), &[], &env, &[]).unwrap_err();
    assert!(matches!(e, ArchiveError::ContainsNul { what: "environment variable", .. }), "{e}");
}
