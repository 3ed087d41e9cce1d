//! A job's module compiled ahead of time on the host, so that the guest only
//! loads machine code and never compiles.
//!
//! [`prepare`] reads the module (assembling `.wat`), refuses what the guest
//! must never get (precompiled code from outside, a module over
//! [`MAX_MODULE_BYTES`], one whose memories do not fit the guest's RAM),
//! then returns its compiled code from the [`Cache`] or compiles it with
//! Cranelift and caches it. Compiling validates: a module the guest could
//! not run is refused here, before any VM starts.
//!
//! The engine is built from [`mvm_wasm_config::config`], the configuration
//! the guest loads with, plus what only the compiling side chooses: the
//! target triple (so that Cranelift infers nothing from this CPU, such as
//! AVX, which needs operating-system state the guest does not keep), the
//! baseline-extension flags this CPU has, and the optimization level.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::time::Instant;

use sha2::{Digest, Sha256};
use tracing::{info, warn};
use wasmtime::{Config, Engine, OptLevel};

use super::cache::{Cache, Entry, Key};

/// The largest module mvm compiles (the `.wasm`, or the `.wat` text): more
/// is refused before it is read. Compiling takes memory and time in
/// proportion; real programs are a few MiB.
pub const MAX_MODULE_BYTES: u64 = 256 << 20;

/// What the guest's tiny kernel runs on: a plain x86-64 Linux triple, named
/// so that Cranelift uses only the flags set here, never the host's own.
const TARGET: &str = "x86_64-unknown-linux-gnu";

/// The first eight bytes of every core WebAssembly module: `\0asm` and
/// version 1. Components (version 0x0d) are not modules the guest can run.
pub(crate) const WASM_PREAMBLE: [u8; 8] = *b"\0asm\x01\0\0\0";

/// Separates cache keys of this scheme from any other use of SHA-256; bump
/// it when anything that goes into the code but not into wasmtime's own
/// configuration hash changes.
const KEY_DOMAIN: &[u8] = b"mvm compiled module v1\0";

const MIB: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum CompileError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: not valid WebAssembly text", .path.display())]
    Wat {
        path: PathBuf,
        #[source]
        source: wat::Error,
    },
    #[error("{}: more than {} MiB, the largest module mvm compiles", .path.display(), .max >> 20)]
    TooLarge { path: PathBuf, max: u64 },
    #[error(
        "{}: is precompiled code, not a WebAssembly module: mvm runs only code it compiled itself; \
         give the .wasm (or .wat) module instead",
        .path.display()
    )]
    Precompiled { path: PathBuf },
    #[error("{}: not a WebAssembly core module (it must start with \\0asm and version 1)", .path.display())]
    NotWasm { path: PathBuf },
    #[error("{}: invalid module: {reason}", .path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error(
        "{}: module needs at least {needs_mib} MiB of linear memory but the guest has {guest_mib} MiB \
         (raise guest.memory_mib)",
        .path.display()
    )]
    MemoryTooLarge { path: PathBuf, needs_mib: u64, guest_mib: u64 },
    #[error("cannot set up the WebAssembly compiler: {0}")]
    Engine(String),
}

/// A job's compiled module, ready to be staged as `job/module.cwasm`.
pub enum CompiledModule {
    /// Compiled by this process: the cache could not take it, or already
    /// had a copy written; either way these bytes are what the guest gets.
    Fresh(Vec<u8>),
    /// A verified cache entry, streamed into the job disk from its file.
    Cached(Entry),
}

/// The fingerprint of everything about the compiling engine that shapes
/// the code it produces; the engine itself is made only to compile.
pub struct Compiler {
    fingerprint: [u8; 32],
}

fn engine_err(e: wasmtime::Error) -> CompileError {
    CompileError::Engine(format!("{e:#}"))
}

impl Compiler {
    pub fn new() -> Result<Compiler, CompileError> {
        // Every artifact wasmtime compiles records what an engine must match
        // to load it: target, Cranelift and ISA flags, tunables, wasm
        // features, wasmtime's version. An empty module's artifact is that
        // record and next to nothing else, so code is reused only by an
        // engine that would have compiled it the same way.
        // (`precompile_compatibility_hash` would say the same, but needs the
        // runtime, which installs signal handlers in this VMM process.)
        // Compiled on this thread: starting the parallel compiler's threads
        // would cost more (~4 ms) than a cache hit saves.
        let mut config = host_config()?;
        config.parallel_compilation(false);
        let probe = Engine::new(&config).and_then(|e| e.precompile_module(&WASM_PREAMBLE)).map_err(engine_err)?;
        Ok(Compiler { fingerprint: Sha256::digest(probe).into() })
    }

    #[cfg(test)]
    pub fn fingerprint(&self) -> [u8; 32] {
        self.fingerprint
    }

    /// The cache key of `wasm` compiled by this engine.
    pub fn key(&self, wasm: &[u8]) -> Key {
        let mut hasher = Sha256::new();
        hasher.update(KEY_DOMAIN);
        hasher.update(mvm_wasm_config::WASMTIME_VERSION.as_bytes());
        hasher.update([0]);
        hasher.update(self.fingerprint);
        hasher.update(wasm);
        Key::new(hasher.finalize().into())
    }

    /// Validates and compiles `wasm` (read from `path`), on every core; a
    /// module wasmtime refuses is `Invalid`, with its reason.
    pub fn compile(&self, path: &Path, wasm: &[u8]) -> Result<Vec<u8>, CompileError> {
        let engine = Engine::new(&host_config()?).map_err(engine_err)?;
        engine
            .precompile_module(wasm)
            .map_err(|e| CompileError::Invalid { path: path.to_owned(), reason: format!("{e:#}") })
    }
}

/// The shared configuration plus the compiling side's own choices.
fn host_config() -> Result<Config, CompileError> {
    let mut config = mvm_wasm_config::config();
    config.target(TARGET).map_err(|e| CompileError::Engine(format!("{e:#}")))?;
    config.cranelift_opt_level(OptLevel::Speed);
    for flag in host_isa_flags() {
        // SAFETY: each flag only lets Cranelift use an instruction-set
        // extension, and only one this CPU has; the guest runs on this CPU
        // (KVM passes its features through), and none of these extensions
        // needs state the guest kernel would have to enable (see
        // mvm_wasm_config::ISA_FEATURES). No flag changes the ABI.
        unsafe {
            config.cranelift_flag_enable(flag);
        }
    }
    Ok(config)
}

/// The Cranelift names of the [`mvm_wasm_config::ISA_FEATURES`] this CPU has.
pub fn host_isa_flags() -> Vec<&'static str> {
    mvm_wasm_config::ISA_FEATURES.iter().filter(|(_, detect)| cpu_has(detect)).map(|(flag, _)| *flag).collect()
}

pub(crate) fn cpu_has(feature: &str) -> bool {
    // The macro takes literals only.
    match feature {
        "sse3" => std::is_x86_feature_detected!("sse3"),
        "ssse3" => std::is_x86_feature_detected!("ssse3"),
        "sse4.1" => std::is_x86_feature_detected!("sse4.1"),
        "sse4.2" => std::is_x86_feature_detected!("sse4.2"),
        "popcnt" => std::is_x86_feature_detected!("popcnt"),
        "cmpxchg16b" => std::is_x86_feature_detected!("cmpxchg16b"),
        "bmi1" => std::is_x86_feature_detected!("bmi1"),
        "bmi2" => std::is_x86_feature_detected!("bmi2"),
        "lzcnt" => std::is_x86_feature_detected!("lzcnt"),
        // A feature added to the shared list but not here is left off:
        // slower code, never code the CPU cannot run.
        _ => false,
    }
}

/// Reads a WebAssembly module of at most `max` bytes: a `.wat` file is
/// assembled to the binary format, anything else is read as is. Either way
/// the result must be a core module, never precompiled code, so a wrong file
/// is refused here rather than by the compiler or the guest.
pub fn load_module(path: &Path, max: u64) -> Result<Vec<u8>, CompileError> {
    let read_err = |source| CompileError::Read { path: path.to_owned(), source };
    let file = File::open(path).map_err(read_err)?;
    let size = file.metadata().map_err(read_err)?.len();
    if size > max {
        return Err(CompileError::TooLarge { path: path.to_owned(), max });
    }
    let mut bytes = Vec::with_capacity(size as usize);
    // A file that grows after the size check is still read only up to the cap.
    file.take(max + 1).read_to_end(&mut bytes).map_err(read_err)?;
    if bytes.len() as u64 > max {
        return Err(CompileError::TooLarge { path: path.to_owned(), max });
    }
    if path.extension().is_some_and(|e| e == "wat") {
        bytes = wat::parse_bytes(&bytes)
            .map_err(|source| CompileError::Wat { path: path.to_owned(), source })?
            .into_owned();
    }
    if Engine::detect_precompiled(&bytes).is_some() {
        return Err(CompileError::Precompiled { path: path.to_owned() });
    }
    if !bytes.starts_with(&WASM_PREAMBLE) {
        return Err(CompileError::NotWasm { path: path.to_owned() });
    }
    Ok(bytes)
}

/// The smallest linear memory, in bytes, the module's instance must have:
/// the declared minimums of all its memories, imported or defined. `None`
/// when the module does not parse; compiling then says why.
pub fn min_memory_bytes(wasm: &[u8]) -> Option<u128> {
    let mut total: u128 = 0;
    let mut add = |ty: wasmparser::MemoryType| total += u128::from(ty.initial) * u128::from(ty.page_size());
    for payload in wasmparser::Parser::new(0).parse_all(wasm) {
        match payload.ok()? {
            wasmparser::Payload::ImportSection(imports) => {
                for import in imports.into_imports() {
                    if let wasmparser::TypeRef::Memory(ty) = import.ok()?.ty {
                        add(ty);
                    }
                }
            }
            wasmparser::Payload::MemorySection(memories) => {
                for ty in memories {
                    add(ty.ok()?);
                }
            }
            // Memories are declared before any code: nothing after them
            // adds one, so the code need not be parsed.
            wasmparser::Payload::CodeSectionStart { .. } | wasmparser::Payload::End(_) => break,
            _ => {}
        }
    }
    Some(total)
}

/// Refuses a module whose memories alone are larger than the guest's RAM:
/// it could never start.
fn check_memory(path: &Path, wasm: &[u8], memory_mib: u64) -> Result<(), CompileError> {
    let Some(needs) = min_memory_bytes(wasm) else { return Ok(()) };
    if needs > u128::from(memory_mib) * u128::from(MIB) {
        let needs_mib = u64::try_from(needs.div_ceil(u128::from(MIB))).unwrap_or(u64::MAX);
        return Err(CompileError::MemoryTooLarge { path: path.to_owned(), needs_mib, guest_mib: memory_mib });
    }
    Ok(())
}

/// The job's module at `path`, compiled for a guest of `memory_mib` MiB:
/// from `cache` when it holds this module compiled by this engine, else
/// compiled now and offered to `cache`. A cache that cannot take it costs
/// one warning, not the job.
pub fn prepare(path: &Path, memory_mib: u64, cache: Option<&Cache>) -> Result<CompiledModule, CompileError> {
    let wasm = load_module(path, MAX_MODULE_BYTES)?;
    check_memory(path, &wasm, memory_mib)?;
    let compiler = Compiler::new()?;
    let key = compiler.key(&wasm);
    if let Some(entry) = cache.and_then(|c| c.get(&key)) {
        info!(module = %path.display(), key = %key, "compiled code found in the cache");
        return Ok(CompiledModule::Cached(entry));
    }
    // Held until the code is in the cache: whoever else wants it meanwhile
    // waits here, then finds it.
    let lock = cache.and_then(|c| c.lock_compile(&key));
    if let Some(entry) = lock.as_ref().and(cache).and_then(|c| c.get(&key)) {
        info!(module = %path.display(), key = %key, "compiled code found in the cache, compiled meanwhile by another job");
        return Ok(CompiledModule::Cached(entry));
    }

    info!("compiling {} ({:.1} MiB) with Cranelift", path.display(), wasm.len() as f64 / MIB as f64);
    let started = Instant::now();
    let code = compiler.compile(path, &wasm)?;
    info!("compiled {} in {:.2} s", path.display(), started.elapsed().as_secs_f64());

    if let Some(cache) = cache {
        if let Err(e) = cache.put(&key, &code) {
            warn!("compiled code not cached (the job runs all the same): {e}");
        }
    }
    drop(lock);
    Ok(CompiledModule::Fresh(code))
}
