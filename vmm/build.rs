//! `MVM_SKIP_KVM=1` in the build's environment (a host without KVM on
//! purpose): the unit tests that need /dev/kvm are then reported as ignored
//! instead of failing, as the integration tests are (see the top build.rs).

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mvm_skip_kvm)");
    println!("cargo:rerun-if-env-changed=MVM_SKIP_KVM");
    if std::env::var("MVM_SKIP_KVM").as_deref() == Ok("1") {
        println!("cargo:rustc-cfg=mvm_skip_kvm");
    }
}
