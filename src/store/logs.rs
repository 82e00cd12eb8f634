//! A deploy's log: every command's output line by line, bounded per deploy so a chatty build
//! cannot fill the disk.

use std::sync::atomic::{AtomicI64, Ordering};

use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::Store;
use crate::host::{LogSink, Stream};
use crate::model::{now_rfc3339, DeployId};

/// Lines kept per deploy; past it, one marker line says how the log was cut.
pub const MAX_LOG_LINES: i64 = 20_000;
const MAX_LINE_CHARS: usize = 4_000;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub seq: i64,
    pub ts: String,
    pub stream: String,
    pub line: String,
}

/// Appends lines to one deploy's log. Resumes numbering after what is already stored, so a deploy
/// continued after approval keeps one ordered log.
pub struct LogWriter {
    store: Store,
    deploy: DeployId,
    next: AtomicI64,
}

impl LogWriter {
    pub fn new(store: Store, deploy: DeployId) -> Self {
        let next = store.last_log_seq(&deploy).unwrap_or(0) + 1;
        Self { store, deploy, next: AtomicI64::new(next) }
    }

    pub fn info(&self, text: &str) {
        self.line(Stream::Info, text);
    }
}

impl LogSink for LogWriter {
    fn line(&self, stream: Stream, text: &str) {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        let text: String = if seq == MAX_LOG_LINES + 1 {
            format!("[log truncated: only the first {MAX_LOG_LINES} lines of this deploy are kept]")
        } else if seq > MAX_LOG_LINES + 1 {
            return;
        } else {
            text.chars().take(MAX_LINE_CHARS).collect()
        };
        let stream = if seq == MAX_LOG_LINES + 1 { Stream::Info } else { stream };
        if let Err(e) = self.store.append_log(&self.deploy, seq, stream.as_str(), &text) {
            self.store.note_write_error(&format!("storing a log line of deploy {}", self.deploy), &e);
        }
    }
}

impl Store {
    fn append_log(&self, id: &DeployId, seq: i64, stream: &str, line: &str) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT OR IGNORE INTO logs (deploy_id, seq, ts, stream, line) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id.as_str(), seq, now_rfc3339(), stream, line],
        )?;
        Ok(())
    }

    fn last_log_seq(&self, id: &DeployId) -> rusqlite::Result<i64> {
        self.conn()
            .query_row("SELECT COALESCE(MAX(seq), 0) FROM logs WHERE deploy_id = ?1", [id.as_str()], |r| r.get(0))
    }

    /// Lines after `after` (exclusive), oldest first, at most `limit`.
    pub fn logs(&self, id: &DeployId, after: i64, limit: usize) -> rusqlite::Result<Vec<LogLine>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT seq, ts, stream, line FROM logs WHERE deploy_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3",
        )?;
        let rows = stmt.query_map(params![id.as_str(), after, limit as i64], |r| {
            Ok(LogLine { seq: r.get(0)?, ts: r.get(1)?, stream: r.get(2)?, line: r.get(3)? })
        })?;
        rows.collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppName, StepName, Trigger, TriggerSource};
    use crate::store::NewDeploy;

    #[test]
    fn a_log_stops_growing_at_its_bound_with_one_marker_line() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store
            .insert_deploy(&NewDeploy {
                app: AppName::parse("a").unwrap(),
                trigger: Trigger {
                    source: TriggerSource::Api,
                    delivery: None,
                    git_ref: "refs/heads/main".into(),
                    requested_commit: None,
                },
                approve_migrations: false,
                reason: None,
                steps: vec![StepName::GitPull],
            })
            .unwrap()
            .deploy_id;
        let w = LogWriter::new(store.clone(), id.clone());
        for i in 0..MAX_LOG_LINES + 50 {
            w.line(Stream::Stdout, &format!("line {i}"));
        }
        let all = store.logs(&id, 0, usize::MAX >> 1).unwrap();
        assert_eq!(all.len() as i64, MAX_LOG_LINES + 1);
        assert!(all.last().unwrap().line.contains("truncated"));
        // A second writer (a resumed deploy) continues the numbering and stays bounded.
        LogWriter::new(store.clone(), id.clone()).info("more");
        assert_eq!(store.logs(&id, 0, usize::MAX >> 1).unwrap().len() as i64, MAX_LOG_LINES + 1);
    }
}
