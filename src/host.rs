//! Runs an argv on a host — a local process or a command over OpenSSH — with a timeout and a
//! cancellation token; on either, the command's whole process group is killed. Every line of
//! output is redacted, then handed to a [`LogSink`] as it arrives.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::Command;
use tokio_util::sync::CancellationToken;

use crate::config::{HostSpec, SshHost};

/// Which stream a log line came from; `Info` lines are kua-deploy's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
    Info,
}

impl Stream {
    pub fn as_str(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
            Stream::Info => "info",
        }
    }
}

/// Receives every line a command prints, already redacted.
pub trait LogSink: Send + Sync {
    fn line(&self, stream: Stream, text: &str);
}

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
}

impl Redactor {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Self {
        // Short values would redact half of every line; a secret that short is not worth hiding.
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.len() >= 4).collect();
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        Self { secrets, secret_env: Vec::new(), child_guard: None }
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

    pub fn redactor(&self) -> &Redactor {
        &self.redactor
    }

    /// Runs `cmd` to completion, or kills its process group on timeout or cancel.
    pub async fn run(&self, cmd: &Cmd, cancel: &CancellationToken, sink: &dyn LogSink) -> Result<Output, RunError> {
        let program = cmd.argv.first().cloned().unwrap_or_default();
        let mut command = match &*self.kind {
            HostSpec::Local => {
                if let Some(dir) = cmd.cwd.as_ref().filter(|d| !d.is_dir()) {
                    return Err(RunError::NoWorkDir { program, dir: dir.clone() });
                }
                let mut c = Command::new(&program);
                c.args(&cmd.argv[1..]);
                if let Some(dir) = &cmd.cwd {
                    c.current_dir(dir);
                }
                for (k, v) in &cmd.env {
                    c.env(k, v);
                }
                c
            }
            HostSpec::Ssh(h) => ssh_command(h, cmd),
        };
        // Quick queries (ps, inspect, rev-parse) end on their own soon enough; PDEATHSIG
        // takes them. Anything that may run long gets the guard.
        if let Some(guard) = self.redactor.child_guard.as_ref().filter(|_| cmd.timeout > GUARD_AFTER) {
            command = guarded(guard, command);
        }
        command
            .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
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

        if let (Some(input), Some(mut stdin)) = (cmd.stdin.clone(), child.stdin.take()) {
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
                let _ = stdin.shutdown().await;
            });
        }
        let out = child.stdout.take().expect("piped stdout");
        let err = child.stderr.take().expect("piped stderr");
        let collect = async {
            let (o, e) = tokio::join!(
                pump(out, Stream::Stdout, sink, &self.redactor),
                pump(err, Stream::Stderr, sink, &self.redactor)
            );
            let status = child.wait().await;
            (o, e, status)
        };

        tokio::select! {
            (stdout, stderr, status) = collect => {
                let code = status.ok().and_then(|s| s.code());
                let out = Output { code, stdout, stderr };
                match &*self.kind {
                    // 255 is also what ssh passes on from a remote command that exits 255; its
                    // own failures are the ones it explains on stderr.
                    HostSpec::Ssh(h) if code == Some(255) && is_ssh_failure(&out.stderr) => {
                        Err(RunError::Unreachable { host: h.name.clone(), detail: out.last_line() })
                    }
                    _ => Ok(out),
                }
            }
            _ = tokio::time::sleep(cmd.timeout) => {
                kill_group(pgid);
                Err(RunError::TimedOut { program, after: cmd.timeout })
            }
            _ = cancel.cancelled() => {
                kill_group(pgid);
                Err(RunError::Cancelled { program })
            }
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

/// Commands allowed to run longer than this run behind the child guard.
const GUARD_AFTER: Duration = Duration::from_secs(60);

/// The argument that makes the kua-deploy binary a child guard instead of anything else.
pub const CHILD_GUARD: &str = "__kua-child-guard";

/// `command` run behind the child guard: `<exe> __kua-child-guard <server pid> <program> <args…>`,
/// with the same directory and environment.
fn guarded(exe: &std::path::Path, command: Command) -> Command {
    let std = command.as_std();
    let mut c = Command::new(exe);
    c.arg(CHILD_GUARD).arg(std::process::id().to_string()).arg(std.get_program()).args(std.get_args());
    if let Some(dir) = std.get_current_dir() {
        c.current_dir(dir);
    }
    for (k, v) in std.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    c
}

extern "C" fn kill_own_group(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; 0 is this process's own group.
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// The child guard: stands between the server and one command, in the command's process group.
/// A killed server (SIGKILL runs no handler) takes only its direct children with it
/// (PR_SET_PDEATHSIG); `docker compose` is a grandchild (the CLI starts the plugin), which would
/// build on alone. The guard is told of its parent's death with SIGTERM and kills its whole group.
/// Returns the command's exit status (128 + the signal that ended it).
pub fn child_guard_main(argv: &[std::ffi::OsString]) -> i32 {
    let [server, program, args @ ..] = argv else { return 2 };
    let server: libc::pid_t = server.to_str().and_then(|s| s.parse().ok()).unwrap_or(0);
    // SAFETY: plain libc calls on this process; the handler only calls kill.
    unsafe {
        libc::signal(libc::SIGTERM, kill_own_group as *const () as libc::sighandler_t);
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
        // The server died before prctl took effect: nobody is left to read the output.
        if libc::getppid() != server {
            return 137;
        }
    }
    let status = std::process::Command::new(program).args(args).status();
    match status {
        Ok(s) => {
            use std::os::unix::process::ExitStatusExt;
            s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))
        }
        Err(e) => {
            eprintln!("could not start {}: {e}", program.to_string_lossy());
            127
        }
    }
}

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

    /// Waits until the process has ended, at most `limit`; whether it did.
    pub async fn wait_gone(&self, limit: Duration) -> bool {
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
    pub fn spawn_detached(&self, cmd: &Cmd, output: &std::path::Path) -> Result<Detached, RunError> {
        let program = cmd.argv.first().cloned().unwrap_or_default();
        let mut command = match &*self.kind {
            HostSpec::Local => {
                if let Some(dir) = cmd.cwd.as_ref().filter(|d| !d.is_dir()) {
                    return Err(RunError::NoWorkDir { program, dir: dir.clone() });
                }
                let mut c = Command::new(&program);
                c.args(&cmd.argv[1..]);
                if let Some(dir) = &cmd.cwd {
                    c.current_dir(dir);
                }
                for (k, v) in &cmd.env {
                    c.env(k, v);
                }
                c
            }
            HostSpec::Ssh(h) => ssh_command(h, cmd),
        };
        let spawn_err = |source| RunError::Spawn { program: program.clone(), source };
        if let Some(dir) = output.parent() {
            std::fs::create_dir_all(dir).map_err(spawn_err)?;
        }
        let file = std::fs::OpenOptions::new().create(true).append(true).open(output).map_err(spawn_err)?;
        let file2 = file.try_clone().map_err(spawn_err)?;
        command.stdin(Stdio::null()).stdout(file).stderr(file2).kill_on_drop(false);
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
        let child = command.spawn().map_err(spawn_err)?;
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

/// Reads what a detached command appended to its output file since the last call, line by line
/// as [`pump`] does (bounded, long lines cut and marked).
struct FileFollower {
    path: PathBuf,
    offset: u64,
    held: Vec<u8>,
    /// The current line's length so far, held or not.
    line_len: usize,
    kept: String,
}

impl FileFollower {
    fn new(path: &std::path::Path) -> Self {
        Self { path: path.to_owned(), offset: 0, held: Vec::new(), line_len: 0, kept: String::new() }
    }

    fn pump(&mut self, redactor: &Redactor, sink: &dyn LogSink) {
        use std::io::{Read, Seek, SeekFrom};
        let Ok(mut f) = std::fs::File::open(&self.path) else { return };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return;
        }
        let mut buf = vec![0u8; READ_CHUNK];
        loop {
            let n = match f.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            self.offset += n as u64;
            for part in buf[..n].split_inclusive(|&b| b == b'\n') {
                let (text, ends) = match part.strip_suffix(b"\n") {
                    Some(t) => (t, true),
                    None => (part, false),
                };
                let room = HOLD_LINE_BYTES.saturating_sub(self.held.len());
                self.held.extend_from_slice(&text[..text.len().min(room)]);
                self.line_len += text.len();
                if ends {
                    self.emit(redactor, sink);
                }
            }
        }
    }

    fn finish(&mut self, redactor: &Redactor, sink: &dyn LogSink) {
        if self.line_len > 0 {
            self.emit(redactor, sink);
        }
    }

    fn emit(&mut self, redactor: &Redactor, sink: &dyn LogSink) {
        emit_line(&self.held, self.line_len, Stream::Stderr, sink, redactor, &mut self.kept);
        self.held.clear();
        self.line_len = 0;
    }
}

async fn pump<R: AsyncRead + Unpin>(reader: R, stream: Stream, sink: &dyn LogSink, redactor: &Redactor) -> String {
    // Reads the stream in chunks of `READ_CHUNK`, never a whole line at once, so memory stays
    // bounded whatever a line's length: each line reaches the sink redacted, one longer than
    // `SINK_LINE_BYTES` cut and saying how many bytes were dropped. Returns the redacted text, at
    // most `KEEP_BYTES` of it, for callers that parse it.
    let mut kept = String::new();
    let mut reader = BufReader::with_capacity(READ_CHUNK, reader);
    let mut held: Vec<u8> = Vec::new();
    // The current line's length so far, held or not.
    let mut line_len = 0usize;
    loop {
        let chunk = match reader.fill_buf().await {
            Ok([]) | Err(_) => break,
            Ok(chunk) => chunk,
        };
        let (part, ends) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..i], true),
            None => (chunk, false),
        };
        let room = HOLD_LINE_BYTES.saturating_sub(held.len());
        held.extend_from_slice(&part[..part.len().min(room)]);
        line_len += part.len();
        let used = part.len() + usize::from(ends);
        reader.consume(used);
        if ends {
            emit_line(&held, line_len, stream, sink, redactor, &mut kept);
            held.clear();
            line_len = 0;
        }
    }
    // The last line, when the output does not end with a newline.
    if line_len > 0 {
        emit_line(&held, line_len, stream, sink, redactor, &mut kept);
    }
    kept
}

/// Bytes of one output line that reach the sink; the rest of a longer line is counted and
/// dropped as it is read. Below the store's 4,000-character cut, so the cut marker survives it.
const SINK_LINE_BYTES: usize = 3_900;
/// Bytes of one line held while it is read: a line up to this size (one long JSON document that
/// a caller parses) is still returned whole; past it, the rest is counted, never held.
const HOLD_LINE_BYTES: usize = KEEP_BYTES;
/// One read from the pipe; with the held line, all the memory a stream costs.
const READ_CHUNK: usize = 64 * 1024;

/// One line of [`pump`]: `held` is its start, `line_len` its whole length.
fn emit_line(held: &[u8], line_len: usize, stream: Stream, sink: &dyn LogSink, redactor: &Redactor, kept: &mut String) {
    let overflowed = line_len > held.len();
    let bytes = if overflowed { without_partial_char(held) } else { held };
    let mut line = redactor.redact(String::from_utf8_lossy(bytes).trim_end_matches(['\n', '\r']));
    if overflowed {
        drop_partial_secret(&mut line, redactor);
    }
    if line.len() <= SINK_LINE_BYTES && !overflowed {
        sink.line(stream, &line);
    } else {
        let cut = line.floor_char_boundary(SINK_LINE_BYTES);
        let dropped = (line.len() - cut) + (line_len - bytes.len());
        sink.line(stream, &format!("{}… [line cut: {dropped} more bytes dropped]", &line[..cut]));
    }
    if kept.len() < KEEP_BYTES {
        let take = line.floor_char_boundary(KEEP_BYTES - kept.len() - 1);
        kept.push_str(&line[..take]);
        kept.push('\n');
    }
}

/// `b` without a UTF-8 sequence cut off at its end (the rest of it was not held).
fn without_partial_char(b: &[u8]) -> &[u8] {
    let last_start = (b.len().saturating_sub(4)..b.len()).rev().find(|&i| b[i] & 0xC0 != 0x80);
    match last_start {
        Some(i) if std::str::from_utf8(&b[i..]).is_err_and(|e| e.error_len().is_none()) => &b[..i],
        _ => b,
    }
}

/// A line cut while being read may end with the start of a secret whose rest was never held, so
/// redaction could not see it: that start goes too.
fn drop_partial_secret(line: &mut String, redactor: &Redactor) {
    while let Some(k) = redactor
        .secrets
        .iter()
        .find_map(|s| (1..s.len()).rev().find(|&k| s.is_char_boundary(k) && line.ends_with(&s[..k])))
    {
        line.truncate(line.len() - k);
    }
}

#[cfg(test)]
mod pump_tests {
    use super::*;
    use std::sync::Mutex;

    /// Keeps every line it gets.
    #[derive(Default)]
    struct Lines(Mutex<Vec<String>>);
    impl LogSink for Lines {
        fn line(&self, _: Stream, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[test]
    fn a_followed_file_hands_on_lines_cut_marked_and_redacted_as_they_grow() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.log");
        let redactor = Redactor::new(["s3cr3t-value".to_owned()]);
        let sink = Lines::default();
        let mut follow = FileFollower::new(&path);
        std::fs::write(&path, "first s3cr3t-value\nsec").unwrap();
        follow.pump(&redactor, &sink);
        assert_eq!(sink.0.lock().unwrap().clone(), ["first [REDACTED]"], "a partial line waits for its end");
        let long = "x".repeat(1_000_000);
        std::fs::write(&path, format!("first s3cr3t-value\nsecond\n{long}\nlast")).unwrap();
        follow.pump(&redactor, &sink);
        follow.finish(&redactor, &sink);
        let lines = sink.0.lock().unwrap().clone();
        assert_eq!(lines[1], "second");
        assert!(lines[2].len() < 4_000 && lines[2].ends_with("more bytes dropped]"), "{}", &lines[2][3_800..]);
        assert_eq!(lines[3], "last");
        assert!(follow.kept.len() <= KEEP_BYTES);
    }
    impl Lines {
        fn all(&self) -> Vec<String> {
            self.0.lock().unwrap().clone()
        }
    }

    fn peak_rss_kib() -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/self/status");
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    async fn pump_bytes(data: &[u8], redactor: &Redactor) -> (Vec<String>, String) {
        let sink = Lines::default();
        let kept = pump(data, Stream::Stdout, &sink, redactor).await;
        (sink.all(), kept)
    }

    #[tokio::test]
    async fn a_50_mb_line_without_newline_reaches_the_sink_cut_and_marked_and_is_never_held() {
        const LEN: usize = 50_000_000;
        let sink = Lines::default();
        let before = peak_rss_kib();
        let script = format!("head -c {LEN} /dev/zero | tr '\\0' x; echo ' end'; echo after; printf last");
        let out = Host::local().run(&Cmd::new(["sh", "-c", &script]), &CancellationToken::new(), &sink).await.unwrap();
        let grown_mib = (peak_rss_kib() - before) / 1024;
        assert!(out.success());
        let lines = sink.all();
        assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
        let dropped = LEN + " end".len() - SINK_LINE_BYTES;
        assert_eq!(lines[0], format!("{}… [line cut: {dropped} more bytes dropped]", "x".repeat(SINK_LINE_BYTES)));
        assert_eq!(lines[1..], ["after", "last"]);
        assert!(out.stdout.len() <= KEEP_BYTES, "{}", out.stdout.len());
        assert!(out.stdout.starts_with("xxxx"));
        // Holding the line, as whole-line reads do, would take at least its 50 MB.
        assert!(grown_mib < 40, "the test process grew by {grown_mib} MiB while reading a 50 MB line");
    }

    #[tokio::test]
    async fn ordinary_output_reaches_the_sink_and_the_caller_line_by_line_as_printed() {
        let (lines, kept) = pump_bytes(b"one\r\n\ntwo  \nthree", &Redactor::default()).await;
        assert_eq!(lines, ["one", "", "two  ", "three"]);
        assert_eq!(kept, "one\n\ntwo  \nthree\n");
        let (lines, kept) = pump_bytes(b"", &Redactor::default()).await;
        assert!(lines.is_empty());
        assert_eq!(kept, "");
    }

    #[tokio::test]
    async fn a_line_of_some_kilobytes_is_cut_for_the_log_but_returned_whole_to_the_caller() {
        // One JSON document on one line, as `docker inspect --format '{{json .}}'` prints.
        let doc = format!("{{\"k\": \"{}\"}}", "v".repeat(100_000));
        let (lines, kept) = pump_bytes(format!("{doc}\nnext\n").as_bytes(), &Redactor::default()).await;
        assert_eq!(lines.len(), 2);
        assert!(lines[0].starts_with("{\"k\": \"vvv"));
        assert!(lines[0].ends_with(&format!("… [line cut: {} more bytes dropped]", doc.len() - SINK_LINE_BYTES)));
        assert_eq!(lines[1], "next");
        assert_eq!(kept, format!("{doc}\nnext\n"));
    }

    #[tokio::test]
    async fn the_text_returned_stays_within_its_bound_whatever_the_lines() {
        let mut data = Vec::new();
        for _ in 0..100 {
            data.extend_from_slice(&[b'a'; 10_000]);
            data.push(b'\n');
        }
        data.extend_from_slice(&vec![b'b'; 3 * KEEP_BYTES]);
        let (lines, kept) = pump_bytes(&data, &Redactor::default()).await;
        assert_eq!(lines.len(), 101);
        assert!(lines.iter().all(|l| l.len() < 4_000));
        assert!(kept.len() <= KEEP_BYTES, "{}", kept.len());
        assert!(kept.starts_with(&format!("{}\n", "a".repeat(10_000))));
    }

    #[tokio::test]
    async fn cuts_fall_between_characters_never_inside_one() {
        let wide = "é".repeat(3_000);
        let huge = "€".repeat(HOLD_LINE_BYTES);
        let (lines, kept) = pump_bytes(format!("{wide}\n{huge}\n").as_bytes(), &Redactor::default()).await;
        assert!(lines[0].starts_with("ééé") && lines[0].contains("line cut"));
        assert!(!lines.concat().contains('\u{FFFD}'));
        assert!(!kept.contains('\u{FFFD}'), "a character was cut in two in the kept text");
    }

    #[tokio::test]
    async fn a_secret_is_redacted_wherever_the_cut_falls_and_never_shown_in_part() {
        let r = Redactor::new(["hunter22-secret".to_owned()]);
        // Across the log's cut: redacted before cutting.
        let near_log_cut = format!("{}hunter22-secret{}", "x".repeat(SINK_LINE_BYTES - 4), "y".repeat(100));
        // Across the end of what is held: its start is dropped, since its end was never read.
        let near_hold_end = format!("{}hunter22-secret{}", "x".repeat(HOLD_LINE_BYTES - 6), "y".repeat(100));
        let (lines, kept) = pump_bytes(format!("{near_log_cut}\n").as_bytes(), &r).await;
        assert!(lines[0].starts_with(&format!("{}[RED", "x".repeat(SINK_LINE_BYTES - 4))), "{}", lines[0]);
        assert!(kept.contains("[REDACTED]") && !kept.contains("hunter"));
        let (lines, kept) = pump_bytes(format!("{near_hold_end}\n").as_bytes(), &r).await;
        assert!(lines[0].contains("line cut") && !lines[0].contains("hunter"));
        assert_eq!(kept, format!("{}\n", "x".repeat(HOLD_LINE_BYTES - 6)));
    }
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

/// The remote side of OpenSSH always goes through a shell, so the argv is quoted word by word.
fn ssh_command(h: &SshHost, cmd: &Cmd) -> Command {
    let mut c = Command::new("ssh");
    c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]);
    // One connection per command, owned by this process: a shared master from the user's config
    // would outlive kua-deploy and escape its kill.
    c.args(["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
    c.args(["-p", &h.port.to_string()]);
    if let Some(id) = &h.identity_file {
        c.arg("-i").arg(id);
        c.args(["-o", "IdentitiesOnly=yes"]);
    }
    if let Some(kh) = &h.known_hosts_file {
        // Only this file vouches for the host: not the machine-wide known hosts too.
        c.arg("-o").arg(format!("UserKnownHostsFile={}", kh.display()));
        c.args(["-o", "GlobalKnownHostsFile=/dev/null"]);
    }
    c.arg("--").arg(format!("{}@{}", h.user, h.host));
    c.arg(remote_command(cmd));
    c
}

fn is_ssh_failure(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.starts_with("ssh:")
            || l.contains("Host key verification failed")
            || l.contains("Permission denied (")
            || l.contains("Connection closed by")
            || l.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    })
}

/// The one string OpenSSH hands to the remote shell: `cd DIR && exec env K=V argv…`, every word
/// quoted, so the argv arrives as it was.
fn remote_command(cmd: &Cmd) -> String {
    let mut remote = String::new();
    if let Some(dir) = &cmd.cwd {
        remote.push_str(&format!("cd {} && ", shell_quote(&dir.to_string_lossy())));
    }
    remote.push_str("exec ");
    if !cmd.env.is_empty() {
        remote.push_str("env ");
        for (k, v) in &cmd.env {
            remote.push_str(&shell_quote(&format!("{k}={v}")));
            remote.push(' ');
        }
    }
    remote.push_str(&cmd.display());
    remote
}

/// Single-quotes a word for a POSIX shell unless it is plainly safe.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./:=@,+%".contains(&b)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Collect(Mutex<Vec<String>>);
    impl LogSink for Collect {
        fn line(&self, _: Stream, text: &str) {
            self.0.lock().unwrap().push(text.to_owned());
        }
    }

    #[test]
    fn quoting_keeps_hostile_words_as_one_argument() {
        assert_eq!(shell_quote("main"), "main");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$(rm -rf /)"), "'$(rm -rf /)'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_remote_command_changes_directory_sets_the_environment_and_quotes_every_word() {
        let cmd = Cmd::new(["git", "log", "--format=%H x"]).cwd("/srv/my app").env("LC_ALL", "C");
        assert_eq!(remote_command(&cmd), "cd '/srv/my app' && exec env LC_ALL=C git log '--format=%H x'");
        assert_eq!(remote_command(&Cmd::new(["docker", "ps"])), "exec docker ps");
    }

    #[tokio::test]
    async fn the_remote_command_runs_in_a_real_shell_as_the_same_argv() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Cmd::new(["sh", "-c", "printf '%s|' \"$PWD\" \"$KV\" \"$0\"", "it's $(here)"])
            .cwd(dir.path())
            .env("KV", "a b");
        let out = Host::local().query(&Cmd::new(["sh", "-c", &remote_command(&cmd)])).await.unwrap();
        let pwd = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(out.stdout.trim_end(), format!("{}|a b|it's $(here)|", pwd.display()));
    }

    #[test]
    fn only_ssh_s_own_complaints_count_as_an_unreachable_host() {
        assert!(is_ssh_failure("Host key verification failed.\r\n"));
        assert!(is_ssh_failure("ssh: connect to host 127.0.0.1 port 2: Connection refused"));
        assert!(is_ssh_failure("root@h: Permission denied (publickey)."));
        assert!(!is_ssh_failure("migration 0042 failed"));
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
