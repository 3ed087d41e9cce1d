use std::fs;
use std::path::Path;

use sha2::Digest;

use crate::job::cache::Cache;
use crate::job::compile::{
    cpu_has, host_isa_flags, load_module, min_memory_bytes, prepare, Compiler, MAX_MODULE_BYTES,
};
use crate::job::{CompileError, CompiledModule};

const HELLO: &str = r#"(module
  (memory (export "memory") 1)
  (func (export "_start") (result i32) (i32.add (i32.const 1) (i32.const 2))))"#;

fn wasm(text: &str) -> Vec<u8> {
    wat::parse_str(text).unwrap()
}

fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> std::path::PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    path
}

/// Everything under `dir`, recursively, as paths relative to it.
fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(listing) = fs::read_dir(dir) {
        for item in listing {
            let path = item.unwrap().path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                found.extend(tree(&path).into_iter().map(|p| format!("{}/{p}", path.file_name().unwrap().display())));
            }
        }
    }
    found.sort();
    found
}

fn bytes(module: CompiledModule) -> Vec<u8> {
    match module {
        CompiledModule::Fresh(code) => code,
        CompiledModule::Cached(entry) => {
            let (_, mut file, _) = entry.into_parts();
            let mut code = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut code).unwrap();
            code
        }
    }
}

#[test]
fn keys_depend_on_the_module_only_for_one_engine() {
    let (a, b) = (Compiler::new().unwrap(), Compiler::new().unwrap());
    let hello = wasm(HELLO);
    assert_eq!(a.key(&hello), b.key(&hello), "stable across engines of the same configuration");
    assert_ne!(a.key(&hello), a.key(&wasm("(module)")));
    assert_eq!(a.key(&hello).to_string().len(), 64);
}

/// The fingerprint comes from an engine that compiles on one thread; the
/// code from one that compiles on all. Only if their artifacts carry the
/// same record does the key say which code an entry holds.
#[test]
fn the_fingerprint_is_the_compiling_engines_record() {
    let compiler = Compiler::new().unwrap();
    let empty = compiler.compile(Path::new("empty.wasm"), &crate::job::compile::WASM_PREAMBLE).unwrap();
    assert_eq!(compiler.fingerprint(), <[u8; 32]>::from(sha2::Sha256::digest(empty)));
}

/// The flag each ISA feature is detected by in /proc/cpuinfo: an oracle
/// independent of std's detection.
fn cpuinfo_flag(feature: &str) -> &'static str {
    match feature {
        "sse3" => "pni",
        "ssse3" => "ssse3",
        "sse4.1" => "sse4_1",
        "sse4.2" => "sse4_2",
        "popcnt" => "popcnt",
        "cmpxchg16b" => "cx16",
        "bmi1" => "bmi1",
        "bmi2" => "bmi2",
        "lzcnt" => "abm",
        other => panic!("no cpuinfo flag known for {other}: add it here"),
    }
}

#[test]
fn the_compiled_code_uses_every_isa_feature_this_cpu_has() {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo.lines().find(|l| l.starts_with("flags")).unwrap().split_whitespace().collect();
    let enabled = host_isa_flags();
    for (flag, feature) in mvm_wasm_config::ISA_FEATURES {
        let has = flags.contains(&cpuinfo_flag(feature));
        assert_eq!(enabled.contains(flag), has, "{flag} ({feature}): cpuinfo says {has}");
    }
    // A feature the shared list gains but detection does not know is left
    // off: slower code, never code the CPU might not run.
    assert!(!cpu_has("avx512f"));
}

/// What the shared configuration leaves out is refused, though wasmtime's
/// own default engine would compile it: the host compiles with the guest's
/// configuration, not wasmtime's defaults.
#[test]
fn modules_needing_what_the_shared_configuration_leaves_out_are_invalid() {
    let typed_function_reference = wasm("(module (type $t (func)) (func (param (ref $t))))");
    assert!(wasmtime::Engine::default().precompile_module(&typed_function_reference).is_ok());
    let e = Compiler::new().unwrap().compile(Path::new("m.wat"), &typed_function_reference).unwrap_err();
    assert!(matches!(e, CompileError::Invalid { .. }), "{e}");
}

/// A file that grows after its size was checked (here a FIFO, whose size
/// is 0) is still refused once more than the cap has been read.
#[test]
fn a_module_that_grows_past_the_cap_while_read_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("m.wasm");
    let path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(path.as_ptr(), 0o600) }, 0);
    let writer = {
        let fifo = fifo.clone();
        std::thread::spawn(move || {
            use std::io::Write;
            // The reader stops at cap + 1 bytes and closes: a broken pipe.
            let _ = fs::OpenOptions::new().write(true).open(fifo).unwrap().write_all(&[0u8; 4096]);
        })
    };
    let e = load_module(&fifo, 100).unwrap_err();
    assert!(matches!(e, CompileError::TooLarge { max: 100, .. }), "{e}");
    writer.join().unwrap();
}

/// Jobs of one module started at once (a daemon's) compile it once: the
/// others wait for that compile and take its code from the cache.
#[test]
fn a_module_wanted_by_several_at_once_is_compiled_once() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "m.wat", HELLO);
    let cache = std::sync::Arc::new(Cache::new(tmp.path().join("cache"), 1 << 30));
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let compiles: Vec<_> = (0..4)
        .map(|_| {
            let (path, cache, start) = (path.clone(), cache.clone(), start.clone());
            std::thread::spawn(move || {
                start.wait();
                matches!(prepare(&path, 16, Some(&cache)).unwrap(), CompiledModule::Fresh(_))
            })
        })
        .collect();
    let fresh = compiles.into_iter().map(|t| t.join().unwrap()).filter(|fresh| *fresh).count();
    assert_eq!(fresh, 1, "compiled once, found three times");
    assert_eq!(cache.entries().unwrap().len(), 1);
}

#[test]
fn wat_is_assembled_and_wasm_is_checked() {
    let tmp = tempfile::tempdir().unwrap();
    let wat = write(tmp.path(), "m.wat", HELLO);
    let bytes = load_module(&wat, MAX_MODULE_BYTES).unwrap();
    assert_eq!(bytes, wasm(HELLO));
    let module = write(tmp.path(), "m.wasm", &bytes);
    assert_eq!(load_module(&module, MAX_MODULE_BYTES).unwrap(), bytes);

    let cases = [
        ("text.wasm", b"(module)".to_vec()),
        ("component.wasm", wasm("(component)")),
        ("elf.wasm", b"\x7fELF\x02\x01\x01\0 not wasmtime's".to_vec()),
    ];
    for (name, contents) in cases {
        let e = load_module(&write(tmp.path(), name, contents), MAX_MODULE_BYTES).unwrap_err();
        assert!(matches!(e, CompileError::NotWasm { .. }), "{name}: {e}");
    }
    let e = load_module(&write(tmp.path(), "bad.wat", "(module (func (oops)))"), MAX_MODULE_BYTES).unwrap_err();
    assert!(matches!(e, CompileError::Wat { .. }), "{e}");
    let e = load_module(&tmp.path().join("gone.wasm"), MAX_MODULE_BYTES).unwrap_err();
    assert!(matches!(e, CompileError::Read { .. }), "{e}");
}

#[test]
fn precompiled_code_is_refused_whatever_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let code = Compiler::new().unwrap().compile(Path::new("hello.wat"), &wasm(HELLO)).unwrap();
    let path = write(tmp.path(), "m.wasm", &code);
    let e = load_module(&path, MAX_MODULE_BYTES).unwrap_err();
    assert!(matches!(e, CompileError::Precompiled { .. }), "{e}");
    assert!(e.to_string().contains("mvm runs only code it compiled itself"), "{e}");
}

#[test]
fn modules_over_the_cap_are_refused_before_they_are_read() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "m.wasm", wasm(HELLO));
    let size = fs::metadata(&path).unwrap().len();
    assert!(load_module(&path, size).is_ok(), "the cap itself is allowed");
    let e = load_module(&path, size - 1).unwrap_err();
    assert!(matches!(e, CompileError::TooLarge { .. }), "{e}");
    let e = load_module(&path, 0).unwrap_err();
    assert!(e.to_string().ends_with("m.wasm: more than 0 MiB, the largest module mvm compiles"), "{e}");
    assert_eq!(MAX_MODULE_BYTES, 256 << 20, "the cap README documents");
}

#[test]
fn the_minimum_memory_counts_every_memory() {
    let page = 64 << 10;
    assert_eq!(min_memory_bytes(&wasm("(module)")), Some(0));
    assert_eq!(min_memory_bytes(&wasm("(module (memory 3))")), Some(3 * page));
    assert_eq!(min_memory_bytes(&wasm("(module (memory i64 5))")), Some(5 * page));
    let both = r#"(module (import "env" "m" (memory 2)) (memory 7) (memory 1))"#;
    assert_eq!(min_memory_bytes(&wasm(both)), Some(10 * page));
    assert_eq!(min_memory_bytes(&wasm("(module (memory 65536))")), Some(65536 * page));
    assert_eq!(min_memory_bytes(b"\0asm\x01\0\0\0\x05\x03\x01"), None, "a cut memory section");
    // Memories come before code, which is not read: a module cut inside its
    // code still says what memory it needs (and is refused for that before
    // a compiler spends time on it).
    let module = wasm("(module (memory 9) (func (drop (i32.add (i32.const 1) (i32.const 2)))))");
    let cut = &module[..module.len() - 3];
    assert_eq!(min_memory_bytes(cut), Some(9 * page));
}

#[test]
fn bad_modules_are_refused_and_nothing_is_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"), 1 << 30);
    let cases = [
        ("(module (func (result i32)))", "invalid module: "),
        (r#"(module (memory 1 1 shared))"#, "invalid module: "),
        ("(module (type (struct)))", "invalid module: "),
        (
            "(module (memory 257))",
            "module needs at least 17 MiB of linear memory but the guest has 16 MiB (raise guest.memory_mib)",
        ),
    ];
    for (text, says) in cases {
        let path = write(tmp.path(), "m.wat", text);
        let e = prepare(&path, 16, Some(&cache)).err().unwrap();
        let message = e.to_string();
        assert!(message.starts_with(&format!("{}: {says}", path.display())), "{text}: {message}");
        assert!(tree(&tmp.path().join("cache")).is_empty(), "{text}");
    }
    let e = prepare(&write(tmp.path(), "v.wat", "(module (func (result i32)))"), 16, None).err().unwrap();
    assert!(e.to_string().contains("type mismatch"), "wasmtime's reason is given: {e}");
    let e = prepare(&write(tmp.path(), "t.wat", "(module (memory 1 1 shared))"), 16, None).err().unwrap();
    assert!(e.to_string().contains("threads"), "a disabled proposal is named: {e}");
    assert!(prepare(&write(tmp.path(), "fits.wat", "(module (memory 256))"), 16, None).is_ok(), "16 MiB fits 16 MiB");
}

#[test]
fn a_module_is_compiled_once_then_taken_from_the_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let cache = Cache::new(tmp.path().join("cache"), 1 << 30);
    let path = write(tmp.path(), "m.wat", HELLO);
    let first = prepare(&path, 16, Some(&cache)).unwrap();
    assert!(matches!(first, CompiledModule::Fresh(_)));
    let first = bytes(first);
    assert_eq!(cache.entries().unwrap().len(), 1);
    let second = prepare(&path, 16, Some(&cache)).unwrap();
    assert!(matches!(second, CompiledModule::Cached(_)));
    assert_eq!(bytes(second), first);

    // Corrupt it: compiled again, and the same code comes out.
    let entry = cache.entries_dir().join(format!("{}.cwasm", cache.entries().unwrap()[0].key));
    let mut stored = fs::read(&entry).unwrap();
    let last = stored.len() - 1;
    stored[last] ^= 0xff;
    fs::write(&entry, stored).unwrap();
    let third = prepare(&path, 16, Some(&cache)).unwrap();
    assert!(matches!(third, CompiledModule::Fresh(_)), "a corrupt entry is not used");
    assert_eq!(bytes(third), first);
    assert!(matches!(prepare(&path, 16, Some(&cache)).unwrap(), CompiledModule::Cached(_)), "and is rewritten");
}

#[test]
fn an_unwritable_cache_still_gives_the_code() {
    let tmp = tempfile::tempdir().unwrap();
    let root = write(tmp.path(), "not-a-dir", "x");
    let cache = Cache::new(root, 1 << 30);
    let path = write(tmp.path(), "m.wat", HELLO);
    let code = prepare(&path, 16, Some(&cache)).unwrap();
    assert!(matches!(code, CompiledModule::Fresh(ref c) if !c.is_empty()));
    assert_eq!(tree(tmp.path()), ["m.wat", "not-a-dir"]);
}
