//! Commands over OpenSSH: through the host's master connection ([`super::mux`]) when there is
//! one, else a connection of their own with the host key checked; the argv quoted word by word
//! for the remote shell; ssh's own failures told apart from the command's.

use std::path::{Path, PathBuf};

use tokio::process::Command;

use super::remote_stop::PidMarker;
use super::Cmd;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SshHost {
    /// The key in the `hosts` map, or the `ssh://` URL as written in the app.
    pub name: String,
    pub user: String,
    /// A host name or IP address; an IPv6 address is kept without its brackets.
    pub host: String,
    pub port: u16,
    pub identity_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
}

/// The remote side of OpenSSH always goes through a shell, so the argv is quoted word by word.
/// With `master`, the command goes through that socket and makes no connection of its own; with
/// `marker`, the remote shell first reports its pid on stderr (see [`super::remote_stop`]).
pub(super) fn ssh_command(h: &SshHost, cmd: &Cmd, master: Option<&Path>, marker: Option<&PidMarker>) -> Command {
    let mut c = ssh_to(h, master);
    c.arg(remote_command(cmd, marker));
    c
}

/// `ssh … -- user@host`, ready for the remote command line.
pub(super) fn ssh_to(h: &SshHost, master: Option<&Path>) -> Command {
    let mut c = Command::new("ssh");
    common_options(&mut c, h);
    match master {
        Some(socket) => {
            c.arg("-o").arg(format!("ControlPath={}", socket.display()));
            c.args(["-o", "ControlMaster=no"]);
        }
        // One connection per command, owned by this process: a shared master from the user's
        // config would outlive kua-deploy and escape its kill.
        None => {
            c.args(["-o", "ControlMaster=no", "-o", "ControlPath=none"]);
        }
    }
    c.arg("--").arg(format!("{}@{}", h.user, h.host));
    c
}

/// What every connection to `h` is made with: no prompts, the host key checked against the host's
/// own known hosts alone, its identity.
pub(super) fn common_options(c: &mut Command, h: &SshHost) {
    c.args(["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes", "-o", "ConnectTimeout=10"]);
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
}

pub(super) fn is_ssh_failure(stderr: &str) -> bool {
    stderr.lines().any(|l| {
        l.starts_with("ssh:")
            || l.contains("Host key verification failed")
            || l.contains("Permission denied (")
            || l.contains("Connection closed by")
            || l.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
            // The master connection went away under the command.
            || l.starts_with("mux_client")
            || l.starts_with("Control socket connect")
    })
}

/// The one string OpenSSH hands to the remote shell: `cd DIR && exec env K=V argv…`, every word
/// quoted, so the argv arrives as it was; with `marker`, after the line that reports the shell's pid.
fn remote_command(cmd: &Cmd, marker: Option<&PidMarker>) -> String {
    let mut remote = marker.map(PidMarker::shell_prefix).unwrap_or_default();
    if let Some(dir) = &cmd.cwd {
        remote.push_str(&format!("cd {} && ", shell_quote(&dir.to_string_lossy())));
    }
    if !cmd.secret_env.is_empty() {
        // The values come on stdin ([`export_lines`]), never in this line.
        remote.push_str(". /dev/stdin && ");
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

/// `export K='v'` lines for the remote shell to source from stdin.
pub(super) fn export_lines(vars: &[(String, String)]) -> String {
    vars.iter().map(|(k, v)| format!("export {k}={}\n", shell_quote(v))).collect()
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
    use crate::host::Host;

    #[test]
    fn secret_environment_goes_on_stdin_and_never_into_the_remote_command_line() {
        let cmd = Cmd::new(["docker", "compose", "up"])
            .cwd("/srv/app")
            .secret_env(&[("DB_PASSWORD".into(), "s3cr'et x".into())]);
        let line = remote_command(&cmd, None);
        assert_eq!(line, "cd /srv/app && . /dev/stdin && exec docker compose up");
        assert!(!line.contains("s3cr"));
        assert_eq!(export_lines(&cmd.secret_env), "export DB_PASSWORD='s3cr'\\''et x'\n");
    }

    #[test]
    fn with_a_master_the_command_goes_through_its_socket_and_never_becomes_a_master_itself() {
        let h = SshHost {
            name: "bruno".into(),
            user: "deploy".into(),
            host: "10.0.0.7".into(),
            port: 2222,
            identity_file: None,
            known_hosts_file: Some("/etc/kua/bruno_known_hosts".into()),
        };
        let args = |m: Option<&Path>| -> Vec<String> {
            let c = ssh_command(&h, &Cmd::new(["docker", "ps"]), m, None);
            c.as_std().get_args().map(|a| a.to_string_lossy().into_owned()).collect()
        };
        let muxed = args(Some(Path::new("/run/kua/ssh/m0"))).join(" ");
        assert!(muxed.contains("-o ControlPath=/run/kua/ssh/m0 -o ControlMaster=no"), "{muxed}");
        assert!(muxed.contains("UserKnownHostsFile=/etc/kua/bruno_known_hosts"), "{muxed}");
        assert!(muxed.ends_with("-- deploy@10.0.0.7 exec docker ps"), "{muxed}");
        let own = args(None).join(" ");
        assert!(own.contains("-o ControlMaster=no -o ControlPath=none"), "{own}");
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
        assert_eq!(remote_command(&cmd, None), "cd '/srv/my app' && exec env LC_ALL=C git log '--format=%H x'");
        assert_eq!(remote_command(&Cmd::new(["docker", "ps"]), None), "exec docker ps");
        let marker = PidMarker::new();
        let marked = remote_command(&Cmd::new(["docker", "ps"]), Some(&marker));
        assert_eq!(marked, format!("{}exec docker ps", marker.shell_prefix()));
    }

    #[tokio::test]
    async fn the_remote_command_runs_in_a_real_shell_as_the_same_argv() {
        let dir = tempfile::tempdir().unwrap();
        let cmd = Cmd::new(["sh", "-c", "printf '%s|' \"$PWD\" \"$KV\" \"$0\"", "it's $(here)"])
            .cwd(dir.path())
            .env("KV", "a b");
        let out = Host::local().query(&Cmd::new(["sh", "-c", &remote_command(&cmd, None)])).await.unwrap();
        let pwd = std::fs::canonicalize(dir.path()).unwrap();
        assert_eq!(out.stdout.trim_end(), format!("{}|a b|it's $(here)|", pwd.display()));
    }

    #[test]
    fn only_ssh_s_own_complaints_count_as_an_unreachable_host() {
        assert!(is_ssh_failure("Host key verification failed.\r\n"));
        assert!(is_ssh_failure("ssh: connect to host 127.0.0.1 port 2: Connection refused"));
        assert!(is_ssh_failure("root@h: Permission denied (publickey)."));
        assert!(is_ssh_failure("mux_client_read_packet_timeout: read header failed: Broken pipe"));
        assert!(!is_ssh_failure("migration 0042 failed"));
    }
}
