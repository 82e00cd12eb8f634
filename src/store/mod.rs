//! Durable state in SQLite (`<state-dir>/kua.db`): deploys, their steps, their logs, and webhook
//! deliveries. The schema migrates on open, so any binary opens any older state dir. Every write is
//! its own transaction: a crash between two writes leaves a consistent record that startup
//! recovery understands.
//!
//! Opening takes the state dir's lock ([`lock`]: one server per state dir), then checks the
//! database and restores it from its backup if it is damaged or emptied ([`backup`]). The database
//! is opened in WAL mode through SQLite's `unix-excl` VFS: the process holds an exclusive lock on
//! `kua.db`, so no other process may open it, and the WAL index lives in this process's heap,
//! shared by its connections, instead of a memory-mapped `kua.db-shm` — so no shared-memory file
//! can fault (SIGBUS) under the server. Requests write through one connection; a maintenance
//! thread with a connection of its own checkpoints and copies the backup without blocking them,
//! watches the filesystem and records what storage failures left undone ([`health`]).

mod backup;
mod deliveries;
mod deploys;
mod events;
mod health;
mod lifecycle;
mod lock;
mod logs;
mod schema;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use rusqlite::Connection;

pub use backup::{BACKUP_FILE, DB_FILE};
pub use deliveries::PushRecord;
pub use deploys::{NewDeploy, Orphans};
pub use events::{Change, DeployWatch, FleetWatch};
pub use health::storage_failure;
pub use lifecycle::{EndHook, Transition};
pub use lock::{LockError, LOCK_FILE};
pub use logs::{LogWriter, MAX_LOG_LINES};

use crate::model::{DeployId, ProblemKind, StorageHealth};
use health::{Health, PendingEnd};

/// How often the maintenance thread looks: checkpoint, filesystem, deploys to record.
const TICK: Duration = Duration::from_secs(1);
/// The VFS that keeps the WAL index in heap memory and locks the database to this process.
const VFS: &str = "unix-excl";
/// How often the backup is brought up to date while the database changes.
const BACKUP_EVERY: Duration = Duration::from_secs(10 * 60);
/// How soon a backup that failed is tried again.
const BACKUP_RETRY: Duration = Duration::from_secs(60);

/// A handle on the state database. Cheap to clone; queries are short, so the requests and the
/// pipeline share one connection behind a mutex (the maintenance thread has its own). When the
/// last handle is dropped, the database is closed and the state dir unlocked before the drop
/// returns.
#[derive(Clone)]
pub struct Store {
    // Declared first, so dropped first: the maintenance thread has let go of `inner` by the time
    // the last handle drops it.
    _owner: Option<Arc<Owner>>,
    inner: Arc<Inner>,
}

/// Stops and joins the maintenance thread when the last handle goes.
struct Owner {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Owner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

struct Inner {
    conn: Mutex<Connection>,
    /// The maintenance thread's own connection: checkpoints and backup copies, off the requests'.
    maintenance: Mutex<Connection>,
    health: Mutex<Health>,
    backups: Mutex<BackupMark>,
    /// Who waits on which deploy's changes.
    events: Arc<events::Bus>,
    dir: PathBuf,
    /// Called once for each deploy that ends (see `lifecycle`).
    end_hooks: Mutex<Vec<EndHook>>,
    /// Hooks on `start` and `park`, see [`Store::on_deploy_started`].
    phase_hooks: Mutex<Vec<(Transition, EndHook)>>,
    /// The next log line number of each deploy some `LogWriter` writes to, shared by all of them.
    log_next: logs::Counters,
    // Declared last, so dropped last: the lock is held until both connections are closed.
    lock: Mutex<lock::StateLock>,
}

/// What the maintenance thread remembers between rounds.
#[derive(Default)]
struct Rounds {
    /// `PRAGMA data_version` on the maintenance connection at the last round: unchanged means no
    /// other connection wrote for a tick.
    data_version: Option<i64>,
}

/// Where the backup stands, for deciding when the next one is due.
struct BackupMark {
    /// `total_changes` of the connection when the last backup was taken.
    changes: u64,
    attempted: Instant,
    failed: bool,
    /// The highest deploy number the backup holds: a later backup must not hold less.
    last_deploy: i64,
}

impl Store {
    /// Takes the state dir's lock, opens (creating if needed) and checks the database — restoring
    /// it from the backup if it is damaged or emptied, refusing if it cannot be — runs pending
    /// migrations and brings the backup up to date.
    pub fn open(state_dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(state_dir)
            .with_context(|| format!("cannot create the state dir {}", state_dir.display()))?;
        let lock = lock::StateLock::acquire(state_dir)?;
        let (conn, backup_state) = open_checked(state_dir)?;
        let path = state_dir.join(DB_FILE);
        migrate(&conn).with_context(|| format!("cannot migrate {}", path.display()))?;
        let maintenance = connect(&path).with_context(|| format!("cannot open {} a second time", path.display()))?;
        // A truncating checkpoint that finds a reader holds new writers back while it waits: it
        // gives up soon and tries again at the next idle tick.
        maintenance.busy_timeout(Duration::from_millis(200))?;
        let mut health = Health::default();
        if let backup::BackupState::Good { taken_at, .. } = &backup_state {
            health.last_backup = Some(taken_at.clone());
        }
        let mut store = Store {
            _owner: None,
            inner: Arc::new(Inner {
                conn: Mutex::new(conn),
                maintenance: Mutex::new(maintenance),
                health: Mutex::new(health),
                backups: Mutex::new(BackupMark {
                    changes: 0,
                    attempted: Instant::now(),
                    failed: false,
                    last_deploy: backup_state.last_deploy(),
                }),
                events: Arc::default(),
                dir: state_dir.to_owned(),
                end_hooks: Mutex::new(Vec::new()),
                phase_hooks: Mutex::new(Vec::new()),
                log_next: Default::default(),
                lock: Mutex::new(lock),
            }),
        };
        store.back_up();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = spawn_maintenance(Arc::downgrade(&store.inner), stop.clone())
            .context("cannot start the store's maintenance thread")?;
        store._owner = Some(Arc::new(Owner { stop, thread: Some(thread) }));
        Ok(store)
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (each write is one
        // statement or transaction), so a poisoned lock is still usable.
        self.inner.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn maintenance_conn(&self) -> MutexGuard<'_, Connection> {
        self.inner.maintenance.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn health_state(&self) -> MutexGuard<'_, Health> {
        self.inner.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Waits for changes to deploy `id`: make it before reading the deploy, then wait on it.
    pub fn watch(&self, id: &DeployId) -> DeployWatch {
        self.inner.events.watch(id)
    }

    /// Waits for any deploy to be added or to change phase (see [`FleetWatch`]).
    pub fn watch_fleet(&self) -> FleetWatch {
        self.inner.events.watch_fleet()
    }

    /// Wakes whoever waits on deploy `id`; every write of a phase or a log line calls it once
    /// the write is done.
    pub(crate) fn notify(&self, id: &DeployId, change: Change) {
        self.inner.events.notify(id, change);
    }

    /// What is wrong with storage now, if anything.
    pub fn health(&self) -> StorageHealth {
        self.health_state().snapshot()
    }

    /// Writes where this server listens into the lock file, so a second server can name it.
    pub fn set_listen(&self, url: &str) {
        let mut lock = self.inner.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = lock.set_listen(url) {
            tracing::warn!("cannot record the listen address in {}: {e}", self.inner.dir.join(LOCK_FILE).display());
        }
    }

    /// Records that a write failed; `what` says what was being written.
    pub(crate) fn note_write_error(&self, what: &str, e: &rusqlite::Error) {
        let why = storage_failure(e).map(|w| format!("{w}: ")).unwrap_or_default();
        self.health_state().set(ProblemKind::Write, format!("{why}{what} failed: {e}"));
    }

    /// Ends a deploy whose state could not be written as `failed` with `error`: now, or, if storage
    /// still fails, as soon as a write succeeds again (the maintenance thread retries every
    /// second). Until then the deploy is listed as unrecorded on `/healthz`, and its worker is free.
    pub fn end_failed_when_writable(&self, id: &DeployId, error: &str) {
        if let Err(e) = self.end_failed(id, error) {
            self.note_write_error(&format!("recording the end of deploy {id}"), &e);
            let error = format!("{error}; recorded once the state database accepted writes again");
            let mut health = self.health_state();
            if !health.pending.iter().any(|p| &p.id == id) {
                health.pending.push(PendingEnd { id: id.clone(), error });
            }
        }
    }

    /// Whether `id` stopped on a storage error and waits for its end to be recorded.
    pub fn is_unrecorded(&self, id: &DeployId) -> bool {
        self.health_state().pending.iter().any(|p| &p.id == id)
    }

    fn end_failed(&self, id: &DeployId, error: &str) -> rusqlite::Result<()> {
        // Queued too: the failed write may have been the one that starts it.
        self.fail(id, error).map(drop)
    }

    fn record_pending_ends(&self) {
        let pending: Vec<PendingEnd> = self.health_state().pending.clone();
        for p in pending {
            match self.end_failed(&p.id, &p.error) {
                Ok(()) => {
                    tracing::warn!(deploy = %p.id, "storage works again: the deploy is recorded failed: {}", p.error);
                    let mut health = self.health_state();
                    health.pending.retain(|q| q.id != p.id);
                    health.clear(ProblemKind::Write);
                }
                Err(e) => {
                    self.note_write_error(&format!("recording the end of deploy {}", p.id), &e);
                    return;
                }
            }
        }
    }

    /// A write that changes nothing (the schema version, set to itself), to learn whether writes
    /// work again once one failed and no other write is waiting to tell.
    fn probe_write(&self) {
        let result = {
            let conn = self.conn();
            conn.unchecked_transaction().and_then(|tx| {
                let v: i64 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
                tx.pragma_update(None, "user_version", v)?;
                tx.commit()
            })
        };
        match result {
            Ok(()) => self.health_state().clear(ProblemKind::Write),
            Err(e) => self.note_write_error("a test write", &e),
        }
    }

    fn wal_len(&self) -> u64 {
        std::fs::metadata(self.inner.dir.join(format!("{DB_FILE}-wal"))).map(|m| m.len()).unwrap_or(0)
    }

    /// Copies the write-ahead log into `kua.db`, from the maintenance connection: a passive
    /// checkpoint never blocks the requests' writes. Once the database has been idle for a tick,
    /// `truncate` also empties the log file, giving back the space a burst took (and so a full disk
    /// shows at the next write, not once the old log's space is used up). Skipped while the log is
    /// empty, so an idle server does no I/O.
    fn checkpoint(&self, truncate: bool) {
        let wal_len = self.wal_len();
        if wal_len == 0 {
            return;
        }
        let started = Instant::now();
        let sql = if truncate { "PRAGMA wal_checkpoint(TRUNCATE)" } else { "PRAGMA wal_checkpoint(PASSIVE)" };
        let result = self.maintenance_conn().query_row(sql, [], |r| r.get::<_, i64>(0));
        tracing::debug!("checkpoint (truncate: {truncate}) of {} KiB took {:?}", wal_len / 1024, started.elapsed());
        let mut health = self.health_state();
        match result {
            Ok(0) => health.clear(ProblemKind::Checkpoint),
            Ok(_) => tracing::debug!("checkpoint could not complete; tried again in a second"),
            Err(e) => health.set(
                ProblemKind::Checkpoint,
                format!("cannot copy the write-ahead log into {DB_FILE} (it grows until this works): {e}"),
            ),
        }
    }

    /// Brings `kua.db.backup` up to date: one snapshot read on the maintenance connection (writes
    /// go on meanwhile), checked and put in place.
    fn back_up(&self) {
        let dir = &self.inner.dir;
        let changes = self.conn().total_changes();
        let copied = backup::copy_out(&self.maintenance_conn(), dir);
        let previous = self.inner.backups.lock().unwrap_or_else(|e| e.into_inner()).last_deploy;
        let result = copied.map_err(|e| e.to_string()).and_then(|()| backup::install(dir, previous));
        let mut mark = self.inner.backups.lock().unwrap_or_else(|e| e.into_inner());
        mark.attempted = Instant::now();
        mark.failed = result.is_err();
        let mut health = self.health_state();
        match result {
            Ok(taken) => {
                tracing::debug!(deploys = taken.last_deploy, "{} brought up to date", dir.join(BACKUP_FILE).display());
                mark.changes = changes;
                mark.last_deploy = taken.last_deploy;
                health.last_backup = Some(taken.taken_at);
                health.clear(ProblemKind::Backup);
            }
            Err(e) => health.set(ProblemKind::Backup, format!("cannot bring {BACKUP_FILE} up to date: {e}")),
        }
    }

    fn backup_due(&self) -> bool {
        let changes = self.conn().total_changes();
        let mark = self.inner.backups.lock().unwrap_or_else(|e| e.into_inner());
        let wait = if mark.failed { BACKUP_RETRY } else { BACKUP_EVERY };
        changes != mark.changes && mark.attempted.elapsed() >= wait
    }

    /// One round of the maintenance thread.
    fn maintain(&self, rounds: &mut Rounds) {
        let fs = health::filesystem_problem(&self.inner.dir);
        let was_short = self.health_state().has(ProblemKind::Filesystem);
        let room_back = was_short && fs.is_none();
        match fs {
            Some(p) => self.health_state().set(ProblemKind::Filesystem, p),
            None => self.health_state().clear(ProblemKind::Filesystem),
        }
        // Room is back: a backup that failed for want of it is retried now, not a minute later.
        let backup_failed = self.inner.backups.lock().unwrap_or_else(|e| e.into_inner()).failed;
        if room_back && backup_failed {
            self.back_up();
        }
        let (pending, write_failed) = {
            let h = self.health_state();
            (!h.pending.is_empty(), h.has(ProblemKind::Write))
        };
        if pending {
            self.record_pending_ends();
        } else if write_failed {
            self.probe_write();
        }
        let version = self.maintenance_conn().pragma_query_value(None, "data_version", |r| r.get(0)).ok();
        self.checkpoint(version.is_some() && version == rounds.data_version);
        rounds.data_version = version;
        if self.backup_due() {
            self.back_up();
        }
    }

    /// At a clean stop: records what can still be recorded, checkpoints and brings the backup up to
    /// date. The lock is released when the last handle is dropped.
    pub fn close(&self) {
        self.record_pending_ends();
        self.checkpoint(true);
        self.back_up();
    }
}

/// Opens a connection through [`VFS`]: the first one locks `kua.db` to this process, and every
/// one shares the WAL index in heap memory; no `-shm` file is opened or mapped.
fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags_and_vfs(path, rusqlite::OpenFlags::default(), VFS)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "{} stays in journal mode {mode}; kua-deploy needs WAL (is the state dir writable?)",
            path.display()
        )));
    }
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    // Checkpoints (the only fsyncs with WAL + NORMAL) are the maintenance connection's, not done
    // inside whichever request's commit happens to cross a threshold.
    conn.pragma_update(None, "wal_autocheckpoint", 0)?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    Ok(conn)
}

/// Opens `kua.db` after checking it against its backup, restoring or refusing as
/// [`backup::plan`] decides. Returns the connection and what the backup holds.
fn open_checked(dir: &Path) -> anyhow::Result<(Connection, backup::BackupState)> {
    let path = dir.join(DB_FILE);
    let cannot = |e: rusqlite::Error| {
        let why = storage_failure(&e).map(|w| format!("{w}: ")).unwrap_or_default();
        anyhow::anyhow!("cannot open the state database {}: {why}{e}", path.display())
    };
    let (conn, found) = match connect(&path) {
        Ok(conn) => {
            let found = backup::inspect(&conn).map_err(cannot)?;
            (Some(conn), found)
        }
        Err(e) if backup::is_damage(&e) => (None, backup::Found::Damaged(e.to_string())),
        Err(e) => return Err(cannot(e)),
    };
    let backup_path = dir.join(BACKUP_FILE);
    let backup_state = backup::read_backup(&backup_path);
    match backup::plan(&found, &backup_state) {
        backup::Plan::Use => {
            match found {
                backup::Found::Sound { last_deploy } => {
                    tracing::info!(deploys = last_deploy, "{} passed its integrity check", path.display())
                }
                _ => tracing::info!("{} is new: starting with an empty history", path.display()),
            }
            Ok((conn.expect("a database that can be used was opened"), backup_state))
        }
        backup::Plan::Restore(why) => {
            drop(conn);
            let aside = backup::restore(dir).with_context(|| {
                format!("{why}; restoring it from {} failed; {}", backup_path.display(), backup::by_hand(dir))
            })?;
            let taken = match &backup_state {
                backup::BackupState::Good { last_deploy, taken_at } => {
                    format!("taken {taken_at}, deploys up to #{last_deploy}")
                }
                _ => String::new(),
            };
            let kept = aside.map(|a| format!("; the damaged file is kept as {}", a.display())).unwrap_or_default();
            tracing::error!(
                "{why}: RESTORED {} from its backup {} ({taken}){kept}. Deploys recorded after the backup was \
                 taken are not in the history",
                path.display(),
                backup_path.display()
            );
            let conn = connect(&path).map_err(cannot)?;
            Ok((conn, backup_state))
        }
        backup::Plan::Refuse(why) => anyhow::bail!("{why}. {}", backup::by_hand(dir)),
    }
}

/// Every [`TICK`], one round of [`Store::maintain`]; ends when told to (the last handle is dropped).
fn spawn_maintenance(store: Weak<Inner>, stop: Arc<AtomicBool>) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new().name("kua-store".into()).spawn(move || {
        let mut rounds = Rounds::default();
        loop {
            let woke = Instant::now();
            while woke.elapsed() < TICK && !stop.load(Ordering::SeqCst) {
                std::thread::park_timeout(TICK.saturating_sub(woke.elapsed()));
            }
            if stop.load(Ordering::SeqCst) {
                return;
            }
            let Some(inner) = store.upgrade() else { return };
            Store { _owner: None, inner }.maintain(&mut rounds);
        }
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Phase;
    use crate::model::{AppName, StepName, Trigger, TriggerSource};

    fn new_deploy() -> NewDeploy {
        NewDeploy {
            app: AppName::parse("hello").unwrap(),
            trigger: Trigger {
                source: TriggerSource::Api,
                delivery: None,
                git_ref: "refs/heads/main".into(),
                requested_commit: None,
            },
            approve_migrations: false,
            reason: None,
            steps: vec![StepName::GitPull, StepName::Build],
        }
    }

    fn history_len(store: &Store) -> usize {
        store.history(&AppName::parse("hello").unwrap(), 10_000).unwrap().len()
    }

    #[test]
    fn a_second_store_on_the_same_state_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().expect("refused"));
        assert!(err.contains(&format!("pid {}", std::process::id())) && err.contains("in use"), "{err}");
    }

    #[test]
    fn a_dropped_store_has_closed_the_database_and_unlocked_the_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let store = Store::open(dir.path()).unwrap();
            store.insert_deploy(&new_deploy()).unwrap();
            drop(store);
        }
        assert_eq!(history_len(&Store::open(dir.path()).unwrap()), 20);
    }

    #[test]
    fn no_shared_memory_file_is_ever_made() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.insert_deploy(&new_deploy()).unwrap();
        store.maintain(&mut Rounds::default());
        assert!(!dir.path().join("kua.db-shm").exists());
    }

    #[test]
    fn a_database_idle_for_a_round_gives_its_write_ahead_log_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for _ in 0..50 {
            store.insert_deploy(&new_deploy()).unwrap();
        }
        let mut rounds = Rounds::default();
        store.maintain(&mut rounds);
        assert!(store.wal_len() > 0, "a busy round only copies the log");
        store.maintain(&mut rounds);
        assert_eq!(store.wal_len(), 0, "an idle round empties it");
        assert_eq!(history_len(&store), 50);
    }

    #[test]
    fn a_deploy_whose_end_could_not_be_written_ends_failed_once_writes_work_again() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.insert_deploy(&new_deploy()).unwrap().deploy_id;
        store.start(&id).unwrap();
        store.step_start(&id, StepName::GitPull, "").unwrap();
        // Writes refused, as on a full disk.
        store.conn().pragma_update(None, "query_only", true).unwrap();
        store.end_failed_when_writable(&id, "kua-deploy could not record the deploy's state: disk full");
        let h = store.health();
        assert!(!h.ok && h.unrecorded_deploys == vec![id.clone()], "{h:?}");
        assert!(h.problems.iter().any(|p| p.kind == ProblemKind::Write), "{h:?}");
        assert!(store.is_unrecorded(&id));
        store.maintain(&mut Rounds::default());
        assert_eq!(store.deploy(&id).unwrap().unwrap().phase, Phase::Running, "still unwritable");

        store.conn().pragma_update(None, "query_only", false).unwrap();
        store.maintain(&mut Rounds::default());
        let d = store.deploy(&id).unwrap().unwrap();
        assert_eq!(d.phase, Phase::Failed);
        assert!(d.error.as_deref().unwrap().contains("disk full"), "{:?}", d.error);
        assert!(d.error.as_deref().unwrap().contains("once the state database accepted writes again"));
        assert_eq!(d.step(StepName::GitPull).unwrap().status, crate::model::StepStatus::Failed);
        assert!(store.health().ok, "{:?}", store.health());
    }

    #[test]
    fn a_write_failure_seen_elsewhere_clears_once_a_test_write_succeeds() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.conn().pragma_update(None, "query_only", true).unwrap();
        let err = store.insert_deploy(&new_deploy()).unwrap_err();
        store.note_write_error("storing a log line", &err);
        store.maintain(&mut Rounds::default());
        assert!(!store.health().ok);
        store.conn().pragma_update(None, "query_only", false).unwrap();
        store.maintain(&mut Rounds::default());
        assert!(store.health().ok, "{:?}", store.health());
    }

    fn store_with_history(dir: &Path, n: usize) {
        let store = Store::open(dir).unwrap();
        for _ in 0..n {
            store.insert_deploy(&new_deploy()).unwrap();
        }
        store.close();
    }

    #[test]
    fn a_truncated_database_comes_back_from_its_backup_and_the_damaged_file_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        store_with_history(dir.path(), 300);
        let db = dir.path().join(DB_FILE);
        let len = std::fs::metadata(&db).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&db).unwrap().set_len(len / 3).unwrap();
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(history_len(&store), 300);
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(names.iter().any(|n| n.starts_with("kua.db.damaged-")), "{names:?}");
    }

    #[test]
    fn an_emptied_database_comes_back_from_its_backup() {
        let dir = tempfile::tempdir().unwrap();
        store_with_history(dir.path(), 50);
        std::fs::OpenOptions::new().write(true).open(dir.path().join(DB_FILE)).unwrap().set_len(0).unwrap();
        assert_eq!(history_len(&Store::open(dir.path()).unwrap()), 50);
    }

    #[test]
    fn a_damaged_database_without_a_backup_is_refused_saying_what_to_do() {
        let dir = tempfile::tempdir().unwrap();
        store_with_history(dir.path(), 300);
        std::fs::remove_file(dir.path().join(BACKUP_FILE)).unwrap();
        let db = dir.path().join(DB_FILE);
        let mut bytes = std::fs::read(&db).unwrap();
        let len = bytes.len();
        bytes[len / 2..len / 2 + 8192].fill(0xa5);
        std::fs::write(&db, bytes).unwrap();
        let err = format!("{:#}", Store::open(dir.path()).err().expect("refused"));
        assert!(err.contains("damaged") && err.contains("no backup") && err.contains(".recover"), "{err}");
        assert!(db.exists(), "a refused database is left where it was");
    }

    #[test]
    fn a_fresh_state_dir_starts_empty_without_complaint() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("new")).unwrap();
        assert_eq!(history_len(&store), 0);
        assert!(store.health().ok);
        assert!(store.health().last_backup.is_some());
    }
}
