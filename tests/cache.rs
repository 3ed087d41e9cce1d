//! Compiling ahead of time and the compiled-code cache, through the CLI:
//! bad modules refused before any VM (and leaving nothing behind), the cache
//! filled, hit, shown, listed and cleared, writers racing, an unwritable
//! cache. None of these boots a VM: the KVM device is one that does not
//! exist, so a job that gets past compiling ends at "cannot run the job's VM".

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Output;

use common::{mvm, text};

const MVM_ERROR: i32 = 125;
const NO_KVM: &str = "--kvm-device=/nonexistent/kvm";
const HELLO: &str = r#"(module (func (export "_start")))"#;

/// A job folder (a 16 MiB guest), a private TMPDIR and a cache directory,
/// all temporary.
struct Setup {
    dir: tempfile::TempDir,
}

impl Setup {
    fn new(wasm: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("tmp")).unwrap();
        fs::write(
            dir.path().join("job.toml"),
            format!("[guest]\nmemory_mib = 16\n[run]\nwasm = \"{wasm}\"\n[files]\noutputs_max_mib = 1\n"),
        )
        .unwrap();
        Setup { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, contents: impl AsRef<[u8]>) {
        fs::write(self.path(name), contents).unwrap();
    }

    fn cache_arg(&self) -> String {
        format!("--cache-dir={}", self.path("cache").display())
    }

    /// `mvm up` of the job, with no KVM to run it on.
    fn up(&self, extra: &[&str]) -> Output {
        common::run(
            mvm()
                .args(extra)
                .arg(NO_KVM)
                .arg("up")
                .arg(self.cache_arg())
                .arg(self.path("job.toml"))
                .env("TMPDIR", self.path("tmp")),
        )
    }

    fn cache(&self, action: &[&str]) -> String {
        let out = common::run(mvm().arg("cache").arg(self.cache_arg()).args(action));
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        text(&out.stdout)
    }

    /// Files under the cache directory, temporary ones included.
    fn cached(&self) -> Vec<String> {
        listing(&self.path("cache/compiled"))
    }
}

fn listing(dir: &Path) -> Vec<String> {
    match fs::read_dir(dir) {
        Ok(items) => items.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => Vec::new(),
    }
}

/// Ended after compiling, for want of a VM: what a good module comes to here.
fn assert_reached_the_vm(out: &Output) {
    assert_eq!(out.status.code(), Some(MVM_ERROR), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot run the job's VM: /nonexistent/kvm"), "{}", text(&out.stderr));
}

#[test]
fn bad_modules_are_refused_before_any_vm_and_leave_nothing() {
    let compiled = {
        // Real precompiled code, from mvm's own cache.
        let s = Setup::new("m.wat");
        s.write("m.wat", HELLO);
        assert_reached_the_vm(&s.up(&[]));
        let name = &s.cached()[0];
        fs::read(s.path("cache/compiled").join(name)).unwrap()[48..].to_vec()
    };
    // (module file, its contents (None: a sparse file one byte over the cap), what mvm says)
    let cases: [(&str, Option<&[u8]>, &str); 7] = [
        ("m.wasm", Some(b"(module)"), "m.wasm: not a WebAssembly core module"),
        ("m.wat", Some(b"(module (func (result i32)))"), "m.wat: invalid module: "),
        ("m.wat", Some(b"(module (memory 1 1 shared))"), "m.wat: invalid module: "),
        (
            "m.wat",
            Some(b"(module (memory 512))"),
            "m.wat: module needs at least 32 MiB of linear memory but the guest has 16 MiB (raise guest.memory_mib)",
        ),
        ("m.wasm", Some(&compiled), "m.wasm: is precompiled code, not a WebAssembly module"),
        ("m.cwasm", Some(&compiled), "run.wasm: must name a .wasm or .wat file, not precompiled code"),
        ("m.wasm", None, "m.wasm: more than 256 MiB, the largest module mvm compiles"),
    ];
    for (wasm, contents, says) in cases {
        let s = Setup::new(wasm);
        match contents {
            Some(bytes) => s.write(wasm, bytes),
            None => fs::File::create(s.path(wasm)).unwrap().set_len((256 << 20) + 1).unwrap(),
        }
        let out = s.up(&[]);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(MVM_ERROR), "{says}: {stderr}");
        assert!(stderr.contains(says), "expected {says:?} in: {stderr}");
        assert!(!stderr.contains("cannot run the job's VM"), "{says}: no VM was asked for: {stderr}");
        assert!(s.cached().is_empty(), "{says}: the cache holds {:?}", s.cached());
        assert!(listing(&s.path("tmp")).is_empty(), "{says}: TMPDIR holds {:?}", listing(&s.path("tmp")));
    }
}

#[test]
fn a_module_is_compiled_once_and_the_cache_shown_listed_and_cleared() {
    let s = Setup::new("m.wat");
    s.write("m.wat", HELLO);
    assert_eq!(s.cache(&[]), format!("dir: {}\nentries: 0\nsize: 0 bytes (0.0 MiB)\n", s.path("cache").display()));

    let first = s.up(&["-v"]);
    assert_reached_the_vm(&first);
    assert!(text(&first.stderr).contains("compiling"), "{}", text(&first.stderr));
    assert_eq!(s.cached().len(), 1);
    let second = s.up(&["-v"]);
    assert_reached_the_vm(&second);
    assert!(!text(&second.stderr).contains("compiling"), "{}", text(&second.stderr));
    assert!(text(&second.stderr).contains("found in the cache"), "{}", text(&second.stderr));
    assert!(listing(&s.path("tmp")).is_empty(), "staging is removed: {:?}", listing(&s.path("tmp")));

    let shown = s.cache(&["show"]);
    assert!(shown.contains("\nentries: 1\n"), "{shown}");
    let size = fs::metadata(s.path("cache/compiled").join(&s.cached()[0])).unwrap().len();
    assert!(shown.contains(&format!("\nsize: {size} bytes")), "{shown}");
    let listed = s.cache(&["list"]);
    let key = s.cached()[0].strip_suffix(".cwasm").unwrap().to_owned();
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.starts_with(&format!("{key}  ")) && listed.contains(&format!("{size} bytes")), "{listed}");

    assert_eq!(s.cache(&["clear"]), format!("removed 1 entries from {}\n", s.path("cache").display()));
    assert!(s.cached().is_empty());
    assert!(s.cache(&[]).contains("\nentries: 0\n"));
    assert!(text(&s.up(&["-v"]).stderr).contains("compiling"), "compiled again once cleared");
}

#[test]
fn two_runs_compiling_the_same_module_at_once_both_succeed() {
    let s = Setup::new("m.wat");
    // Big enough that the two compilations overlap.
    let funcs: String = (0..3000).map(|i| format!("(func (export \"f{i}\") (result i32) (i32.const {i}))")).collect();
    s.write("m.wat", format!("(module {funcs})"));
    let runs: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn({
                let job = s.path("job.toml");
                let (cache, tmp) = (s.cache_arg(), s.path("tmp"));
                move || common::run(mvm().arg(NO_KVM).arg("up").arg(cache).arg(job).env("TMPDIR", tmp))
            })
        })
        .collect();
    for run in runs {
        let out = run.join().unwrap();
        assert_reached_the_vm(&out);
        assert!(!text(&out.stderr).contains("WARN"), "{}", text(&out.stderr));
    }
    assert_eq!(s.cached().len(), 1, "one entry, no temporary file: {:?}", s.cached());
    assert!(s.cache(&[]).contains("\nentries: 1\n"));
}

#[test]
fn an_unwritable_cache_costs_one_warning_not_the_job() {
    let s = Setup::new("m.wat");
    s.write("m.wat", HELLO);
    s.write("cache", "a file where the cache directory should be");
    let out = s.up(&[]);
    assert_reached_the_vm(&out);
    let stderr = text(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert_eq!(warnings.len(), 1, "{stderr}");
    assert!(
        warnings[0].contains("compiled code not cached (the job runs all the same): cannot create the cache directory"),
        "{stderr}"
    );
}

#[test]
fn the_default_cache_follows_xdg_then_home() {
    let dir = tempfile::tempdir().unwrap();
    let show = |env: &[(&str, &Path)], unset: &[&str]| {
        let mut command = mvm();
        command.arg("cache");
        for (k, v) in env {
            command.env(k, v);
        }
        for k in unset {
            command.env_remove(k);
        }
        let out = common::run(&mut command);
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let xdg = dir.path().join("xdg");
    let (code, stdout, _) = show(&[("XDG_CACHE_HOME", &xdg)], &[]);
    assert_eq!((code, stdout.lines().next()), (Some(0), Some(format!("dir: {}", xdg.join("mvm").display()).as_str())));
    let home = dir.path().join("home");
    let (code, stdout, _) = show(&[("HOME", &home)], &["XDG_CACHE_HOME"]);
    assert_eq!(
        (code, stdout.lines().next()),
        (Some(0), Some(format!("dir: {}", home.join(".cache/mvm").display()).as_str()))
    );
    let (code, _, stderr) = show(&[], &["XDG_CACHE_HOME", "HOME"]);
    assert_eq!(code, Some(MVM_ERROR));
    assert!(stderr.contains("no --cache-dir, and neither XDG_CACHE_HOME nor HOME is set"), "{stderr}");
    assert!(!xdg.exists() && !home.exists(), "showing creates nothing");
}

#[test]
fn a_cache_dir_makes_no_sense_with_remote() {
    let out = common::run(mvm().args(["up", "--remote", "/nonexistent.sock", "--cache-dir", "/tmp", "job.toml"]));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("cannot be used with"), "{}", text(&out.stderr));
}
