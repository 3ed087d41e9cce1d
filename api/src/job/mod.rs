//! A job on the host side, before and after its VM runs.
//!
//! - [`spec`]: `job.toml` read, checked and resolved into a [`JobSpec`], so
//!   that every mistake in it is reported with its key and line before a VM
//!   exists.
//! - [`compile`]: the module read, checked and compiled ahead of time with
//!   Cranelift, or its code taken from the [`cache`] of earlier compilations.
//! - [`archive`]: the input image (compiled module, argv, environment and
//!   input files as a ustar archive on a raw virtio-blk disk).
//! - [`extract`]: the output image the guest wrote, read as hostile input and
//!   unpacked into the job's output directory.
//!
//! Both images are plain POSIX ustar archives at offset 0 of a raw disk image
//! (no GNU or PAX extensions), because the guest parses ustar headers itself.

pub mod archive;
pub mod cache;
pub mod compile;
pub mod extract;
pub mod spec;
mod toml_keys;

pub use archive::{create_output_image, write_input_image, ArchiveError, EntryProblem, HeaderProblem};
pub use cache::{Cache, CacheError};
pub use compile::{CompileError, CompiledModule};
pub use extract::{extract_outputs, OutputFile, OutputSummary};
pub use spec::{HostLimits, IpCidr, JobSpec, Kernel, NetworkSpec, Problem, SpecError};

#[cfg(test)]
mod tests;
