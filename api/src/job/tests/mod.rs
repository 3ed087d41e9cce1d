//! Unit tests for the job file and both images; no VM involved.

mod archive;
mod cache;
mod compile;
mod spec;
