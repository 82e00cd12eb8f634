//! `release [APP]` (also the `release-app` binary): trigger a deploy, then follow it to its end.
//!
//! Following survives the server going away: when the app is kua-deploy itself, the process that
//! answered the trigger is killed during recreate and a new one reports the result. Refused
//! connections, resets, 5xx and unreadable answers are therefore retried until `--timeout`.
//!
//! The app is the one named on the command line, else the `name` of `./kua.json`; the server is
//! chosen as for every client command (`servers.rs`), with the `server` of `./kua.json` even when
//! the app is named on the command line.
//!
//! Exit statuses: 0 succeeded; 1 failed, rolled_back, interrupted or cancelled; 2 usage or
//! configuration error; 3 awaiting approval; 4 timed out, or lost track of the deploy (its
//! outcome is unknown); 5 could not start it (unreachable, 401, 404, 409, 400, 5xx).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use super::client::{Client, ClientError};
use super::manifest::{Manifest, MANIFEST};
use super::show::{fmt_duration, print_commit, print_outcome_details, span, step_line};
use super::{exit, parse_app, ConnArgs};
use crate::api::types::DeployRequest;
use crate::model::{AppName, CommitSha, Deploy, DeployId, Phase, StepName, StepStatus};

const POLL_EVERY: Duration = Duration::from_millis(300);
/// Slower while the server is away, so a restart is not met with a flood of connection attempts.
const RETRY_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, clap::Args)]
pub struct ReleaseArgs {
    /// The app to deploy [default: `name` in ./kua.json].
    #[arg(value_parser = parse_app)]
    pub app: Option<AppName>,
    /// Deploy this commit (full SHA) instead of the tip of the app's branch.
    #[arg(long, value_parser = parse_commit)]
    pub commit: Option<CommitSha>,
    /// Approve the migrations this release brings (for apps whose migration policy is `block`).
    #[arg(long)]
    pub approve_migrations: bool,
    /// Why this release, recorded with the deploy.
    #[arg(long)]
    pub reason: Option<String>,
    /// How long to follow the deploy before giving up: seconds, or e.g. 90s, 15m, 1h30m.
    #[arg(long, default_value = "15m", value_parser = parse_timeout)]
    pub timeout: Duration,
    /// Print the deploy object as JSON on stdout once it ends (or awaits approval), and nothing
    /// else there: the progress goes to stderr. The exit status is the same.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn parse_commit(s: &str) -> Result<CommitSha, String> {
    CommitSha::parse(s).map_err(|e| e.to_string())
}

/// `900`, `900s`, `15m`, `1h30m`, `2m30s`: a positive duration in hours, minutes and seconds.
pub fn parse_timeout(s: &str) -> Result<Duration, String> {
    let bad = || format!("timeout {s:?} is not a duration: give seconds (900) or e.g. 90s, 15m, 1h30m");
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    let mut total: u64 = 0;
    if s.bytes().all(|b| b.is_ascii_digit()) {
        total = s.parse().map_err(|_| bad())?;
    } else {
        let mut rest = s;
        let mut last_unit = u64::MAX;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(bad());
            }
            let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
            let unit = match rest.as_bytes().get(digits) {
                Some(b'h') => 3600,
                Some(b'm') => 60,
                Some(b's') => 1,
                _ => return Err(bad()),
            };
            // Units must come largest first and once each, so "5s3m" is not silently accepted.
            if unit >= last_unit {
                return Err(bad());
            }
            last_unit = unit;
            total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
            rest = &rest[digits + 1..];
        }
    }
    if total == 0 {
        return Err(format!("timeout {s:?} must be more than zero"));
    }
    Ok(Duration::from_secs(total))
}

/// The app named on the command line, else the manifest's; with the manifest, when there is one
/// (its mode checked either way: it says how this repo releases).
fn resolve_app(arg: Option<AppName>, manifest: &Path) -> Result<(AppName, Option<Manifest>), String> {
    let m = Manifest::read(manifest)?;
    if let Some(m) = &m {
        m.check_mode()?;
    }
    let app = match (arg, &m) {
        (Some(app), _) => app,
        (None, Some(m)) => m.app().map_err(|e| format!("{e} (or name the app: release-app APP)"))?,
        (None, None) => {
            return Err(format!(
                "no app named and there is no {}: name the app (release-app APP) or run where the app's {MANIFEST} is",
                manifest.display()
            ))
        }
    };
    Ok((app, m))
}

/// The exit status a deploy in `phase` ends the release with; `None` while it is still going.
pub fn exit_code_for(phase: Phase) -> Option<i32> {
    match phase {
        Phase::Succeeded => Some(exit::OK),
        Phase::Failed | Phase::RolledBack | Phase::Interrupted | Phase::Cancelled => Some(exit::FAILED),
        Phase::AwaitingApproval => Some(exit::AWAITING_APPROVAL),
        Phase::Queued | Phase::Running | Phase::SelfRecreatePending => None,
    }
}

pub async fn run(args: ReleaseArgs) -> i32 {
    let (app, manifest) = match resolve_app(args.app.clone(), Path::new(MANIFEST)) {
        Ok(v) => v,
        Err(msg) => return usage(&msg),
    };
    let (client, origin) = match args.conn.client_for(manifest.as_ref().and_then(|m| m.server.as_deref())) {
        Ok(c) => c,
        Err(msg) => return usage(&msg),
    };
    let deadline = Instant::now() + args.timeout;
    let request = DeployRequest {
        commit: args.commit.clone(),
        approve_migrations: args.approve_migrations,
        reason: args.reason.clone(),
    };

    let mut view = View::new(args.json);
    view.note(&format!("releasing {app} via {} ({origin})", client.base_url()));
    let accepted = match client.deploy(&app, &request).await {
        Ok(a) => a,
        Err(e) => {
            view.finish();
            not_started(&e, &app);
            return exit::NOT_STARTED;
        }
    };
    view.note(&format!("deploy {} accepted ({})", accepted.deploy_id, accepted.phase));
    let code = follow(&client, &accepted.deploy_id, deadline, args.timeout, &mut view, args.json).await;
    view.finish();
    code
}

fn usage(msg: &str) -> i32 {
    eprintln!("error: {msg}");
    exit::USAGE
}

fn not_started(e: &ClientError, app: &AppName) {
    // The error's own text already says which (unreachable, TLS, 401, or the API's code and status).
    eprintln!("error: could not start the release of {app}: {e}");
    if let ClientError::Conflict { deploy_id: Some(id), .. } = e {
        eprintln!("deploy {id} is in progress; follow it with: kua-deploy logs {id} --follow");
    }
}

/// Polls the deploy until it ends, waits for approval, or the deadline passes.
async fn follow(
    client: &Client,
    id: &DeployId,
    deadline: Instant,
    timeout: Duration,
    view: &mut View,
    json: bool,
) -> i32 {
    let mut last: Option<Deploy> = None;
    let mut lost = false;
    loop {
        let answer = match tokio::time::timeout_at(deadline, client.deploy_status(id)).await {
            Ok(answer) => answer,
            Err(_) => return timed_out(id, last.as_ref(), timeout, client, view),
        };
        match answer {
            Ok(d) => {
                if lost {
                    view.note("kua-deploy answers again");
                    lost = false;
                }
                view.update(&d);
                if let Some(code) = exit_code_for(d.phase) {
                    view.finish();
                    if json {
                        print_json(&d);
                    } else {
                        summary(&d, client);
                    }
                    return code;
                }
                last = Some(d);
            }
            Err(e) if e.is_retryable() || matches!(e, ClientError::Protocol { .. }) => {
                if !lost {
                    view.note(&format!(
                        "lost contact ({e}); retrying for up to {}",
                        fmt_duration(deadline - Instant::now())
                    ));
                    lost = true;
                }
                view.waiting("waiting for kua-deploy to answer again");
            }
            Err(e) => {
                view.finish();
                eprintln!("error: lost track of deploy {id}: {e}");
                eprintln!(
                    "its outcome is unknown; check it with: kua-deploy status {}",
                    last.as_ref().map(|d| d.app.as_str()).unwrap_or("<app>")
                );
                return exit::TIMED_OUT;
            }
        }
        let pause = if lost { RETRY_EVERY } else { POLL_EVERY };
        let now = Instant::now();
        if now >= deadline {
            return timed_out(id, last.as_ref(), timeout, client, view);
        }
        tokio::time::sleep(pause.min(deadline - now)).await;
    }
}

fn timed_out(id: &DeployId, last: Option<&Deploy>, timeout: Duration, client: &Client, view: &mut View) -> i32 {
    view.finish();
    let state = match last {
        Some(d) => match d.running_step() {
            Some(s) => format!("{}, step {} running", d.phase, s.name),
            None => d.phase.to_string(),
        },
        None => "unknown".into(),
    };
    eprintln!("error: timed out after {} following deploy {id} (last seen: {state})", fmt_duration(timeout));
    eprintln!("it may still be going; follow it with: kua-deploy logs {id} --follow --url {}", client.base_url());
    exit::TIMED_OUT
}

/// `--json`: the deploy object on stdout, its one-line outcome on stderr with the progress.
fn print_json(d: &Deploy) {
    eprintln!("{}: {} (deploy {})", d.app, d.phase, d.deploy_id);
    match serde_json::to_string_pretty(d) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot write the deploy as JSON: {e}"),
    }
}

/// The end of a release: phase, commit, images and, when it did not succeed, why.
fn summary(d: &Deploy, client: &Client) {
    let took = span(d.started_at.as_deref(), d.finished_at.as_deref())
        .map(|t| format!(" in {}", fmt_duration(t)))
        .unwrap_or_default();
    println!("{}: {} (deploy {}{took})", d.app, d.phase, d.deploy_id);
    print_commit(d);
    print_outcome_details(d);
    if d.phase == Phase::AwaitingApproval {
        let gate = d.step(StepName::MigrationGate).map(|s| s.detail.as_str()).filter(|s| !s.is_empty());
        if let Some(detail) = gate {
            println!("  waiting   {detail}");
        }
        println!("approve it (or POST /api/v1/deploys/{}/approve), then follow it:", d.deploy_id);
        println!("  kua-deploy approve {} --url {}", d.deploy_id, client.base_url());
        println!("  kua-deploy logs {} --follow --url {}", d.deploy_id, client.base_url());
    }
}

/// How the progress shows: a spinner with finished steps above it on a terminal, plain lines
/// (one per change) otherwise, so logs of CI jobs stay readable. On stdout, or on stderr when
/// stdout is kept for `--json`.
struct View {
    bar: Option<ProgressBar>,
    to_stderr: bool,
    steps: HashMap<StepName, StepStatus>,
    phase: Option<Phase>,
    running: Option<StepName>,
}

impl View {
    fn new(to_stderr: bool) -> View {
        let live = if to_stderr { std::io::stderr().is_terminal() } else { std::io::stdout().is_terminal() };
        let bar = live.then(|| {
            let target = if to_stderr { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::stdout() };
            let bar = ProgressBar::with_draw_target(None, target);
            let style = ProgressStyle::with_template("{spinner} {wide_msg} {elapsed:>4}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("starting");
            bar
        });
        View { bar, to_stderr, steps: HashMap::new(), phase: None, running: None }
    }

    /// A line above the spinner, or a plain line.
    fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) if !bar.is_finished() => bar.println(msg),
            _ => self.line(msg),
        }
    }

    fn line(&self, msg: &str) {
        if self.to_stderr {
            eprintln!("{msg}");
        } else {
            println!("{msg}");
        }
    }

    /// What the spinner says while nothing else is going on; plain output stays quiet.
    fn waiting(&self, msg: &str) {
        if let Some(bar) = &self.bar {
            bar.set_message(msg.to_owned());
        }
    }

    fn update(&mut self, d: &Deploy) {
        if self.phase != Some(d.phase) {
            self.phase = Some(d.phase);
            if d.phase == Phase::SelfRecreatePending {
                self.note("kua-deploy is recreating itself; the new process will report the result");
            }
        }
        for step in &d.steps {
            let before = self.steps.insert(step.name, step.status);
            if before == Some(step.status) {
                continue;
            }
            match step.status {
                StepStatus::Pending => {}
                StepStatus::Running => {
                    if self.bar.is_none() {
                        self.line(&step_line(step, false));
                    }
                }
                StepStatus::Succeeded | StepStatus::Failed | StepStatus::Skipped => {
                    let live = self.bar.is_some();
                    self.note(&step_line(step, live));
                }
            }
        }
        if let Some(bar) = &self.bar {
            let running = d.running_step();
            if running.map(|s| s.name) != self.running {
                self.running = running.map(|s| s.name);
                bar.reset_elapsed();
            }
            let msg = match (running, d.phase) {
                (Some(s), _) if s.detail.is_empty() => s.name.to_string(),
                (Some(s), _) => format!("{}: {}", s.name, s.detail),
                (None, Phase::SelfRecreatePending) => "waiting for the new kua-deploy to report".into(),
                (None, phase) => phase.to_string(),
            };
            bar.set_message(msg);
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeouts_are_seconds_or_hours_minutes_and_seconds() {
        assert_eq!(parse_timeout("900").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_timeout("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_timeout("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse_timeout("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_timeout("2m30s").unwrap(), Duration::from_secs(150));
    }

    #[test]
    fn malformed_or_zero_timeouts_are_refused() {
        for bad in ["", "m", "15x", "1.5m", "-5", "5s3m", "1m1m", "0", "0m", "99999999999999999999h"] {
            assert!(parse_timeout(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn the_app_on_the_command_line_wins_over_the_manifests_name_but_the_manifest_is_still_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        std::fs::write(&path, r#"{"name": "hello", "mode": "direct", "server": "bruno"}"#).unwrap();
        let (app, m) = resolve_app(Some(AppName::parse("web").unwrap()), &path).unwrap();
        assert_eq!(app.as_str(), "web");
        assert_eq!(m.and_then(|m| m.server).as_deref(), Some("bruno"));
    }

    #[test]
    fn the_manifest_names_the_app_when_the_command_line_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        std::fs::write(&path, r#"{"name": "hello"}"#).unwrap();
        assert_eq!(resolve_app(None, &path).unwrap().0.as_str(), "hello");
    }

    #[test]
    fn a_manifest_of_another_mode_is_refused_even_when_the_app_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MANIFEST);
        std::fs::write(&path, r#"{"name": "hello", "mode": "pull"}"#).unwrap();
        assert!(resolve_app(Some(AppName::parse("web").unwrap()), &path).unwrap_err().contains("pull"));
    }

    #[test]
    fn the_app_on_the_command_line_is_enough_without_a_manifest() {
        let (app, m) = resolve_app(Some(AppName::parse("web").unwrap()), Path::new("/nonexistent/kua.json")).unwrap();
        assert_eq!(app.as_str(), "web");
        assert!(m.is_none());
    }

    #[test]
    fn no_app_and_no_manifest_says_how_to_fix_it() {
        let err = resolve_app(None, Path::new("/nonexistent/kua.json")).unwrap_err();
        assert!(err.contains("release-app APP"), "{err}");
    }

    #[test]
    fn only_success_exits_zero_and_approval_waits_with_three() {
        assert_eq!(exit_code_for(Phase::Succeeded), Some(0));
        for p in [Phase::Failed, Phase::RolledBack, Phase::Interrupted, Phase::Cancelled] {
            assert_eq!(exit_code_for(p), Some(1), "{p}");
        }
        assert_eq!(exit_code_for(Phase::AwaitingApproval), Some(3));
        for p in [Phase::Queued, Phase::Running, Phase::SelfRecreatePending] {
            assert_eq!(exit_code_for(p), None, "{p}");
        }
    }
}
