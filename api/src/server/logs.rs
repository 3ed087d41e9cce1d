//! A machine's stdout or stderr log file as a response body: all of it, or
//! (`follow`) tailed until the machine ends, as a chunked response.
//!
//! A job's stderr log ends with `mvm up --json`'s report, which the API
//! shows as the record's `report` rather than as log text. Once the job has
//! ended, its record says where the report starts (`stderr_end`). Until
//! then, a trailing line that starts like a JSON object (`{"`), or that
//! could still become one, is held back: it may be the report being
//! written. It goes out as soon as anything follows it, or at the end if it
//! was the job's own.

use std::io::SeekFrom;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

use super::supervisor::Supervisor;

/// How often a followed log is polled for new data while its machine runs.
const POLL: Duration = Duration::from_millis(100);
const CHUNK: usize = 64 * 1024;
/// How `mvm up --json`'s report starts.
const REPORT_START: &[u8] = b"{\"";

pub struct LogRequest {
    pub id: String,
    pub path: PathBuf,
    pub follow: bool,
    /// A job's stderr: the report at its end is not part of the log.
    pub strip_report: bool,
}

struct Tail {
    request: LogRequest,
    supervisor: Arc<Supervisor>,
    file: Option<tokio::fs::File>,
    /// Bytes sent so far.
    sent: u64,
    /// Whether the last byte sent ended a line (or nothing was sent).
    at_line_start: bool,
    done: bool,
}

pub fn body(supervisor: Arc<Supervisor>, request: LogRequest) -> Body {
    let tail = Tail { request, supervisor, file: None, sent: 0, at_line_start: true, done: false };
    Body::from_stream(futures_util::stream::unfold(tail, |mut tail| async move {
        match tail.next().await {
            Ok(Some(chunk)) => Some((Ok(chunk), tail)),
            Ok(None) => None,
            Err(e) => {
                tail.done = true;
                Some((Err(e), tail))
            }
        }
    }))
}

impl Tail {
    async fn next(&mut self) -> std::io::Result<Option<Bytes>> {
        loop {
            if self.done {
                return Ok(None);
            }
            // Liveness first: once the child is gone, what its log holds is
            // all there will be.
            let live = self.supervisor.is_live(&self.request.id);
            let len = tokio::fs::metadata(&self.request.path).await?.len();
            let limit = if live { len } else { self.final_len(len) };
            if limit > self.sent {
                let mut chunk = self.read(limit).await?;
                if live && self.request.strip_report {
                    chunk.truncate(held_back(&chunk, limit == len, self.at_line_start));
                }
                if !chunk.is_empty() {
                    self.sent += chunk.len() as u64;
                    self.at_line_start = chunk.ends_with(b"\n");
                    return Ok(Some(Bytes::from(chunk)));
                }
            }
            if !live || !self.request.follow {
                self.done = true;
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Where the log ends once the machine has: before a job's report.
    fn final_len(&self, len: u64) -> u64 {
        if !self.request.strip_report {
            return len;
        }
        match self.supervisor.record(&self.request.id) {
            Ok(Some(record)) => record.stderr_end.map_or(len, |end| end.min(len)),
            _ => len,
        }
    }

    async fn read(&mut self, limit: u64) -> std::io::Result<Vec<u8>> {
        if self.file.is_none() {
            self.file = Some(tokio::fs::File::open(&self.request.path).await?);
        }
        let file = self.file.as_mut().expect("just opened");
        file.seek(SeekFrom::Start(self.sent)).await?;
        let want = usize::try_from(limit - self.sent).unwrap_or(CHUNK).min(CHUNK);
        let mut chunk = vec![0; want];
        let mut got = 0;
        while got < want {
            match file.read(&mut chunk[got..]).await? {
                0 => break,
                n => got += n,
            }
        }
        chunk.truncate(got);
        Ok(chunk)
    }
}

/// How much of `chunk` may go out while the job runs: all but a last line
/// that may be the start of the report. `at_end`: the chunk reaches the end
/// of the file (otherwise more follows, so no line in it is the last);
/// `at_line_start`: the chunk starts a line.
fn held_back(chunk: &[u8], at_end: bool, at_line_start: bool) -> usize {
    if !at_end {
        return chunk.len();
    }
    let body = chunk.strip_suffix(b"\n").unwrap_or(chunk);
    let start = match body.iter().rposition(|&b| b == b'\n') {
        Some(i) => i + 1,
        // The line began in an earlier chunk, which let it go out.
        None if !at_line_start => return chunk.len(),
        None => 0,
    };
    let line = &chunk[start..];
    let n = line.len().min(REPORT_START.len());
    if line[..n] == REPORT_START[..n] {
        start
    } else {
        chunk.len()
    }
}

#[cfg(test)]
mod tests {
    use super::held_back;

    #[test]
    fn a_last_line_that_may_be_the_report_is_held_back() {
        let report = b"{\"elapsed_s\":0.1}\n";
        let with = |before: &[u8]| [before, report].concat();
        assert_eq!(held_back(&with(b"job line\n"), true, true), 9, "a whole report line waits");
        assert_eq!(held_back(&with(b""), true, true), 0);
        assert_eq!(held_back(b"job line\n{", true, true), 9, "so does the start of one");
        assert_eq!(held_back(b"job line\n{\"el", true, true), 9);
        assert_eq!(held_back(&with(b"job line\n"), false, true), 27, "unless more follows it");
        assert_eq!(held_back(b"job line\n[1]\n", true, true), 13, "other lines go out");
        assert_eq!(held_back(b"x\n{not json\n", true, true), 12, "`{{` then anything but `\"` goes out");
        assert_eq!(held_back(b"{\"a\": 1}", true, false), 8, "the end of a line begun earlier goes out");
    }
}
