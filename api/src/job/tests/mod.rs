//! Unit tests for the job file and both images; no VM involved.

mod archive;
mod cache;
mod collect;
mod compile;
mod image;
mod spec;
