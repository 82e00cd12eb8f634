//! One server per state dir: an exclusive `flock` on `<state-dir>/kua.lock`, held for the life of
//! the process (the kernel releases it when the process dies, however it dies). The file names the
//! holder — its pid, when it started, and where it listens once it does — so a second server can
//! say who is in the way.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub const LOCK_FILE: &str = "kua.lock";

/// What the holder writes into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub since: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {}", self.pid)?;
        if let Some(l) = &self.listen {
            write!(f, ", listening on {l}")?;
        }
        write!(f, ", since {}", self.since)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "the state dir {dir} is in use by another kua-deploy ({holder}; lock file {lock}); only one server may \
         use a state dir: stop that one first, or give this one another --state-dir"
    )]
    Held { dir: PathBuf, lock: PathBuf, holder: String },
    #[error("cannot lock the state dir ({lock}): {source}")]
    Io { lock: PathBuf, source: std::io::Error },
}

/// The held lock; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct StateLock {
    file: File,
    holder: Holder,
}

impl StateLock {
    /// Takes the state dir's lock without waiting, or says who holds it.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join(LOCK_FILE);
        let io = |source| LockError::Io { lock: path.clone(), source };
        // Opened with O_CLOEXEC (std's default), so no child process — a build, or a recreate
        // that must outlive this one — ever holds the lock.
        let mut file =
            std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            return Err(LockError::Held {
                dir: state_dir.to_owned(),
                lock: path.clone(),
                holder: read_holder(&mut file).map(|h| h.to_string()).unwrap_or_else(|| "pid unknown".into()),
            });
        }
        let holder = Holder { pid: std::process::id(), since: crate::model::now_rfc3339(), listen: None };
        let mut lock = StateLock { file, holder };
        lock.write().map_err(io)?;
        Ok(lock)
    }

    /// Records where this server listens, for the next one that tries the same state dir.
    pub fn set_listen(&mut self, url: &str) -> std::io::Result<()> {
        self.holder.listen = Some(url.to_owned());
        self.write()
    }

    fn write(&mut self) -> std::io::Result<()> {
        let text = serde_json::to_string(&self.holder).expect("plain data serializes");
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(format!("{text}\n").as_bytes())
    }
}

/// The holder as it wrote itself down. It writes right after it locks, so an empty file means it
/// is about to: look again for a moment.
fn read_holder(file: &mut File) -> Option<Holder> {
    for _ in 0..10 {
        let mut text = String::new();
        if file.rewind().is_ok() && file.read_to_string(&mut text).is_ok() {
            if let Ok(h) = serde_json::from_str(text.trim()) {
                return Some(h);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_the_same_state_dir_is_refused_naming_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = StateLock::acquire(dir.path()).unwrap();
        first.set_listen("http://127.0.0.1:8790").unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        assert!(err.contains("listening on http://127.0.0.1:8790"), "{err}");
        drop(first);
        StateLock::acquire(dir.path()).expect("free again once the holder let go");
    }

    #[test]
    fn a_holder_reads_back_as_written() {
        let h = Holder { pid: 7, since: "2024-01-01T00:00:00Z".into(), listen: None };
        let back: Holder = serde_json::from_str(&serde_json::to_string(&h).unwrap()).unwrap();
        assert_eq!(back, h);
        assert_eq!(h.to_string(), "pid 7, since 2024-01-01T00:00:00Z");
    }
}
