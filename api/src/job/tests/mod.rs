//! Unit tests for the job file and both images; no VM involved.

mod archive;
mod extract;
mod spec;
