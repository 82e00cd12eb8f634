//! Runs an argv on a host — a local process or a command over OpenSSH — with a timeout and a
//! cancellation token; on either, the command's whole process group is killed (over OpenSSH, the
//! one on the host too). Every line of output is redacted, then handed to a [`LogSink`] as it
//! arrives.
//!
//! Below every other module but `model`: it knows nothing of the registry, the store or the
//! pipeline. [`HostSpec`] says where commands run; `ssh` builds the OpenSSH command line,
//! `remote_stop` ends a stopped command's process group on its host, `guard` the child guard,
//! `detached` the commands that outlive the server, `pump` the bounded reading of their output.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

mod detached;
mod guard;
mod mux;
mod pump;
mod remote_stop;
mod ssh;

pub use detached::{replay_output, Detached, ProcessRef};
pub use guard::{child_guard_main, CHILD_GUARD};
pub use mux::SshPool;
pub use ssh::{shell_quote, SshHost};

pub use crate::model::{LogSink, Stream};

use guard::{guarded, GUARD_AFTER};
use pump::pump;
use remote_stop::{kill_remote_group, PidMarker, PID_WAIT};
use ssh::{is_ssh_failure, ssh_command};

/// A sink that drops everything, for commands whose output only matters to the caller.
pub struct NoLog;

impl LogSink for NoLog {
    fn line(&self, _: Stream, _: &str) {}
}

/// What every command the server runs is subject to: every known secret replaced with
/// `[REDACTED]` in its output, secret variables kept out of its environment, and (in the server)
/// a guard that kills it if the server dies.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Vec<String>,
    /// Environment variables holding secrets: removed from every command's environment, since
    /// Compose hands the environment to `${VAR}` in an app's files, which anyone who can push to
    /// that app controls.
    secret_env: Vec<String>,
    /// The kua-deploy binary, run as [`CHILD_GUARD`] in front of each command.
    child_guard: Option<PathBuf>,
    /// The server's OpenSSH masters, one per host; without it every ssh command connects anew.
    ssh_pool: Option<Arc<SshPool>>,
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        // Short values would redact half of every line; a secret that short is not worth hiding.
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets, secret_env: Vec::new(), child_guard: None, ssh_pool: None }
    }

    /// Also replaces these values (a vault's, fetched during a deploy).
    pub fn with_secrets(&self, values: impl IntoIterator<Item = String>) -> Self {
        let mut all = self.secrets.clone();
        all.extend(values.into_iter().filter(|s| s.len() >= 4));
        all.sort_by_key(|s| std::cmp::Reverse(s.len()));
        all.dedup();
        Self { secrets: all, ..self.clone() }
    }

    /// Also keeps these environment variables away from the commands run.
    pub fn with_secret_env(mut self, names: impl IntoIterator<Item = String>) -> Self {
        self.secret_env.extend(names);
        self
    }

    /// Runs every command behind `exe`'s child guard (see [`child_guard_main`]).
    pub fn with_child_guard(mut self, exe: PathBuf) -> Self {
        self.child_guard = Some(exe);
        self
    }

    /// Runs commands over OpenSSH through `pool`'s masters: one connection per host.
    pub fn with_ssh_pool(mut self, pool: Arc<SshPool>) -> Self {
        self.ssh_pool = Some(pool);
        self
    }

    pub fn redact(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "[REDACTED]");
            }
        }
        out
    }
}

/// One command to run: an argv, never a shell string.
#[derive(Debug, Clone)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub cwd: Option<PathBuf>,
    pub stdin: Option<Vec<u8>>,
    pub timeout: Duration,
    pub env: Vec<(String, String)>,
    /// Environment that must never show in an argv (a vault's values): set in the process's
    /// environment locally; over OpenSSH sent on stdin and sourced by the remote shell, since
    /// `env K=V` would put it in both the ssh and the remote command line.
    pub secret_env: Vec<(String, String)>,
}

impl Cmd {
    pub fn new<I, S>(argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            argv: argv.into_iter().map(Into::into).collect(),
            cwd: None,
            stdin: None,
            timeout: Duration::from_secs(60),
            env: Vec::new(),
            secret_env: Vec::new(),
        }
    }
    pub fn cwd(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cwd = Some(dir.into());
        self
    }
    pub fn stdin(mut self, input: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(input.into());
        self
    }
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_owned(), v.to_owned()));
        self
    }
    /// Adds environment that must stay out of every argv (see [`Cmd::secret_env`]).
    pub fn secret_env(mut self, vars: &[(String, String)]) -> Self {
        self.secret_env.extend(vars.iter().cloned());
        self
    }
    /// The argv as one line for logs; quoting only where needed for a reader to copy it.
    pub fn display(&self) -> String {
        self.argv.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
    }
}

/// What a finished command left behind.
#[derive(Debug, Clone)]
pub struct Output {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
    /// The last non-empty stderr line (or stdout's), for a one-line step detail.
    pub fn last_line(&self) -> String {
        self.stderr
            .lines()
            .chain(self.stdout.lines())
            .rfind(|l| !l.trim().is_empty())
            .map(|l| l.trim().chars().take(300).collect())
            .unwrap_or_default()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("could not start {program}: {source}")]
    Spawn { program: String, source: std::io::Error },
    #[error("cannot run {program} in {}: the directory does not exist", dir.display())]
    NoWorkDir { program: String, dir: PathBuf },
    #[error("{program} timed out after {}s and was killed", after.as_secs())]
    TimedOut { program: String, after: Duration },
    #[error("{program} was cancelled and killed")]
    Cancelled { program: String },
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    /// OpenSSH itself failed (exit 255): no connection, or a host key that is not the known one.
    #[error("cannot reach host {host} over ssh: {detail}")]
    Unreachable { host: String, detail: String },
}

/// Where an app's commands run: this machine, or a host over OpenSSH. The registry produces it;
/// nothing here knows the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostSpec {
    Local,
    Ssh(SshHost),
}

impl HostSpec {
    /// How logs and answers name the host: `local`, or the `hosts` key (or URL) it came from.
    pub fn label(&self) -> String {
        match self {
            HostSpec::Local => "local".to_owned(),
            HostSpec::Ssh(h) => h.name.clone(),
        }
    }
}

/// Where commands run. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Host {
    kind: Arc<HostSpec>,
    redactor: Redactor,
}

/// Output kept in memory per stream; the full text goes to the sink.
const KEEP_BYTES: usize = 256 * 1024;

impl Host {
    pub fn new(spec: HostSpec, redactor: Redactor) -> Self {
        Self { kind: Arc::new(spec), redactor }
    }

    pub fn local() -> Self {
        Self::new(HostSpec::Local, Redactor::default())
    }

    pub fn label(&self) -> String {
        self.kind.label()
    }

    /// The same host, its commands' output also redacted of `values`.
    pub fn with_secrets(&self, values: impl IntoIterator<Item = String>) -> Host {
        Host { redactor: self.redactor.with_secrets(values), ..self.clone() }
    }

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// The process that runs `cmd` here: the argv itself, or `ssh` running it on the host (whose
    /// shell first reports its pid behind `marker`, when given); with the command's program name,
    /// for errors.
    async fn command(&self, cmd: &Cmd, marker: Option<&PidMarker>) -> Result<(Command, String), RunError> {
        let program = cmd.argv.first().cloned().unwrap_or_default();
        let command = match &*self.kind {
            HostSpec::Local => {
                if let Some(dir) = cmd.cwd.as_ref().filter(|d| !d.is_dir()) {
                    return Err(RunError::NoWorkDir { program, dir: dir.clone() });
                }
                let mut c = Command::new(&program);
                c.args(&cmd.argv[1..]);
                if let Some(dir) = &cmd.cwd {
                    c.current_dir(dir);
                }
                for (k, v) in cmd.env.iter().chain(&cmd.secret_env) {
                    c.env(k, v);
                }
                c
            }
            HostSpec::Ssh(h) => match &self.redactor.ssh_pool {
                Some(pool) => ssh_command(h, cmd, Some(&pool.socket(h).await?), marker),
                None => ssh_command(h, cmd, None, marker),
            },
        };
        Ok((command, program))
    }

    /// What `cmd` reads on stdin: its own input, or, over OpenSSH with secret environment, the
    /// `export` lines the remote shell sources (the two do not mix: the shell reads stdin to its end).
    pub(crate) fn stdin_of(&self, cmd: &Cmd) -> Option<Vec<u8>> {
        match &*self.kind {
            HostSpec::Ssh(_) if !cmd.secret_env.is_empty() => {
                debug_assert!(cmd.stdin.is_none(), "secret environment over ssh takes the command's stdin");
                Some(ssh::export_lines(&cmd.secret_env).into_bytes())
            }
            _ => cmd.stdin.clone(),
        }
    }

    /// Whether `h`'s master still runs (true without a pool: nothing to tell then).
    fn master_alive(&self, h: &SshHost) -> bool {
        self.redactor.ssh_pool.as_ref().is_none_or(|pool| pool.alive(h))
    }

    /// Runs `cmd` to completion, or kills its process group on timeout or cancel; over OpenSSH,
    /// the command's process group on the host too (see `remote_stop`).
    pub async fn run(&self, cmd: &Cmd, cancel: &CancellationToken, sink: &dyn LogSink) -> Result<Output, RunError> {
        let marker = matches!(*self.kind, HostSpec::Ssh(_)).then(PidMarker::new);
        let (mut command, program) = self.command(cmd, marker.as_ref()).await?;
        // Quick queries (inspect, rev-parse) end on their own soon enough; PDEATHSIG
        // takes them. Anything that may run long gets the guard.
        if let Some(guard) = self.redactor.child_guard.as_ref().filter(|_| cmd.timeout > GUARD_AFTER) {
            command = guarded(guard, command);
        }
        command
            .stdin(if self.stdin_of(cmd).is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // A `git fetch` or a build must not outlive a server killed with SIGKILL (no handler runs
        // then): the kernel kills the command when its parent dies.
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        for name in &self.redactor.secret_env {
            command.env_remove(name);
        }
        let mut child = command.spawn().map_err(|source| RunError::Spawn { program: program.clone(), source })?;
        let pgid = child.id();

        if let (Some(input), Some(mut stdin)) = (self.stdin_of(cmd), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            });
        }
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let collect = async {
            let (o, e) = tokio::join!(
                pump(out, Stream::Stdout, sink, &self.redactor, None),
                pump(err, Stream::Stderr, sink, &self.redactor, marker.as_ref())
            );
            let status = child.wait().await;
            (o, e, status)
        };
        tokio::pin!(collect);

        let stopped = tokio::select! {
            (stdout, stderr, status) = &mut collect => {
                let code = status.ok().and_then(|s| s.code());
                let out = Output { code, stdout, stderr };
                return match &*self.kind {
                    // 255 is also what ssh passes on from a remote command that exits 255; its
                    // own failures are the ones it explains on stderr.
                    // A master that ended under the command (the host went away) leaves no
                    // socket, and its clients exit 255 without a word.
                    HostSpec::Ssh(h) if code == Some(255) && !self.master_alive(h) => {
                        Err(RunError::Unreachable {
                            host: h.name.clone(),
                            detail: format!("the connection was lost while running {program}"),
                        })
                    }
                    HostSpec::Ssh(h) if code == Some(255) && is_ssh_failure(&out.stderr) => {
                        if let Some(pool) = &self.redactor.ssh_pool {
                            pool.forget(h);
                        }
                        Err(RunError::Unreachable { host: h.name.clone(), detail: out.last_line() })
                    }
                    _ => Ok(out),
                };
            }
            _ = tokio::time::sleep(cmd.timeout) => RunError::TimedOut { program, after: cmd.timeout },
            _ = cancel.cancelled() => RunError::Cancelled { program },
        };
        let mut ended = false;
        if let (HostSpec::Ssh(h), Some(marker)) = (&*self.kind, &marker) {
            self.stop_remote(h, marker, collect.as_mut(), &mut ended).await;
        }
        // Once the output is read to its end and the ssh reaped, its pid may be another's.
        if !ended {
            kill_group(pgid);
        }
        Err(stopped)
    }

    /// Ends the process group of a command stopped on `h`, whose shell reported its pid behind
    /// `marker`, while `collect` keeps reading the command's output (it may tell why it stopped);
    /// `ended` turns true if that reading ended meanwhile. Gives up rather than hang: the pid has
    /// [`PID_WAIT`] to arrive, the kill its own limit, and a host whose master is gone is left alone.
    async fn stop_remote<F: std::future::Future>(
        &self,
        h: &SshHost,
        marker: &PidMarker,
        mut collect: std::pin::Pin<&mut F>,
        ended: &mut bool,
    ) {
        let pid = match marker.pid() {
            Some(pid) => Some(pid),
            None => alongside(marker.wait(PID_WAIT), collect.as_mut(), ended).await,
        };
        let Some(pgid) = pid else {
            tracing::warn!(host = %h.name, "a stopped command never reported its remote pid; only the local ssh is killed");
            return;
        };
        let master = match &self.redactor.ssh_pool {
            Some(pool) => match pool.existing(h) {
                Some(socket) => Some(socket),
                None => {
                    tracing::warn!(host = %h.name, pgid, "no connection to the host left to stop the remote process group");
                    return;
                }
            },
            None => None,
        };
        match alongside(kill_remote_group(h, master, pgid), collect, ended).await {
            Ok(()) => tracing::info!(host = %h.name, pgid, "stopped the remote process group"),
            Err(why) => tracing::warn!(host = %h.name, pgid, "could not stop the remote process group: {why}"),
        }
    }

    /// Like [`Host::run`], and a non-zero exit is an error that says `what` failed, with the last
    /// line the command printed.
    pub async fn run_ok(
        &self,
        what: &str,
        cmd: &Cmd,
        cancel: &CancellationToken,
        sink: &dyn LogSink,
    ) -> Result<Output, RunError> {
        let out = self.run(cmd, cancel, sink).await?;
        if out.success() {
            Ok(out)
        } else {
            Err(RunError::Failed { what: what.to_owned(), detail: out.last_line() })
        }
    }

    /// Runs `cmd` and logs nothing but its failure; for quick queries (inspect, rev-parse).
    pub async fn query(&self, cmd: &Cmd) -> Result<Output, RunError> {
        self.run(cmd, &CancellationToken::new(), &NoLog).await
    }
}

/// `work`, while `collect` (unless `ended`) is polled too, so that a command's output keeps being
/// read; `ended` turns true when `collect` finishes first.
async fn alongside<T, F: std::future::Future>(
    work: impl std::future::Future<Output = T>,
    collect: std::pin::Pin<&mut F>,
    ended: &mut bool,
) -> T {
    tokio::pin!(work);
    if !*ended {
        tokio::select! {
            out = &mut work => return out,
            _ = collect => *ended = true,
        }
    }
    work.await
}

fn kill_group(pgid: Option<u32>) {
    if let Some(pid) = pgid {
        // The child leads its own process group (process_group(0)), so -pid reaches every
        // descendant, e.g. the docker CLI plugin that `docker compose` starts.
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waiting_for_a_detached_process_ends_when_it_exits_and_not_before() {
        let dir = tempfile::tempdir().unwrap();
        let quick = Host::local().spawn_detached(&Cmd::new(["sleep", "0.3"]), &dir.path().join("a.log")).await.unwrap();
        let started = std::time::Instant::now();
        assert!(quick.process().wait_gone(Duration::from_secs(10)).await);
        assert!(started.elapsed() < Duration::from_secs(3), "took {:?}", started.elapsed());
        let slow = Host::local().spawn_detached(&Cmd::new(["sleep", "30"]), &dir.path().join("b.log")).await.unwrap();
        assert!(!slow.process().wait_gone(Duration::from_millis(300)).await, "it still runs");
        slow.process().kill_group();
        assert!(slow.process().wait_gone(Duration::from_secs(10)).await);
    }
    use std::sync::Mutex;

    struct Collect(Mutex<Vec<String>>);
    impl LogSink for Collect {
        fn line(&self, _: Stream, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[test]
    fn redaction_hides_every_occurrence_and_ignores_tiny_values() {
        let r = Redactor::new(["hunter22".to_owned(), "ab".to_owned()]);
        assert_eq!(r.redact("pw=hunter22 again hunter22 ab"), "pw=[REDACTED] again [REDACTED] ab");
    }

    #[tokio::test]
    async fn output_lines_reach_the_sink_redacted() {
        let host = Host::new(HostSpec::Local, Redactor::new(["s3cr3t".to_owned()]));
        let sink = Collect(Mutex::new(Vec::new()));
        let out = host
            .run(&Cmd::new(["sh", "-c", "echo token s3cr3t; echo err >&2; exit 3"]), &CancellationToken::new(), &sink)
            .await
            .unwrap();
        assert_eq!(out.code, Some(3));
        assert!(out.stdout.contains("token [REDACTED]"));
        let lines = sink.0.lock().unwrap().clone();
        assert!(lines.contains(&"token [REDACTED]".to_owned()));
        assert!(lines.contains(&"err".to_owned()));
    }

    #[tokio::test]
    async fn secret_environment_variables_do_not_reach_commands() {
        std::env::set_var("KUA_TEST_HOST_SECRET", "do-not-leak");
        let host = Host::new(HostSpec::Local, Redactor::default().with_secret_env(["KUA_TEST_HOST_SECRET".to_owned()]));
        let out = host.query(&Cmd::new(["sh", "-c", "echo \"[$KUA_TEST_HOST_SECRET]\""])).await.unwrap();
        assert_eq!(out.stdout.trim(), "[]");
    }

    #[tokio::test]
    async fn a_timed_out_command_is_killed_with_its_children() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let script = format!("(sleep 2; touch {}) & sleep 30", marker.display());
        let started = std::time::Instant::now();
        let err = Host::local()
            .run(
                &Cmd::new(["sh", "-c", &script]).timeout(Duration::from_millis(300)),
                &CancellationToken::new(),
                &NoLog,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, RunError::TimedOut { .. }), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "a child of the killed command lived on");
    }

    #[tokio::test]
    async fn cancel_kills_a_running_command() {
        let token = CancellationToken::new();
        let t2 = token.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(200)).await;
            t2.cancel();
        });
        let err = Host::local().run(&Cmd::new(["sleep", "30"]), &token, &NoLog).await.unwrap_err();
        assert!(matches!(err, RunError::Cancelled { .. }));
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error_naming_it() {
        let err = Host::local().query(&Cmd::new(["kua-no-such-program"])).await.unwrap_err();
        assert!(err.to_string().contains("kua-no-such-program"));
    }
}
