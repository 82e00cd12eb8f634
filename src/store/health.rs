//! What is wrong with storage right now, for `/healthz` and the log: the problems seen (a write that
//! failed, a checkpoint, a backup, a full or read-only filesystem), each until it clears, and the
//! deploys whose end is still to be recorded. A problem is logged once when it appears and once
//! when it clears, however many writes fail in between.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::model::{now_rfc3339, DeployId, Problem, ProblemKind, StorageHealth};

/// A deploy that stopped because its state could not be written: it ends `failed` with `error`
/// as soon as a write succeeds again.
#[derive(Debug, Clone)]
pub(super) struct PendingEnd {
    pub id: DeployId,
    pub error: String,
}

/// How often a problem that goes on, saying something else each time (which write failed), is
/// logged again.
const RELOG: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub(super) struct Health {
    problems: BTreeMap<ProblemKind, Problem>,
    logged: BTreeMap<ProblemKind, Instant>,
    pub pending: Vec<PendingEnd>,
    pub last_backup: Option<String>,
}

impl Health {
    /// Records a problem; logs it when it appears, and then at most once a [`RELOG`] while it
    /// goes on saying something else.
    pub fn set(&mut self, kind: ProblemKind, message: String) {
        let relog = self.logged.get(&kind).is_none_or(|t| t.elapsed() >= RELOG);
        match self.problems.get_mut(&kind) {
            Some(p) if p.message == message => return,
            Some(p) if !relog => {
                p.message = message;
                return;
            }
            Some(p) => p.message.clone_from(&message),
            None => {
                self.problems.insert(kind, Problem { kind, message: message.clone(), since: now_rfc3339() });
            }
        }
        tracing::error!("storage: {message}");
        self.logged.insert(kind, Instant::now());
    }

    pub fn clear(&mut self, kind: ProblemKind) {
        self.logged.remove(&kind);
        if let Some(p) = self.problems.remove(&kind) {
            tracing::info!("storage: no longer failing (since {}: {})", p.since, p.message);
        }
    }

    pub fn has(&self, kind: ProblemKind) -> bool {
        self.problems.contains_key(&kind)
    }

    pub fn snapshot(&self) -> StorageHealth {
        StorageHealth {
            ok: self.problems.is_empty() && self.pending.is_empty(),
            problems: self.problems.values().cloned().collect(),
            unrecorded_deploys: self.pending.iter().map(|p| p.id.clone()).collect(),
            last_backup: self.last_backup.clone(),
        }
    }
}

/// Whether `e` says the storage itself failed (full, read-only, I/O, damaged) rather than a query
/// being wrong, and in words an operator acts on.
pub fn storage_failure(e: &rusqlite::Error) -> Option<&'static str> {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code()? {
        C::DiskFull => Some("the disk holding the state dir is full"),
        C::ReadOnly => Some("the state database cannot be written (read-only)"),
        C::SystemIoFailure => Some("the state dir's disk failed to read or write"),
        C::DatabaseCorrupt | C::NotADatabase => Some("the state database is damaged"),
        C::CannotOpen | C::PermissionDenied => Some("the state database cannot be opened"),
        C::OutOfMemory => Some("out of memory"),
        _ => None,
    }
}

/// The free space, in bytes, below which the state dir's filesystem counts as full.
pub const LOW_SPACE: u64 = 1 << 20;

/// What is wrong with the filesystem holding `dir`, if anything: full, or mounted read-only.
pub fn filesystem_problem(dir: &std::path::Path) -> Option<String> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut st = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: a valid C string and a buffer of the right type; read only if the call succeeded.
    if unsafe { libc::statvfs(c.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Some(format!("cannot query the filesystem of {}: {}", dir.display(), std::io::Error::last_os_error()));
    }
    // SAFETY: statvfs returned 0, so it filled the buffer.
    let st = unsafe { st.assume_init() };
    if st.f_flag & libc::ST_RDONLY != 0 {
        return Some(format!("the filesystem holding {} is mounted read-only", dir.display()));
    }
    let free = st.f_bavail.saturating_mul(st.f_frsize);
    (free < LOW_SPACE).then(|| format!("the filesystem holding {} is full ({} KiB free)", dir.display(), free / 1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_keeps_its_first_time_until_it_clears() {
        let mut h = Health::default();
        assert!(h.snapshot().ok);
        h.set(ProblemKind::Write, "disk full".into());
        let since = h.snapshot().problems[0].since.clone();
        h.set(ProblemKind::Write, "disk full again".into());
        let s = h.snapshot();
        assert!(!s.ok);
        assert_eq!((s.problems.len(), s.problems[0].since.clone()), (1, since));
        assert_eq!(s.problems[0].message, "disk full again");
        h.clear(ProblemKind::Write);
        assert!(h.snapshot().ok);
    }

    #[test]
    fn a_deploy_still_to_be_recorded_keeps_storage_unhealthy() {
        let mut h = Health::default();
        h.pending.push(PendingEnd { id: DeployId::new(), error: "x".into() });
        let s = h.snapshot();
        assert!(!s.ok);
        assert_eq!(s.unrecorded_deploys.len(), 1);
    }

    #[test]
    fn a_full_disk_is_a_storage_failure_and_a_constraint_is_not() {
        let full = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL), None);
        assert!(storage_failure(&full).unwrap().contains("full"));
        let constraint =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT), None);
        assert_eq!(storage_failure(&constraint), None);
    }

    #[test]
    fn an_ordinary_directory_has_no_filesystem_problem() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(filesystem_problem(dir.path()), None);
        assert!(filesystem_problem(&dir.path().join("missing")).unwrap().contains("cannot query"));
    }
}
