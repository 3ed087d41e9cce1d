//! Builds the tiny guest kernel (guest-image/, its own cargo project with its
//! own link flags) and hands its path to the mvm binary, which embeds it as
//! `--kernel builtin`, and to the integration tests.

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let root = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let guest = root.join("guest-image");
    for input in [
        "src",
        "Cargo.toml",
        "Cargo.lock",
        "build.rs",
        "link.ld",
        ".cargo/config.toml",
        "wasi/src",
        "wasi/Cargo.toml",
        "wasm-config/src",
        "wasm-config/Cargo.toml",
        "no-memfd",
    ] {
        println!("cargo:rerun-if-changed={}", guest.join(input).display());
    }
    let target_root = env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    let target_dir = target_root.join("guest");

    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    // The guest's directory, so its .cargo/config.toml applies; and none of
    // the outer build's compiler settings, which are for the host binary.
    let status = Command::new(cargo)
        .current_dir(&guest)
        .args(["build", "--release", "--target-dir"])
        .arg(&target_dir)
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("RUSTFLAGS")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env_remove("CARGO_BUILD_TARGET")
        .env_remove("CARGO_TARGET_DIR")
        .status()
        .expect("cannot run cargo to build the guest kernel");
    assert!(status.success(), "building the guest kernel in guest-image/ failed: see the cargo output above");

    // Packed relative relocations (DT_RELR): the dynamic loader applies the
    // executable's tens of thousands of them at every start, and this form
    // makes that several times cheaper while keeping a position-independent
    // executable (ASLR matters in a VMM that faces hostile guests).
    println!("cargo:rustc-link-arg-bins=-Wl,-z,pack-relative-relocs");

    // Deliberate absences, said by the environment of the build that also runs
    // the tests: the integration tests that need KVM or root are then
    // reported as ignored (counted in the summary) instead of failing.
    for (var, cfg) in [("MVM_SKIP_KVM", "mvm_skip_kvm"), ("MVM_SKIP_ROOT", "mvm_skip_root")] {
        println!("cargo::rustc-check-cfg=cfg({cfg})");
        println!("cargo:rerun-if-env-changed={var}");
        if env::var(var).as_deref() == Ok("1") {
            println!("cargo:rustc-cfg={cfg}");
        }
    }

    let elf = target_dir.join("release").join("mvm-guest");
    println!("cargo:rustc-env=MVM_GUEST_ELF={}", elf.display());
}
