//! The child guard: the kua-deploy binary run in front of a long command, so that the command's
//! whole process group dies with the server, even one killed with SIGKILL.

use std::time::Duration;

use tokio::process::Command;

/// Commands allowed to run longer than this run behind the child guard.
pub(super) const GUARD_AFTER: Duration = Duration::from_secs(60);

/// The argument that makes the kua-deploy binary a child guard instead of anything else.
pub const CHILD_GUARD: &str = "__kua-child-guard";

/// `command` run behind the child guard: `<exe> __kua-child-guard <server pid> <program> <args…>`,
/// with the same directory and environment.
pub(super) fn guarded(exe: &std::path::Path, command: Command) -> Command {
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
