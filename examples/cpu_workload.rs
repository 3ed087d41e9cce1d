//! The host baseline for `scripts/bench-guest-cpu`: runs the guest's CPU
//! workload (`guest-image/src/workload.rs`, compiled here from the very same
//! source) as an ordinary host process, so the script can compare the time
//! the guest takes for `mvm.test=cpu:N` with what the same code costs on the
//! host. Prints the guest's line format, `cpu iterations=N ns=T result=R`;
//! R must match the guest's for the same N.
//!
//! Usage: cargo run --release --example cpu_workload -- N

use std::time::Instant;

#[path = "../guest-image/src/workload.rs"]
mod workload;

fn main() {
    let arg = std::env::args().nth(1).unwrap_or_else(|| {
        eprintln!("usage: cpu_workload ITERATIONS");
        std::process::exit(2);
    });
    let iterations: u64 = arg.parse().unwrap_or_else(|_| {
        eprintln!("cpu_workload: expected a number of iterations, got {arg:?}");
        std::process::exit(2);
    });
    let start = Instant::now();
    let result = workload::spin(iterations);
    let ns = start.elapsed().as_nanos();
    println!("cpu iterations={iterations} ns={ns} result={result}");
}
