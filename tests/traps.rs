//! Every way a job's WebAssembly can trap, one module each: the job ends
//! `trap: <message>` with status 121, the message being the engine's own
//! (wasmtime's `Trap` descriptions, wasmtime-environ's trap_encoding.rs).
//! Also: loads past the end of memory trap instead of reading zeros, what a
//! job printed before trapping still reaches stdout, and growing memory
//! until it cannot ends "out of memory" with status 122.

mod common;

use common::{mvm, text};

const TRAP: i32 = 121;
const OUT_OF_MEMORY: i32 = 122;

/// How a job ended: its exit status, stdout and stderr.
struct Ended {
    status: i32,
    stdout: String,
    stderr: String,
}

impl Ended {
    /// The line `mvm up` ends the job with, "mvm: job t ended: ...".
    fn ending(&self) -> &str {
        self.stderr.lines().rev().find(|l| l.starts_with("mvm: job t ended: ")).unwrap_or_default()
    }
}

/// Runs the WAT module `module` as job "t" in a guest of `memory_mib` MiB.
fn up(module: &str, memory_mib: u32) -> Ended {
    let dir = tempfile::tempdir().unwrap();
    let job = dir.path().join("job.toml");
    let toml = format!("name = \"t\"\n[guest]\nmemory_mib = {memory_mib}\ntimeout_s = 60\n[run]\nwasm = \"m.wat\"\n");
    std::fs::write(&job, toml).unwrap();
    std::fs::write(dir.path().join("m.wat"), module).unwrap();
    let out = common::run(mvm().arg("up").arg(&job));
    let stderr = text(&out.stderr);
    let status = out.status.code().unwrap_or_else(|| panic!("mvm was killed: {}; stderr: {stderr}", out.status));
    Ended { status, stdout: text(&out.stdout), stderr }
}

/// Runs `module` (a 16 MiB guest), which must trap with `message`; returns
/// how it ended, for what else a test checks.
fn assert_traps(module: &str, message: &str) -> Ended {
    common::require_kvm();
    let ended = up(module, 16);
    assert_eq!(ended.status, TRAP, "expected a trap ({message}); stderr: {}", ended.stderr);
    let ending = ended.ending();
    assert!(ending.starts_with("mvm: job t ended: trap: "), "no trap line; stderr: {}", ended.stderr);
    assert!(ending.contains(message), "expected {message:?} in the trap line; stderr: {}", ended.stderr);
    ended
}

/// A module with one page of memory whose `_start` runs `body`; `$print`
/// (pointer, length) writes to stdout and `$exit` is `proc_exit`.
fn module(extra: &str, body: &str) -> String {
    format!(
        r#"(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
  (memory (export "memory") 1)
  (func $print (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  {extra}
  (func (export "_start") {body}))"#
    )
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn unreachable_traps() {
    assert_traps(&module("", "(unreachable)"), "wasm `unreachable` instruction executed");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_load_just_past_the_end_of_memory_traps() {
    // Memory grown to 2 pages: the last word of the second page reads, the
    // word at memory.size * 64 KiB traps.
    let body = r#"
    (local $end i32)
    (drop (memory.grow (i32.const 1)))
    (local.set $end (i32.shl (memory.size) (i32.const 16)))
    (drop (i32.load (i32.sub (local.get $end) (i32.const 4))))
    (call $print (i32.const 16) (i32.const 10))
    (drop (i32.load (local.get $end)))
    (call $exit (i32.const 0))"#;
    let ended = assert_traps(&module(r#"(data (i32.const 16) "in bounds\n")"#, body), "out of bounds memory access");
    assert_eq!(ended.stdout, "in bounds\n", "the in-bounds load before the trap ran");
}

/// A load near 4 GiB, and one near 8 GiB (a 32-bit address plus a 32-bit
/// offset), past a one-page memory must fault, not read zeros from whatever
/// backs the rest of the address range.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_load_far_past_memory_traps_instead_of_reading_zeros() {
    for load in ["(i32.load (i32.const 0xFFFFFFF0))", "(i32.load offset=0xFFFFFFFF (i32.const 0xFFFFFFFF))"] {
        // Reading anything, zeros included, ends the job "exit 0".
        assert_traps(&module("", &format!("(drop {load}) (call $exit (i32.const 0))")), "out of bounds memory access");
    }
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn a_call_past_the_end_of_the_table_traps() {
    let table = "(type $void (func)) (table 1 funcref) (elem (i32.const 0) $f) (func $f)";
    assert_traps(
        &module(table, "(call_indirect (type $void) (i32.const 1))"),
        "undefined element: out of bounds table access",
    );
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn integer_divide_by_zero_traps() {
    assert_traps(&module("", "(drop (i32.div_s (i32.const 1) (i32.const 0)))"), "integer divide by zero");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn integer_overflow_traps() {
    assert_traps(&module("", "(drop (i32.div_s (i32.const 0x80000000) (i32.const -1)))"), "integer overflow");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn converting_nan_to_an_integer_traps() {
    assert_traps(&module("", "(drop (i32.trunc_f32_s (f32.const nan)))"), "invalid conversion to integer");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn an_indirect_call_of_the_wrong_type_traps() {
    let table = "(type $void (func)) (table 1 funcref) (elem (i32.const 0) $takes_i32) (func $takes_i32 (param i32))";
    assert_traps(&module(table, "(call_indirect (type $void) (i32.const 0))"), "indirect call type mismatch");
}

/// The null-reference trap of core wasm without function references (which
/// `mvm_wasm_config::wasm_features` leaves out, and with them `call_ref` and
/// `ref.as_non_null`, wasmtime's "null reference"): an indirect call through
/// a table slot that holds null.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn an_indirect_call_through_a_null_slot_traps() {
    let table = "(type $void (func)) (table 2 funcref) (elem (i32.const 0) $f) (func $f)";
    assert_traps(&module(table, "(call_indirect (type $void) (i32.const 1))"), "uninitialized element");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn endless_recursion_exhausts_the_call_stack() {
    assert_traps(&module("(func $deeper (call $deeper))", "(call $deeper)"), "call stack exhausted");
}

#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn what_a_job_printed_before_it_trapped_reaches_stdout() {
    let body = "(call $print (i32.const 16) (i32.const 16)) (drop (i32.div_u (i32.const 1) (i32.const 0)))";
    let ended = assert_traps(&module(r#"(data (i32.const 16) "before the trap\n")"#, body), "integer divide by zero");
    assert_eq!(ended.stdout, "before the trap\n");
}

/// Growing memory 1 MiB at a time, touching none of it, until the guest's
/// RAM is gone. (tests/jobs.rs's memhog test touches every page it grows.)
/// Should memory.grow fail with -1 instead, the module traps: the job must
/// end "out of memory", not with a trap.
#[test]
#[cfg_attr(mvm_skip_kvm, ignore = "needs KVM: MVM_SKIP_KVM=1")]
fn growing_memory_until_it_cannot_ends_out_of_memory() {
    common::require_kvm();
    let body = "(loop $more (br_if $more (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (unreachable)";
    let ended = up(&module("", body), 16);
    assert_eq!(ended.status, OUT_OF_MEMORY, "{}", ended.stderr);
    assert_eq!(ended.ending(), "mvm: job t ended: out of memory (guest RAM 16 MiB)", "{}", ended.stderr);
}
