//! Link the guest as a freestanding static ELF at its fixed physical address.
//! The flags go to the binary only (`rustc-link-arg-bins`): build scripts of
//! the guest's dependencies share the host triple and must link normally.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    for arg in
        ["-nostdlib", "-static", "-no-pie", "-Wl,--build-id=none", "-Wl,--gc-sections", &format!("-Wl,-T{dir}/link.ld")]
    {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
