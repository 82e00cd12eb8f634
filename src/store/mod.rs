//! Durable state in SQLite (`<state-dir>/kua.db`): deploys, their steps, their logs, and webhook
//! deliveries. The schema
//! migrates on open, so any binary opens any older state dir. Every write is its own transaction:
//! a crash between two writes leaves a consistent record that startup recovery understands.

mod deliveries;
mod deploys;
mod logs;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::Context;
use rusqlite::Connection;

pub use deploys::NewDeploy;
pub use logs::{LogLine, LogWriter, MAX_LOG_LINES};

/// A handle on the state database. Cheap to clone; queries are short, so one connection behind a
/// mutex serves the whole process.
#[derive(Clone)]
pub struct Store {
    conn: Arc<Mutex<Connection>>,
    path: PathBuf,
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
        conn.pragma_update(None, "foreign_keys", "ON")?;
        migrate(&conn).with_context(|| format!("cannot migrate {}", path.display()))?;
        Ok(Self { conn: Arc::new(Mutex::new(conn)), path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each write is one
        // statement or transaction), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
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
