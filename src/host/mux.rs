//! OpenSSH multiplexing: one master connection per host, shared by every command of every deploy
//! on it. The masters' sockets live in a private directory of this server's own (mode 0700),
//! emptied at start and removed at stop, so a socket made by an earlier process is never reused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use super::ssh::{common_options, SshHost};
use super::RunError;

/// How long a master stays up with no command using it; it also keeps a detached `compose up`
/// alive through a server crash, then ends on its own.
const IDLE: &str = "60";
/// The longest a master may take to connect and authenticate before the step fails.
const START_LIMIT: Duration = Duration::from_secs(20);
/// A Unix socket path longer than this does not fit in `sockaddr_un`.
const MAX_SOCKET_PATH: usize = 100;

/// The masters of this server, one per host; owned by the app and handed to every [`super::Host`].
#[derive(Debug)]
pub struct SshPool {
    dir: PathBuf,
    next: AtomicUsize,
    masters: Mutex<HashMap<SshHost, Arc<tokio::sync::Mutex<Option<PathBuf>>>>>,
}

impl SshPool {
    /// Makes `preferred` (emptied of anything an earlier process left) the sockets' directory, or,
    /// when its path is too long for a socket, a fresh one under `$XDG_RUNTIME_DIR` or the temp dir.
    pub fn new(preferred: &Path) -> std::io::Result<Self> {
        let dir = if preferred.as_os_str().len() + 8 < MAX_SOCKET_PATH {
            preferred.to_owned()
        } else {
            let base = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
            base.join(format!("kua-ssh-{}", std::process::id()))
        };
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir)?;
        // `recursive` leaves an existing parent alone; the directory itself must be private.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        Ok(Self { dir, next: AtomicUsize::new(0), masters: Mutex::new(HashMap::new()) })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The socket of `h`'s master, connecting one first if there is none or it has ended.
    pub async fn socket(&self, h: &SshHost) -> Result<PathBuf, RunError> {
        let slot = self.masters.lock().unwrap().entry(h.clone()).or_default().clone();
        let mut slot = slot.lock().await;
        // A master that ended (idle, or its connection lost) removes its socket; one that was
        // killed leaves it behind, refusing connections.
        if let Some(socket) = slot.as_ref().filter(|s| listening(s)) {
            return Ok(socket.clone());
        }
        if let Some(dead) = slot.take() {
            let _ = std::fs::remove_file(dead);
        }
        let socket = self.start(h).await?;
        *slot = Some(socket.clone());
        Ok(socket)
    }

    /// Whether `h`'s master is there to use (its socket exists): false once it has ended.
    pub fn alive(&self, h: &SshHost) -> bool {
        let slot = self.masters.lock().unwrap().get(h).cloned();
        match slot {
            Some(slot) => slot.try_lock().map(|s| s.as_ref().is_some_and(|p| listening(p))).unwrap_or(true),
            None => true,
        }
    }

    /// The socket of `h`'s master if one is up now; never connects (a command that stops another
    /// must not wait for a host that is gone). None while another command is connecting one.
    pub(super) fn existing(&self, h: &SshHost) -> Option<PathBuf> {
        let slot = self.masters.lock().unwrap().get(h).cloned()?;
        let socket = slot.try_lock().ok()?.clone();
        socket.filter(|s| listening(s))
    }

    /// Forgets `h`'s master (after a command saw it fail), so the next command connects anew.
    pub fn forget(&self, h: &SshHost) {
        let slot = self.masters.lock().unwrap().get(h).cloned();
        if let Some(slot) = slot {
            if let Ok(mut s) = slot.try_lock() {
                if let Some(socket) = s.take() {
                    let _ = std::fs::remove_file(socket);
                }
            }
        }
    }

    async fn start(&self, h: &SshHost) -> Result<PathBuf, RunError> {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let socket = self.dir.join(format!("m{n}"));
        let errors = self.dir.join(format!("m{n}.log"));
        let unreachable = |detail: String| RunError::Unreachable { host: h.name.clone(), detail };
        let log = std::fs::File::create(&errors)
            .map_err(|e| unreachable(format!("cannot write {}: {e}", errors.display())))?;
        let mut c = Command::new("ssh");
        common_options(&mut c, h);
        // `-f` returns once the master is authenticated and listening, and leaves it in a session
        // of its own: it outlives a crash of this server just long enough for a detached command.
        c.args(["-f", "-N", "-o", "ControlMaster=yes", "-o", &format!("ControlPersist={IDLE}")]);
        c.arg("-o").arg(format!("ControlPath={}", socket.display()));
        // A host that stops answering ends the master (and its commands) within 15 s.
        c.args(["-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]);
        c.arg("--").arg(format!("{}@{}", h.user, h.host));
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log).kill_on_drop(true);
        let mut child = c.spawn().map_err(|e| unreachable(format!("could not start ssh: {e}")))?;
        let last_error = || {
            let text = std::fs::read_to_string(&errors).unwrap_or_default();
            text.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("ssh exited").trim().to_owned()
        };
        match tokio::time::timeout(START_LIMIT, child.wait()).await {
            Ok(Ok(s)) if s.success() && socket.exists() => Ok(socket),
            Ok(_) => Err(unreachable(last_error())),
            Err(_) => {
                let _ = child.start_kill();
                Err(unreachable(format!("no connection after {}s", START_LIMIT.as_secs())))
            }
        }
    }
}

/// Whether a master answers on `socket`: a connect, which it accepts and drops; a socket file
/// whose master was killed refuses it.
fn listening(socket: &Path) -> bool {
    std::os::unix::net::UnixStream::connect(socket).is_ok()
}

impl SshPool {
    /// Ends every master and removes the directory: at the server's stop. Commands still running
    /// through a master lose it (they end as an unreachable host); none should be left by then.
    pub fn close(&self) {
        let slots: Vec<_> = self.masters.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        for slot in slots {
            if let Ok(s) = slot.try_lock() {
                if let Some(socket) = s.as_ref() {
                    let _ = std::process::Command::new("ssh")
                        .args(["-o", &format!("ControlPath={}", socket.display()), "-O", "exit", "x"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for SshPool {
    fn drop(&mut self) {
        self.close();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_directory_is_private_and_emptied_of_an_earlier_process_s_sockets() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("ssh");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("m0"), "stale").unwrap();
        let pool = SshPool::new(&dir).unwrap();
        assert_eq!(pool.dir(), dir);
        assert!(!dir.join("m0").exists(), "a socket of an earlier process was kept");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777, 0o700);
        drop(pool);
        assert!(!dir.exists(), "the directory outlived the pool");
    }

    #[test]
    fn looking_for_a_master_to_stop_a_command_never_connects_one() {
        let base = tempfile::tempdir().unwrap();
        let pool = SshPool::new(&base.path().join("ssh")).unwrap();
        // A port nothing listens on: connecting would fail only after a try; asking must not try.
        let h = SshHost {
            name: "gone".into(),
            user: "deploy".into(),
            host: "127.0.0.1".into(),
            port: 1,
            identity_file: None,
            known_hosts_file: None,
        };
        assert_eq!(pool.existing(&h), None);
        assert!(pool.masters.lock().unwrap().is_empty(), "a slot was made for the host");
        assert_eq!(std::fs::read_dir(pool.dir()).unwrap().count(), 0, "an ssh was started");
    }

    #[test]
    fn a_socket_file_nobody_listens_on_is_not_a_master() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m0");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        assert!(listening(&path));
        drop(listener);
        assert!(path.exists(), "the file stays, as a killed master's does");
        assert!(!listening(&path));
    }

    #[test]
    fn a_directory_too_long_for_a_socket_is_replaced_by_a_short_one() {
        let base = tempfile::tempdir().unwrap();
        let long = base.path().join("x".repeat(120));
        let pool = SshPool::new(&long).unwrap();
        assert!(pool.dir().as_os_str().len() < MAX_SOCKET_PATH);
    }
}
