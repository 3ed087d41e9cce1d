//! What the unit tests of more than one module need.

use std::sync::mpsc;
use std::time::Duration;

/// Runs `f` on its own thread and fails the test if it has not returned
/// within `limit`: a broken wait must fail the test, not hang the suite.
/// `what` names the wait in the failure.
pub fn within<T: Send + 'static>(limit: Duration, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(limit) {
        Ok(done) => done,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("{what} took more than {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => panic!("{what} failed (its panic is above)"),
    }
}
