//! The wasmtime configuration shared by the two sides of a job: the host
//! compiles a module ahead of time with it, the guest loads the compiled code
//! with it. `Module::deserialize` refuses code whose tunables or wasm
//! features differ from the loading engine's, so both sides build their
//! `Config` here and nowhere else.

#![no_std]

use wasmtime::{Config, WasmBacktraceDetails, WasmFeatures};

/// The wasmtime release both sides are built against (see Cargo.toml).
pub const WASMTIME_VERSION: &str = "48.0.8";

/// The deepest a job's wasm call stack may go. The guest runs wasm on a
/// stack with room for this plus its own host functions.
pub const MAX_WASM_STACK: usize = 512 << 10;

/// Virtual address space reserved per linear memory: the whole 32-bit index
/// space, so every bounds check is a guard-page fault, not an instruction.
const MEMORY_RESERVATION: u64 = 4 << 30;

/// Unmapped space after each linear memory's reservation: a 32-bit index
/// plus a constant offset lands here, never in another memory.
const MEMORY_GUARD: u64 = 32 << 20;

/// x86-64 features the compiled code may use beyond the x86-64 baseline, as
/// Cranelift names them, each beside the name `detect_host_feature` is asked
/// about. None needs operating-system state, so whatever the CPU has, the
/// guest can run. AVX, AVX2 and FMA would need XSAVE and XCR0 set up for the
/// guest; measured with them (2026-11-30: scalar C, CPython, and 128-bit wasm
/// SIMD loops), Cranelift's code ran no faster, since wasm vectors are 128
/// bits and VEX encodings only change how SSE operations are written.
pub const ISA_FEATURES: &[(&str, &str)] = &[
    ("has_sse3", "sse3"),
    ("has_ssse3", "ssse3"),
    ("has_sse41", "sse4.1"),
    ("has_sse42", "sse4.2"),
    ("has_popcnt", "popcnt"),
    ("has_cmpxchg16b", "cmpxchg16b"),
    ("has_bmi1", "bmi1"),
    ("has_bmi2", "bmi2"),
    ("has_lzcnt", "lzcnt"),
];

/// The WebAssembly proposals a job may use: what current toolchains emit
/// and this build of wasmtime runs without a garbage collector. Everything
/// else (GC, exceptions, which need one, threads, stack switching) is
/// refused when the host validates the module, before any VM starts.
///
/// `WASM2` includes wasmparser's `GC_TYPES` pseudo-feature (part of its
/// MVP set), which a wasmtime built without `gc` refuses in `Engine::new`;
/// without it, reference types stay and only GC-managed types go.
pub fn wasm_features() -> WasmFeatures {
    (WasmFeatures::WASM2
        | WasmFeatures::TAIL_CALL
        | WasmFeatures::EXTENDED_CONST
        | WasmFeatures::MULTI_MEMORY
        | WasmFeatures::MEMORY64
        | WasmFeatures::RELAXED_SIMD
        | WasmFeatures::WIDE_ARITHMETIC)
        .difference(WasmFeatures::GC_TYPES)
}

/// The configuration both sides start from: tunables and wasm features set
/// explicitly, never left to defaults that differ between a std host build
/// and the no_std guest build.
pub fn config() -> Config {
    let mut config = Config::new();
    config
        .memory_reservation(MEMORY_RESERVATION)
        .memory_guard_size(MEMORY_GUARD)
        .memory_reservation_for_growth(0)
        .guard_before_linear_memory(true)
        .memory_may_move(false)
        .memory_init_cow(false)
        .signals_based_traps(true)
        .table_lazy_init(true)
        .max_wasm_stack(MAX_WASM_STACK)
        .relaxed_simd_deterministic(true)
        // Not left to the default, which on the std (host) side reads
        // WASMTIME_BACKTRACE_DETAILS from the environment: it sets a tunable
        // that the loading side must match.
        .wasm_backtrace_details(WasmBacktraceDetails::Disable)
        .wasm_features(WasmFeatures::all(), false)
        .wasm_features(wasm_features(), true);
    config
}
