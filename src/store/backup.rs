//! The start-up check of `kua.db` and the backup that backs it. Before anything is served, the
//! database must pass SQLite's `quick_check` and hold at least the history its backup holds; a
//! damaged or emptied one is replaced by `kua.db.backup` (the damaged file is kept aside), or, with
//! no usable backup, refused with what to do by hand. The backup is a checked, self-contained copy
//! (rollback-journal mode: one file is the whole database), brought up to date at start, every few
//! minutes while the database changes, and at a clean stop; it never replaces a backup that holds
//! more history than it does.

use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags};

pub const DB_FILE: &str = "kua.db";
pub const BACKUP_FILE: &str = "kua.db.backup";
const BACKUP_TMP: &str = "kua.db.backup.tmp";

/// What the start-up check found in `kua.db`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Found {
    /// No tables: a database never written to, or one emptied (0 bytes, missing).
    Empty,
    /// It passed the check; `last_deploy` is the highest deploy number it holds (0: none).
    Sound { last_deploy: i64 },
    /// SQLite says it is damaged.
    Damaged(String),
}

/// What `kua.db.backup` holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackupState {
    Missing,
    Unusable(String),
    Good { last_deploy: i64, taken_at: String },
}

impl BackupState {
    pub fn last_deploy(&self) -> i64 {
        match self {
            BackupState::Good { last_deploy, .. } => *last_deploy,
            _ => 0,
        }
    }
}

/// What to do with what was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    Use,
    /// Replace `kua.db` by the backup; the string says what was wrong with it.
    Restore(String),
    /// Do not start; the string says what was wrong.
    Refuse(String),
}

/// The decision, from the check of both files. A database holding fewer deploys than its backup
/// lost history (deploy numbers only grow), so it counts as emptied.
pub fn plan(found: &Found, backup: &BackupState) -> Plan {
    match (found, backup) {
        (Found::Sound { last_deploy }, BackupState::Good { last_deploy: b, .. }) if last_deploy < b => {
            let what = match last_deploy {
                0 => "no deploys".to_owned(),
                n => format!("deploys only up to #{n}"),
            };
            Plan::Restore(format!("kua.db holds {what}, but its backup holds deploys up to #{b}: it lost history"))
        }
        (Found::Sound { .. }, _) => Plan::Use,
        (Found::Empty, BackupState::Good { last_deploy, .. }) if *last_deploy > 0 => {
            Plan::Restore(format!("kua.db is empty (or missing), but its backup holds deploys up to #{last_deploy}"))
        }
        (Found::Empty, BackupState::Unusable(why)) => Plan::Refuse(format!(
            "kua.db is empty (or missing), and its backup kua.db.backup cannot be used ({why}), so the history it had cannot be told"
        )),
        (Found::Empty, _) => Plan::Use,
        (Found::Damaged(why), BackupState::Good { .. }) => Plan::Restore(format!("kua.db is damaged ({why})")),
        (Found::Damaged(why), BackupState::Missing) => {
            Plan::Refuse(format!("kua.db is damaged ({why}), and there is no backup (kua.db.backup) to restore"))
        }
        (Found::Damaged(why), BackupState::Unusable(b)) => {
            Plan::Refuse(format!("kua.db is damaged ({why}), and its backup kua.db.backup cannot be used either ({b})"))
        }
    }
}

/// What to do by hand when kua-deploy refuses a state dir.
pub fn by_hand(dir: &Path) -> String {
    format!(
        "kua-deploy does not start on it, so that no history is lost without a word. By hand, with the server \
         stopped and a copy of {dir} kept: salvage what SQLite can read with `sqlite3 {db} .recover | sqlite3 \
         {db}.recovered` and move {db}.recovered to {db}; or move {db} (and {db}-wal) away to start with an empty \
         history",
        dir = dir.display(),
        db = dir.join(DB_FILE).display(),
    )
}

/// Whether `e` says the file is not a sound database (as opposed to a disk or permission problem,
/// after which the file may be fine and must be left alone).
pub fn is_damage(e: &rusqlite::Error) -> bool {
    matches!(e.sqlite_error_code(), Some(rusqlite::ErrorCode::DatabaseCorrupt | rusqlite::ErrorCode::NotADatabase))
}

/// Checks an open database: integrity, then whether it holds anything.
pub fn inspect(conn: &Connection) -> rusqlite::Result<Found> {
    match inspect_inner(conn) {
        Err(e) if is_damage(&e) => Ok(Found::Damaged(e.to_string())),
        r => r,
    }
}

fn inspect_inner(conn: &Connection) -> rusqlite::Result<Found> {
    let mut stmt = conn.prepare("PRAGMA quick_check")?;
    let findings: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
    if findings != ["ok"] {
        let shown: Vec<&str> = findings.iter().take(3).map(String::as_str).collect();
        return Ok(Found::Damaged(format!("the integrity check found: {}", shown.join("; "))));
    }
    let tables: i64 = conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| r.get(0))?;
    if tables == 0 {
        return Ok(Found::Empty);
    }
    Ok(Found::Sound { last_deploy: last_deploy(conn)? })
}

fn last_deploy(conn: &Connection) -> rusqlite::Result<i64> {
    let has_deploys: bool = conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'deploys')",
        [],
        |r| r.get(0),
    )?;
    if !has_deploys {
        return Ok(0);
    }
    conn.query_row("SELECT COALESCE(MAX(seq), 0) FROM deploys", [], |r| r.get(0))
}

/// Reads and checks the backup, without changing it.
pub fn read_backup(path: &Path) -> BackupState {
    let taken_at = match std::fs::metadata(path) {
        Ok(m) => m.modified().map(|t| chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339()).unwrap_or_default(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return BackupState::Missing,
        Err(e) => return BackupState::Unusable(e.to_string()),
    };
    let checked = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .and_then(|conn| inspect(&conn));
    match checked {
        Ok(Found::Sound { last_deploy }) => BackupState::Good { last_deploy, taken_at },
        Ok(Found::Empty) => BackupState::Good { last_deploy: 0, taken_at },
        Ok(Found::Damaged(why)) => BackupState::Unusable(why),
        Err(e) => BackupState::Unusable(e.to_string()),
    }
}

/// Moves the damaged `kua.db` (and its `-wal`) aside as `kua.db.damaged-<time>` and puts a copy of
/// the backup in its place. Returns where the damaged file went, if there was one.
pub fn restore(dir: &Path) -> std::io::Result<Option<PathBuf>> {
    let db = dir.join(DB_FILE);
    let stamp = chrono::Utc::now().format("%Y%m%dT%H%M%SZ");
    let aside = dir.join(format!("{DB_FILE}.damaged-{stamp}"));
    let mut moved = None;
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let from = PathBuf::from(format!("{}{suffix}", db.display()));
        if from.exists() {
            std::fs::rename(&from, format!("{}{suffix}", aside.display()))?;
            if suffix.is_empty() {
                moved = Some(aside.clone());
            }
        }
    }
    let tmp = dir.join(format!("{DB_FILE}.restoring"));
    std::fs::copy(dir.join(BACKUP_FILE), &tmp)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, &db)?;
    sync_dir(dir)?;
    Ok(moved)
}

/// Copies the open database to the backup's temporary file, in one step: one read transaction,
/// so the copy is one consistent state while other connections go on writing (WAL).
pub fn copy_out(conn: &Connection, dir: &Path) -> rusqlite::Result<()> {
    let tmp = dir.join(BACKUP_TMP);
    remove_tmp(dir);
    let mut dst = Connection::open(&tmp)?;
    let copy = rusqlite::backup::Backup::new(conn, &mut dst)?;
    match copy.step(-1)? {
        rusqlite::backup::StepResult::Done => Ok(()),
        other => Err(rusqlite::Error::InvalidParameterName(format!("the backup copy stopped early ({other:?})"))),
    }
}

/// What a backup brought up to date holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Taken {
    pub last_deploy: i64,
    pub taken_at: String,
}

/// Makes the copy self-contained, checks it, and puts it in place of the backup — unless it holds
/// fewer deploys than `previous_last_deploy` (the database lost history since: the older backup is
/// the one to keep). Without the connection's lock: the copy is a file of its own.
pub fn install(dir: &Path, previous_last_deploy: i64) -> Result<Taken, String> {
    let result = install_inner(dir, previous_last_deploy);
    remove_tmp(dir);
    result
}

fn install_inner(dir: &Path, previous_last_deploy: i64) -> Result<Taken, String> {
    let tmp = dir.join(BACKUP_TMP);
    let found = {
        let conn = Connection::open(&tmp).map_err(|e| e.to_string())?;
        // The copy carries the WAL flag of the original; exclusive locking first, so that no
        // shared-memory file is made on the way to a plain rollback-journal database.
        conn.pragma_update(None, "locking_mode", "EXCLUSIVE").map_err(|e| e.to_string())?;
        let mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "DELETE", |r| r.get(0)).map_err(|e| e.to_string())?;
        if !mode.eq_ignore_ascii_case("delete") {
            return Err(format!("the copy stayed in journal mode {mode}"));
        }
        inspect(&conn).map_err(|e| e.to_string())?
    };
    let last_deploy = match found {
        Found::Sound { last_deploy } => last_deploy,
        Found::Empty => 0,
        Found::Damaged(why) => {
            return Err(format!("the copy of kua.db is damaged ({why}); the previous backup is kept"))
        }
    };
    if last_deploy < previous_last_deploy {
        return Err(format!(
            "kua.db holds deploys up to #{last_deploy}, fewer than the backup (up to #{previous_last_deploy}); \
             the backup is kept, and kua.db will be restored from it at the next start"
        ));
    }
    std::fs::File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, dir.join(BACKUP_FILE)).map_err(|e| e.to_string())?;
    sync_dir(dir).map_err(|e| e.to_string())?;
    Ok(Taken { last_deploy, taken_at: crate::model::now_rfc3339() })
}

fn remove_tmp(dir: &Path) {
    for name in [BACKUP_TMP.to_owned(), format!("{BACKUP_TMP}-journal"), format!("{BACKUP_TMP}-wal")] {
        let _ = std::fs::remove_file(dir.join(name));
    }
}

/// Makes a rename in `dir` durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: fn(i64) -> BackupState = |n| BackupState::Good { last_deploy: n, taken_at: "t".into() };

    #[test]
    fn a_sound_database_is_used_whatever_the_backup() {
        for b in [BackupState::Missing, BackupState::Unusable("x".into()), GOOD(3)] {
            assert_eq!(plan(&Found::Sound { last_deploy: 3 }, &b), Plan::Use);
        }
    }

    #[test]
    fn a_database_with_less_history_than_its_backup_is_restored() {
        let p = plan(&Found::Sound { last_deploy: 0 }, &GOOD(300));
        assert!(matches!(&p, Plan::Restore(why) if why.contains("no deploys") && why.contains("#300")), "{p:?}");
        assert!(matches!(plan(&Found::Sound { last_deploy: 12 }, &GOOD(300)), Plan::Restore(_)));
    }

    #[test]
    fn an_empty_database_is_fresh_unless_a_backup_says_it_had_history() {
        assert_eq!(plan(&Found::Empty, &BackupState::Missing), Plan::Use);
        assert_eq!(plan(&Found::Empty, &GOOD(0)), Plan::Use);
        assert!(matches!(plan(&Found::Empty, &GOOD(5)), Plan::Restore(_)));
        assert!(matches!(plan(&Found::Empty, &BackupState::Unusable("bad".into())), Plan::Refuse(_)));
    }

    #[test]
    fn a_damaged_database_is_restored_from_a_good_backup_and_refused_without_one() {
        let damaged = Found::Damaged("malformed".into());
        assert!(matches!(plan(&damaged, &GOOD(1)), Plan::Restore(w) if w.contains("malformed")));
        assert!(matches!(plan(&damaged, &BackupState::Missing), Plan::Refuse(w) if w.contains("no backup")));
        assert!(matches!(plan(&damaged, &BackupState::Unusable("x".into())), Plan::Refuse(_)));
    }

    fn db_with_deploys(path: &Path, n: i64) -> Connection {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch("CREATE TABLE deploys (seq INTEGER PRIMARY KEY AUTOINCREMENT, x TEXT)").unwrap();
        for _ in 0..n {
            conn.execute("INSERT INTO deploys (x) VALUES (hex(randomblob(200)))", []).unwrap();
        }
        conn
    }

    #[test]
    fn a_backup_is_one_plain_file_that_reads_back_with_its_history() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db_with_deploys(&dir.path().join(DB_FILE), 40);
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        copy_out(&conn, dir.path()).unwrap();
        let taken = install(dir.path(), 0).unwrap();
        assert_eq!(taken.last_deploy, 40);
        assert!(matches!(read_backup(&dir.path().join(BACKUP_FILE)), BackupState::Good { last_deploy: 40, .. }));
        let names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        assert!(!names.iter().any(|n| n.starts_with("kua.db.backup") && n != BACKUP_FILE), "{names:?}");
    }

    #[test]
    fn a_copy_with_less_history_does_not_replace_the_backup() {
        let dir = tempfile::tempdir().unwrap();
        let conn = db_with_deploys(&dir.path().join(DB_FILE), 2);
        copy_out(&conn, dir.path()).unwrap();
        let err = install(dir.path(), 10).unwrap_err();
        assert!(err.contains("fewer than the backup"), "{err}");
        assert_eq!(read_backup(&dir.path().join(BACKUP_FILE)), BackupState::Missing);
    }

    #[test]
    fn a_truncated_database_is_found_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(DB_FILE);
        drop(db_with_deploys(&path, 200));
        let len = std::fs::metadata(&path).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(len / 2).unwrap();
        let found = Connection::open(&path).and_then(|c| inspect(&c)).unwrap();
        assert!(matches!(found, Found::Damaged(_)), "{found:?}");
    }

    #[test]
    fn restoring_keeps_the_damaged_file_aside_and_puts_the_backup_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join(DB_FILE);
        let conn = db_with_deploys(&db, 5);
        copy_out(&conn, dir.path()).unwrap();
        install(dir.path(), 0).unwrap();
        drop(conn);
        std::fs::write(&db, b"not a database at all, but long enough to look like a header .......").unwrap();
        let aside = restore(dir.path()).unwrap().expect("the damaged file was moved");
        assert!(std::fs::read(&aside).unwrap().starts_with(b"not a database"));
        let found = inspect(&Connection::open(&db).unwrap()).unwrap();
        assert_eq!(found, Found::Sound { last_deploy: 5 });
    }
}
