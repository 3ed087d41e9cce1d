//! Empty on purpose. wasmtime's `runtime` feature depends on `memfd` on every
//! Linux target, but only its std Unix platform uses it. The guest is built
//! for the Linux triple without std (there is no bare-metal target in the
//! toolchain), and the real `memfd` would link std, whose panic handler
//! collides with the guest's. So the guest's build patches in this crate,
//! which nothing calls: wasmtime's custom platform (job/platform.rs) is
//! what runs.

#![no_std]
