//! mvm's REST API over a Unix socket, and the job orchestration behind it.
//!
//! - [`job`]: the job file and the two disk images that carry a job into its
//!   VM and its outputs back out.
//! - [`server`]: `mvm serve`, the daemon that runs jobs and VMs as child
//!   processes and answers the HTTP API on a Unix socket.
//! - [`client`]: the client side of that API, for `mvm up --remote`.

pub mod client;
pub mod job;
pub mod server;
