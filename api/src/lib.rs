//! mvm's REST API over a Unix socket, and the job orchestration behind it.
//!
//! So far: [`job`], the job file and the two disk images that carry a job
//! into its VM and its outputs back out.

pub mod job;
