//! Commands that outlive the server (a `compose up` must finish whatever happens to kua-deploy),
//! and the process references that find them again after a restart.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::pump::FileFollower;
use super::{kill_group, Cmd, Host, LogSink, Output, Redactor, RunError};

/// A command started to outlive kua-deploy: in a session of its own, its output going to a file,
/// never to a pipe whose reader could die. A `compose up` stopped halfway leaves the app without
/// a container; detached, it finishes whatever happens to the server, and a server that comes
/// back finds it by [`ProcessRef`] and waits for it.
pub struct Detached {
    child: tokio::process::Child,
    process: ProcessRef,
    output: PathBuf,
    program: String,
}

/// A process named so that a reused pid is not taken for it: `pid:start-ticks` (field 22 of
/// `/proc/<pid>/stat`, the time it started after boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_ticks: u64,
}

impl ProcessRef {
    fn of(pid: u32) -> Option<Self> {
        Some(Self { pid, start_ticks: start_ticks(pid)? })
    }

    pub fn parse(s: &str) -> Option<Self> {
        let (pid, ticks) = s.split_once(':')?;
        Some(Self { pid: pid.parse().ok()?, start_ticks: ticks.parse().ok()? })
    }

    /// Whether that very process still runs (a zombie counts as ended).
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else { return false };
        let Some(fields) = stat_fields(&stat) else { return false };
        fields.first().is_some_and(|state| *state != "Z")
            && fields.get(19).and_then(|t| t.parse().ok()) == Some(self.start_ticks)
    }

    /// Kills the process and its group (a detached command leads its own session and group).
    pub fn kill_group(&self) {
        if self.is_alive() {
            kill_group(Some(self.pid));
        }
    }

    /// Waits until the process has ended, at most `limit`; whether it did. The kernel says when
    /// (a pidfd turns readable as the process exits); where pidfds are missing, it looks every
    /// 100 ms.
    pub async fn wait_gone(&self, limit: Duration) -> bool {
        // Opened before the check, so that the pid cannot be reused for another process between.
        let pidfd = pidfd_open(self.pid);
        if !self.is_alive() {
            return true;
        }
        // SAFETY: the OwnedFd is moved in and owned by the AsyncFd alone, which closes it.
        if let Some(fd) = pidfd.and_then(|fd| unsafe { tokio::io::unix::AsyncFd::register(fd) }.ok()) {
            return tokio::time::timeout(limit, fd.readable()).await.is_ok() || !self.is_alive();
        }
        let until = tokio::time::Instant::now() + limit;
        while self.is_alive() {
            if tokio::time::Instant::now() >= until {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        true
    }
}

/// A file descriptor that becomes readable when process `pid` exits (Linux 5.3 and later).
fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: a plain syscall; a non-negative result is a new descriptor this function owns.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    (fd >= 0).then(|| unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

impl std::fmt::Display for ProcessRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.pid, self.start_ticks)
    }
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces and parens).
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    Some(stat[stat.rfind(')')? + 1..].split_whitespace().collect())
}

fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat)?.get(19)?.parse().ok()
}

impl Host {
    /// Starts `cmd` detached (see [`Detached`]), its stdout and stderr appended to `output`.
    pub async fn spawn_detached(&self, cmd: &Cmd, output: &std::path::Path) -> Result<Detached, RunError> {
        // No pid marker: a detached command is never stopped from here on cancel, and its output
        // goes to a file read later, possibly by another server.
        let (mut command, program) = self.command(cmd, None).await?;
        let spawn_err = |source| RunError::Spawn { program: program.clone(), source };
        if let Some(dir) = output.parent() {
            std::fs::create_dir_all(dir).map_err(spawn_err)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(output).map_err(spawn_err)?;
        let file2 = file.try_clone().map_err(spawn_err)?;
        let input = self.stdin_of(cmd);
        command.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
        command.stdout(file).stderr(file2).kill_on_drop(false);
        for name in &self.redactor.secret_env {
            command.env_remove(name);
        }
        // A session of its own: neither a signal to kua-deploy's process group nor the end of
        // kua-deploy reaches it.
        // SAFETY: setsid is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(spawn_err)?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            });
        }
        let pid = child.id().unwrap_or_default();
        let process = ProcessRef::of(pid).unwrap_or(ProcessRef { pid, start_ticks: 0 });
        Ok(Detached { child, process, output: output.to_owned(), program })
    }
}

impl Detached {
    pub fn process(&self) -> ProcessRef {
        self.process
    }

    /// Follows the output file into `sink` (redacted, long lines cut) until the command exits;
    /// kills it after `timeout`. When `stop` fires first the command is left running and
    /// `Cancelled` returned: whoever comes next waits for it by its [`ProcessRef`].
    pub async fn wait(
        mut self,
        redactor: &Redactor,
        timeout: Duration,
        stop: &CancellationToken,
        sink: &dyn LogSink,
    ) -> Result<Output, RunError> {
        let mut follow = FileFollower::new(&self.output);
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let status = loop {
            tokio::select! {
                status = self.child.wait() => break status,
                _ = tick.tick() => follow.pump(redactor, sink),
                _ = &mut deadline => {
                    kill_group(Some(self.process.pid));
                    follow.pump(redactor, sink);
                    return Err(RunError::TimedOut { program: self.program, after: timeout });
                }
                _ = stop.cancelled() => {
                    follow.pump(redactor, sink);
                    return Err(RunError::Cancelled { program: self.program });
                }
            }
        };
        follow.pump(redactor, sink);
        follow.finish(redactor, sink);
        let code = status.ok().and_then(|s| s.code());
        Ok(Output { code, stdout: follow.kept, stderr: String::new() })
    }
}

/// Hands a detached command's whole output file to `sink`, as [`Detached::wait`] would have: for
/// a server that took over a command whose follower died.
pub fn replay_output(path: &std::path::Path, redactor: &Redactor, sink: &dyn LogSink) {
    let mut follow = FileFollower::new(path);
    follow.pump(redactor, sink);
    follow.finish(redactor, sink);
}
