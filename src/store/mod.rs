//! Durable state in SQLite (`<state-dir>/kua.db`): deploys, their steps, their logs, and webhook
//! deliveries. The schema
//! migrates on open, so any binary opens any older state dir. Every write is its own transaction:
//! a crash between two writes leaves a consistent record that startup recovery understands.

mod deliveries;
mod deploys;
mod logs;
mod schema;

use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::Connection;

pub use deliveries::PushRecord;
pub use deploys::NewDeploy;
pub use logs::{LogLine, LogWriter, MAX_LOG_LINES};

/// A handle on the state database. Cheap to clone; queries are short, so one connection behind a
/// mutex serves the whole process.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
}

impl Store {
    /// Opens (creating if needed) the database in `state_dir` and runs pending migrations.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create the state dir {}", state_dir.display()))?;
        let path = state_dir.join("kua.db");
        let conn = Connection::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints (the only fsyncs with WAL + NORMAL) run on a thread of their own, not inside
        // whichever request's commit happens to cross the threshold.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn).with_context(|| format!("cannot migrate {}", path.display()))?;
        let conn = Arc::new(Mutex::new(conn));
        spawn_checkpointer(&path, Arc::downgrade(&conn))?;
        Ok(Self { conn })
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each write is one
        // statement or transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Every second, a passive checkpoint from a second connection: it copies committed pages into
/// the database file without blocking writers. Ends when the store is dropped.
fn spawn_checkpointer(path: &Path, store: std::sync::Weak<Mutex<Connection>>) -> anyhow::Result<()> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(1))?;
    std::thread::Builder::new().name("kua-checkpoint".into()).spawn(move || {
        while store.strong_count() > 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
            if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                tracing::warn!("WAL checkpoint failed (retried in a second): {e}");
            }
        }
    })?;
    Ok(())
}

fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let done: usize = conn.pragma_query_value(None, "user_version", |r| r.get::<_, i64>(0))? as usize;
    if done > schema::MIGRATIONS.len() {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the state database has schema version {done}, newer than this kua-deploy knows ({}); run a newer kua-deploy",
            schema::MIGRATIONS.len()
        )));
    }
    for (i, sql) in schema::MIGRATIONS.iter().enumerate().skip(done) {
        let tx = conn.unchecked_transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
