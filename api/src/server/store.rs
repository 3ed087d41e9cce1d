//! Job and VM records in SQLite (`<state-dir>/mvm.db`), so that they outlive
//! the daemon.
//!
//! One connection behind a mutex: every statement is a single short row
//! operation, cheaper than handing it to another thread. WAL journaling with
//! `synchronous=NORMAL`: a committed record survives a crash of the daemon
//! (not necessarily a power loss), which is what "survives a restart" needs.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::record::{Exit, Kind, Limits, Record, State, Usage};

/// Bumped when the table changes; an older database is refused rather than
/// misread.
const SCHEMA_VERSION: i64 = 1;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS machines (
    id            TEXT PRIMARY KEY,
    kind          TEXT NOT NULL,
    name          TEXT NOT NULL,
    spec          TEXT NOT NULL,
    state         TEXT NOT NULL,
    created_at    REAL NOT NULL,
    started_at    REAL,
    ended_at      REAL,
    pid           INTEGER,
    memory_mib    INTEGER NOT NULL,
    vcpus         INTEGER NOT NULL,
    cpu_quota     REAL,
    timeout_s     REAL,
    outputs_max_mib INTEGER,
    outputs_dir   TEXT,
    exit_reason   TEXT,
    exit_status   INTEGER,
    exit_message  TEXT,
    report        TEXT,
    stderr_end    INTEGER,
    cpu_s         REAL,
    max_rss_kib   INTEGER
);
CREATE INDEX IF NOT EXISTS machines_state ON machines (state);
";

const COLUMNS: &str = "id, kind, name, spec, state, created_at, started_at, ended_at, pid, memory_mib, vcpus, \
                       cpu_quota, timeout_s, outputs_max_mib, outputs_dir, exit_reason, exit_status, exit_message, \
                       report, stderr_end, cpu_s, max_rss_kib";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open the job database {}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("the job database {} has schema version {found}; this mvm knows {SCHEMA_VERSION}", .path.display())]
    Schema { path: PathBuf, found: i64 },
    #[error("job database query failed")]
    Query(#[from] rusqlite::Error),
    #[error("record {id} holds a bad {column}")]
    Corrupt { id: String, column: &'static str },
}

/// How a machine ended, as the reaper writes it.
#[derive(Debug, Clone)]
pub struct Ending {
    pub state: State,
    pub exit: Exit,
    pub report: Option<serde_json::Value>,
    pub stderr_end: Option<u64>,
    pub usage: Option<Usage>,
    pub ended_at: f64,
}

pub struct Store {
    conn: Mutex<Connection>,
}

impl Store {
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let open_err = |source| StoreError::Open { path: path.to_owned(), source };
        let conn = Connection::open(path).map_err(open_err)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(open_err)?;
        conn.pragma_update(None, "synchronous", "NORMAL").map_err(open_err)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(open_err)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |row| row.get(0)).map_err(open_err)?;
        match version {
            0 => {
                conn.execute_batch(SCHEMA).map_err(open_err)?;
                conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(open_err)?;
            }
            SCHEMA_VERSION => {}
            found => return Err(StoreError::Schema { path: path.to_owned(), found }),
        }
        Ok(Store { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (each
        // statement is atomic), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn insert(&self, r: &Record) -> Result<(), StoreError> {
        let l = &r.limits;
        self.conn().execute(
            &format!(
                "INSERT INTO machines ({COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, \
                      ?13, ?14, ?15, NULL, NULL, NULL, NULL, NULL, NULL, NULL)"
            ),
            params![
                r.id,
                r.kind.as_str(),
                r.name,
                r.spec.to_string(),
                r.state.as_str(),
                r.created_at,
                r.started_at,
                r.ended_at,
                r.pid,
                l.memory_mib as i64,
                l.vcpus as i64,
                l.cpu_quota,
                l.timeout_s,
                l.outputs_max_mib.map(|m| m as i64),
                r.outputs_dir.as_ref().map(|d| d.to_string_lossy().into_owned()),
            ],
        )?;
        Ok(())
    }

    pub fn set_running(&self, id: &str, pid: i32, started_at: f64) -> Result<(), StoreError> {
        self.conn().execute(
            "UPDATE machines SET state = 'running', pid = ?2, started_at = ?3 WHERE id = ?1",
            params![id, pid, started_at],
        )?;
        Ok(())
    }

    pub fn set_state(&self, id: &str, state: State) -> Result<(), StoreError> {
        self.conn().execute("UPDATE machines SET state = ?2 WHERE id = ?1", params![id, state.as_str()])?;
        Ok(())
    }

    pub fn finish(&self, id: &str, end: &Ending) -> Result<(), StoreError> {
        let usage = end.usage.unwrap_or_default();
        self.conn().execute(
            "UPDATE machines SET state = ?2, ended_at = ?3, exit_reason = ?4, exit_status = ?5, exit_message = ?6, \
             report = ?7, stderr_end = ?8, cpu_s = ?9, max_rss_kib = ?10 WHERE id = ?1",
            params![
                id,
                end.state.as_str(),
                end.ended_at,
                end.exit.reason,
                end.exit.status,
                end.exit.message,
                end.report.as_ref().map(|r| r.to_string()),
                end.stderr_end.map(|e| e as i64),
                end.usage.map(|_| usage.cpu_s),
                end.usage.map(|_| usage.max_rss_kib as i64),
            ],
        )?;
        Ok(())
    }

    pub fn delete(&self, id: &str) -> Result<bool, StoreError> {
        Ok(self.conn().execute("DELETE FROM machines WHERE id = ?1", params![id])? > 0)
    }

    pub fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM machines WHERE id = ?1"))?;
        let row = stmt.query_row(params![id], RawRow::read).optional()?;
        row.map(RawRow::into_record).transpose()
    }

    /// Records of `kind` (and `state`, when given), oldest first.
    pub fn list(&self, kind: Kind, state: Option<State>) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(&format!(
            "SELECT {COLUMNS} FROM machines WHERE kind = ?1 AND (?2 IS NULL OR state = ?2) ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map(params![kind.as_str(), state.map(State::as_str)], RawRow::read)?;
        rows.map(|row| row.map_err(StoreError::from).and_then(RawRow::into_record)).collect()
    }

    /// Records that had not ended: after a restart, their children are gone.
    pub fn unfinished(&self) -> Result<Vec<Record>, StoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!(
            "SELECT {COLUMNS} FROM machines WHERE state IN ('created', 'running', 'paused') ORDER BY created_at, id"
        ))?;
        let rows = stmt.query_map([], RawRow::read)?;
        rows.map(|row| row.map_err(StoreError::from).and_then(RawRow::into_record)).collect()
    }
}

/// A row as SQLite holds it, before its text columns are parsed.
struct RawRow {
    id: String,
    kind: String,
    name: String,
    spec: String,
    state: String,
    created_at: f64,
    started_at: Option<f64>,
    ended_at: Option<f64>,
    pid: Option<i32>,
    memory_mib: i64,
    vcpus: i64,
    cpu_quota: Option<f64>,
    timeout_s: Option<f64>,
    outputs_max_mib: Option<i64>,
    outputs_dir: Option<String>,
    exit_reason: Option<String>,
    exit_status: Option<i32>,
    exit_message: Option<String>,
    report: Option<String>,
    stderr_end: Option<i64>,
    cpu_s: Option<f64>,
    max_rss_kib: Option<i64>,
}

impl RawRow {
    fn read(row: &Row<'_>) -> rusqlite::Result<RawRow> {
        Ok(RawRow {
            id: row.get(0)?,
            kind: row.get(1)?,
            name: row.get(2)?,
            spec: row.get(3)?,
            state: row.get(4)?,
            created_at: row.get(5)?,
            started_at: row.get(6)?,
            ended_at: row.get(7)?,
            pid: row.get(8)?,
            memory_mib: row.get(9)?,
            vcpus: row.get(10)?,
            cpu_quota: row.get(11)?,
            timeout_s: row.get(12)?,
            outputs_max_mib: row.get(13)?,
            outputs_dir: row.get(14)?,
            exit_reason: row.get(15)?,
            exit_status: row.get(16)?,
            exit_message: row.get(17)?,
            report: row.get(18)?,
            stderr_end: row.get(19)?,
            cpu_s: row.get(20)?,
            max_rss_kib: row.get(21)?,
        })
    }

    fn into_record(self) -> Result<Record, StoreError> {
        let corrupt = |column| StoreError::Corrupt { id: self.id.clone(), column };
        let kind = match self.kind.as_str() {
            "job" => Kind::Job,
            "vm" => Kind::Vm,
            _ => return Err(corrupt("kind")),
        };
        let state = self.state.parse().map_err(|_| corrupt("state"))?;
        let spec = serde_json::from_str(&self.spec).map_err(|_| corrupt("spec"))?;
        let report = match &self.report {
            Some(text) => Some(serde_json::from_str(text).map_err(|_| corrupt("report"))?),
            None => None,
        };
        let exit = self.exit_reason.map(|reason| Exit {
            reason,
            status: self.exit_status,
            message: self.exit_message.unwrap_or_default(),
        });
        let usage = self.cpu_s.map(|cpu_s| Usage {
            cpu_s,
            max_rss_kib: self.max_rss_kib.unwrap_or(0).max(0) as u64,
            rss_kib: None,
        });
        Ok(Record {
            kind,
            name: self.name,
            spec,
            state,
            created_at: self.created_at,
            started_at: self.started_at,
            ended_at: self.ended_at,
            pid: self.pid,
            limits: Limits {
                memory_mib: self.memory_mib.max(0) as u64,
                vcpus: self.vcpus.max(0) as u64,
                cpu_quota: self.cpu_quota,
                timeout_s: self.timeout_s,
                outputs_max_mib: self.outputs_max_mib.map(|m| m.max(0) as u64),
            },
            outputs_dir: self.outputs_dir.map(PathBuf::from),
            exit,
            report,
            stderr_end: self.stderr_end.map(|e| e.max(0) as u64),
            usage,
            id: self.id,
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn record(id: &str, kind: Kind) -> Record {
        Record {
            id: id.into(),
            kind,
            name: format!("n-{id}"),
            spec: json!({ "name": id }),
            state: State::Created,
            created_at: 10.0,
            started_at: None,
            ended_at: None,
            pid: None,
            limits: Limits { memory_mib: 16, vcpus: 1, cpu_quota: Some(0.5), timeout_s: None, outputs_max_mib: None },
            outputs_dir: None,
            exit: None,
            report: None,
            stderr_end: None,
            usage: None,
        }
    }

    #[test]
    fn records_survive_reopening_and_filter_by_kind_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mvm.db");
        {
            let store = Store::open(&path).unwrap();
            store.insert(&record("a", Kind::Job)).unwrap();
            store.insert(&record("b", Kind::Job)).unwrap();
            store.insert(&record("c", Kind::Vm)).unwrap();
            store.set_running("a", 42, 11.0).unwrap();
            store.set_running("b", 43, 11.0).unwrap();
            let end = Ending {
                state: State::Exited,
                exit: Exit { reason: "exit".into(), status: Some(3), message: "exit 3".into() },
                report: Some(json!({ "status": 3 })),
                stderr_end: Some(12),
                usage: Some(Usage { cpu_s: 0.25, max_rss_kib: 4096, rss_kib: None }),
                ended_at: 12.0,
            };
            store.finish("b", &end).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let a = store.get("a").unwrap().unwrap();
        assert_eq!((a.state, a.pid, a.started_at), (State::Running, Some(42), Some(11.0)));
        let b = store.get("b").unwrap().unwrap();
        assert_eq!(b.state, State::Exited);
        assert_eq!(b.exit.unwrap().status, Some(3));
        assert_eq!((b.stderr_end, b.usage.unwrap().max_rss_kib), (Some(12), 4096));
        assert_eq!(b.limits.cpu_quota, Some(0.5));
        assert!(store.get("zzz").unwrap().is_none());
        let ids = |records: Vec<Record>| records.into_iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.list(Kind::Job, None).unwrap()), ["a", "b"]);
        assert_eq!(ids(store.list(Kind::Job, Some(State::Exited)).unwrap()), ["b"]);
        assert_eq!(ids(store.list(Kind::Vm, None).unwrap()), ["c"]);
        assert_eq!(ids(store.unfinished().unwrap()), ["a", "c"]);
        assert!(store.delete("a").unwrap());
        assert!(!store.delete("a").unwrap());
    }

    #[test]
    fn a_database_from_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mvm.db");
        Connection::open(&path).unwrap().pragma_update(None, "user_version", 99).unwrap();
        assert!(matches!(Store::open(&path), Err(StoreError::Schema { found: 99, .. })));
    }
}
