//! Stopping a command on an OpenSSH host, not only the local `ssh` that runs it: killing that
//! `ssh` closes the session, but sshd leaves a command without a terminal running.
//!
//! sshd starts each session's command through the user's shell after `setsid()`, so that shell
//! leads a process group of its own, and `exec` keeps its pid for the command. The remote command
//! line therefore begins by printing the shell's `$$` on stderr behind a marker made for this one
//! command ([`PidMarker`]); the reader of stderr takes that line out before anything is logged
//! or kept, and hands the pid over. On cancel or timeout, a short second command over the host's
//! master ([`kill_remote_group`]) sends the whole group `TERM`, then `KILL` after a grace.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::sync::watch;

use super::ssh::{ssh_to, SshHost};

/// How long a stopped command's pid may still take to arrive: it is the first thing the remote
/// shell prints, so only a command stopped while its session was opening waits this long.
pub(super) const PID_WAIT: Duration = Duration::from_secs(2);
/// How long the group has between `TERM` and `KILL`.
const GRACE_TENTHS: u32 = 20;
/// The whole kill command, grace included: past it the host is taken as lost and left alone.
const KILL_LIMIT: Duration = Duration::from_secs(6);

/// The line a remote command prints first: `kua-deploy-pid-<nonce>:<pid>`, with a nonce of its
/// own, so no other line is taken for it.
#[derive(Debug)]
pub(super) struct PidMarker {
    prefix: String,
    pid: watch::Sender<Option<u32>>,
}

impl PidMarker {
    pub(super) fn new() -> Self {
        let nonce = uuid::Uuid::new_v4().simple().to_string();
        Self { prefix: format!("kua-deploy-pid-{nonce}:"), pid: watch::Sender::new(None) }
    }

    /// What the remote command line begins with: the shell's pid on stderr, before anything the
    /// command prints.
    pub(super) fn shell_prefix(&self) -> String {
        format!("echo {}$$ >&2; ", self.prefix)
    }

    /// Whether `line` is the marker (then its pid is kept, and the line must go no further). Only
    /// the first counts: it comes before the command runs, so the command cannot forge it.
    pub(super) fn take(&self, line: &[u8]) -> bool {
        if self.pid.borrow().is_some() {
            return false;
        }
        let Some(rest) = line.strip_prefix(self.prefix.as_bytes()) else { return false };
        let rest = rest.strip_suffix(b"\r").unwrap_or(rest);
        // 0 and 1 would make `kill -N` reach the caller's own group or every process there is.
        match std::str::from_utf8(rest).ok().and_then(|s| s.parse::<u32>().ok()).filter(|&pid| pid > 1) {
            Some(pid) => {
                self.pid.send_replace(Some(pid));
                true
            }
            None => false,
        }
    }

    /// The line the remote shell prints for `pid`.
    #[cfg(test)]
    pub(super) fn line_for(&self, pid: &str) -> String {
        format!("{}{pid}", self.prefix)
    }

    pub(super) fn pid(&self) -> Option<u32> {
        *self.pid.borrow()
    }

    /// The pid once it arrives, waiting at most `limit`.
    pub(super) async fn wait(&self, limit: Duration) -> Option<u32> {
        let mut rx = self.pid.subscribe();
        let got = tokio::time::timeout(limit, rx.wait_for(Option::is_some)).await;
        got.ok().and_then(|r| r.ok().and_then(|p| *p))
    }
}

/// The remote script that ends process group `pgid`: `TERM`, up to two seconds for it to go,
/// then `KILL`. Plain `kill -SIG -N` (no `--`), which bash, dash and busybox's sh all take.
fn kill_script(pgid: u32) -> String {
    format!(
        "kill -TERM -{pgid} 2>/dev/null || exit 0; i=0; \
         while [ $i -lt {GRACE_TENTHS} ] && kill -0 -{pgid} 2>/dev/null; do sleep 0.1 || break; i=$((i+1)); done; \
         kill -KILL -{pgid} 2>/dev/null; exit 0"
    )
}

/// Ends process group `pgid` on `h`, through its master's socket when there is one (`master`),
/// else over a connection of its own. Never waits past [`KILL_LIMIT`]; what went wrong is
/// returned for the server's log, since the command's own error (cancelled, timed out) stands.
pub(super) async fn kill_remote_group(h: &SshHost, master: Option<PathBuf>, pgid: u32) -> Result<(), String> {
    let mut c = ssh_to(h, master.as_deref());
    c.arg(kill_script(pgid));
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).kill_on_drop(true);
    let child = c.spawn().map_err(|e| format!("could not start ssh: {e}"))?;
    match tokio::time::timeout(KILL_LIMIT, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => Err(String::from_utf8_lossy(&out.stderr).trim().to_owned()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", KILL_LIMIT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_marker_line_gives_the_pid_once_and_nothing_else_passes_for_it() {
        let m = PidMarker::new();
        let line = |pid: &str| m.line_for(pid).into_bytes();
        assert!(!m.take(b"Welcome to the host"), "an ordinary line");
        assert!(!m.take(&line("1")), "pid 1 would make `kill -1` reach every process");
        assert!(!m.take(&line("0")));
        assert!(!m.take(&line("12a")));
        assert!(!m.take(&line("")));
        assert!(!m.take(&PidMarker::new().shell_prefix().into_bytes()), "another command's marker");
        assert_eq!(m.pid(), None);
        assert!(m.take(&line("4711\r")));
        assert_eq!(m.pid(), Some(4711));
        assert!(!m.take(&line("4712")), "a second marker line is the command's output, not ours");
        assert_eq!(m.pid(), Some(4711));
    }

    #[tokio::test]
    async fn a_shell_runs_the_prefix_and_its_pid_is_what_the_marker_reports() {
        let m = PidMarker::new();
        let out = tokio::process::Command::new("sh")
            .args(["-c", &format!("{}exec sh -c 'echo $$'", m.shell_prefix())])
            .output()
            .await
            .unwrap();
        let first = String::from_utf8(out.stderr).unwrap();
        assert!(m.take(first.lines().next().unwrap().as_bytes()), "{first:?}");
        // `exec` keeps the shell's pid for the command: the pid reported is the command's.
        assert_eq!(m.pid().map(|p| p.to_string()), Some(String::from_utf8(out.stdout).unwrap().trim().to_owned()));
        assert_eq!(m.wait(Duration::from_millis(10)).await, m.pid());
    }

    #[tokio::test]
    async fn waiting_for_a_pid_that_never_comes_ends_at_the_limit() {
        let started = std::time::Instant::now();
        assert_eq!(PidMarker::new().wait(Duration::from_millis(200)).await, None);
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    /// Whether `pid` runs (a zombie, waiting for its parent to reap it, does not).
    fn runs(pid: &str) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .is_ok_and(|stat| stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()) != Some("Z"))
    }

    #[tokio::test]
    async fn the_kill_script_ends_the_whole_group_in_a_posix_shell() {
        // A group of its own, as sshd makes one: a shell with a child.
        let mut leader = tokio::process::Command::new("setsid")
            .args(["sh", "-c", "sleep 300 & echo $!; wait"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let pgid = leader.id().unwrap();
        let mut out = tokio::io::BufReader::new(leader.stdout.take().unwrap());
        let mut child = String::new();
        tokio::io::AsyncBufReadExt::read_line(&mut out, &mut child).await.unwrap();
        let child = child.trim().to_owned();
        assert!(runs(&child));
        let (kill, _) =
            tokio::join!(tokio::process::Command::new("sh").args(["-c", &kill_script(pgid)]).output(), leader.wait());
        assert!(kill.unwrap().status.success());
        assert!(!runs(&child), "the leader's child {child} outlived the kill of group {pgid}");
    }
}
