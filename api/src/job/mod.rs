//! A job on the host side, before and after its VM runs.
//!
//! - [`spec`]: `job.toml` read, checked and resolved into a [`JobSpec`], so
//!   that every mistake in it is reported with its key and line before a VM
//!   exists.
//! - [`compile`]: the module read, checked and compiled ahead of time with
//!   Cranelift, or its code taken from the [`cache`] of earlier compilations.
//! - [`archive`]: the job disk (compiled module, argv, environment and the
//!   preopened directories, as a ustar archive on a raw virtio-blk disk).
//! - [`image`]: the filesystem disk, everything the job sees under `/`
//!   (its mounts and room to write), built from the host trees.
//! - [`collect`]: the filesystem disk read back as hostile input after the
//!   job: `/out` merged into the outputs directory, rw mounts written back
//!   atomically.
//! - [`resolve`]: host paths checked when the job file was read, opened
//!   again later without following any symlink.

pub mod archive;
pub mod cache;
pub mod collect;
pub mod compile;
mod copy;
pub mod image;
mod resolve;
pub mod spec;
mod toml_keys;

pub use archive::{write_input_image, ArchiveError};
pub use cache::{Cache, CacheError};
pub use collect::{collect_outputs, write_back, CollectError, Image, OutputFile, OutputSummary, WriteBackSummary};
pub use compile::{CompileError, CompiledModule};
pub use image::{build_image, ImageError, ImageMount, ImageSummary, Source};
pub use spec::{HostLimits, Input, IpCidr, JobSpec, Kernel, MountSpec, NetworkSpec, Problem, SpecError};

#[cfg(test)]
mod tests;
