//! `release [APP]` (also the `release-app` binary): trigger a deploy, then follow it to its end.
//!
//! Following survives the server going away: when the app is kua-deploy itself, the process that
//! answered the trigger is killed during recreate and a new one reports the result. Refused
//! connections, resets, 5xx and unreadable answers are therefore retried until `--timeout`.
//!
//! The URL is `--url`, else `KUA_DEPLOY_URL`, else the manifest's `server` when that is an
//! `http://` URL, else the default; a `server` that is only a name is shown in the hint when the
//! default URL cannot be reached.
//!
//! Exit statuses: 0 succeeded; 1 failed, rolled_back, interrupted or cancelled; 2 usage or
//! configuration error; 3 awaiting approval; 4 timed out, or lost track of the deploy (its
//! outcome is unknown); 5 could not start it (unreachable, 401, 404, 409, 400, 5xx).

use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Deserialize;
use tokio::time::Instant;

use super::client::{Client, ClientError};
use super::show::{fmt_duration, print_commit, print_outcome_details, span, step_line};
use super::{exit, parse_app, ConnArgs};
use crate::api::types::DeployRequest;
use crate::model::{AppName, CommitSha, Deploy, DeployId, Phase, StepName, StepStatus};

/// The release manifest an app keeps at the top of its repo.
pub const MANIFEST: &str = "kua.json";

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

/// What `kua.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Manifest {
    pub name: String,
    /// Only `direct` is known; a manifest without it means `direct`.
    #[serde(default)]
    pub mode: Option<String>,
    /// The server the app is released on; used as the URL when it is one and none was given.
    #[serde(default)]
    pub server: Option<String>,
}

/// Parses and checks a manifest; the error says how to fix it.
pub fn parse_manifest(text: &str) -> Result<(AppName, Manifest), String> {
    let m: Manifest = serde_json::from_str(text).map_err(|e| {
        format!("{MANIFEST} is not valid: {e}; it should read {{\"name\": \"<app>\", \"mode\": \"direct\", \"server\": \"<server>\"}}")
    })?;
    match m.mode.as_deref() {
        None | Some("direct") => {}
        Some(other) => {
            return Err(format!(
                "{MANIFEST} has mode {other:?}, which this release-app does not support: only \"direct\" \
                 (talk to the server's kua-deploy admin API) is"
            ))
        }
    }
    let app = AppName::parse(&m.name).map_err(|e| format!("{MANIFEST}: \"name\": {e}"))?;
    Ok((app, m))
}

/// The app named on the command line, else the manifest's; with the manifest, when read.
fn resolve_app(arg: Option<AppName>, manifest: &Path) -> Result<(AppName, Option<Manifest>), String> {
    if let Some(app) = arg {
        return Ok((app, None));
    }
    let text = std::fs::read_to_string(manifest).map_err(|e| {
        format!(
            "no app named and {} cannot be read ({e}): name the app (release-app APP) or run where the \
             app's {MANIFEST} is",
            manifest.display()
        )
    })?;
    let (app, m) = parse_manifest(&text).map_err(|e| format!("{e} (or name the app: release-app APP)"))?;
    Ok((app, Some(m)))
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
    let server = manifest.as_ref().and_then(|m| m.server.clone());
    let server_url = server.as_deref().filter(|s| s.starts_with("http://") || s.starts_with("https://"));
    let client = match args.conn.client_with(server_url) {
        Ok(c) => c,
        Err(msg) => return usage(&msg),
    };
    let deadline = Instant::now() + args.timeout;
    let request = DeployRequest {
        commit: args.commit.clone(),
        approve_migrations: args.approve_migrations,
        reason: args.reason.clone(),
    };

    let mut view = View::new(std::io::stdout().is_terminal());
    view.note(&format!("releasing {app} via {}", client.base_url()));
    let accepted = match client.deploy(&app, &request).await {
        Ok(a) => a,
        Err(e) => {
            view.finish();
            not_started(&e, &app, &client, server.as_deref(), args.conn.url.is_none());
            return exit::NOT_STARTED;
        }
    };
    view.note(&format!("deploy {} accepted ({})", accepted.deploy_id, accepted.phase));
    let code = follow(&client, &accepted.deploy_id, deadline, args.timeout, &mut view).await;
    view.finish();
    code
}

fn usage(msg: &str) -> i32 {
    eprintln!("error: {msg}");
    exit::USAGE
}

fn not_started(e: &ClientError, app: &AppName, client: &Client, server: Option<&str>, url_defaulted: bool) {
    // The error's own text already says which (unreachable, 401, or the API's code and status).
    eprintln!("error: could not start the release of {app}: {e}");
    if let ClientError::Conflict { deploy_id: Some(id), .. } = e {
        eprintln!("deploy {id} is in progress; follow it with: kua-deploy logs {id} --follow");
    }
    if let (ClientError::Unreachable { .. }, Some(server), true) = (e, server, url_defaulted) {
        eprintln!(
            "{MANIFEST} names server {server:?}, but no URL was given so {} was tried: set KUA_DEPLOY_URL or --url",
            client.base_url()
        );
    }
}

/// Polls the deploy until it ends, waits for approval, or the deadline passes.
async fn follow(client: &Client, id: &DeployId, deadline: Instant, timeout: Duration, view: &mut View) -> i32 {
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
                    summary(&d, client);
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
/// (one per change) otherwise, so logs of CI jobs stay readable.
struct View {
    bar: Option<ProgressBar>,
    steps: HashMap<StepName, StepStatus>,
    phase: Option<Phase>,
    running: Option<StepName>,
}

impl View {
    fn new(live: bool) -> View {
        let bar = live.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
            let style = ProgressStyle::with_template("{spinner} {wide_msg} {elapsed:>4}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            bar.set_message("starting");
            bar
        });
        View { bar, steps: HashMap::new(), phase: None, running: None }
    }

    /// A line above the spinner, or a plain line.
    fn note(&self, msg: &str) {
        match &self.bar {
            Some(bar) if !bar.is_finished() => bar.println(msg),
            _ => println!("{msg}"),
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
                        println!("{}", step_line(step, false));
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
    fn a_direct_manifest_names_the_app() {
        let (app, m) = parse_manifest(r#"{"name": "kua-deploy", "mode": "direct", "server": "bruno"}"#).unwrap();
        assert_eq!(app.as_str(), "kua-deploy");
        assert_eq!(m.server.as_deref(), Some("bruno"));
    }

    #[test]
    fn a_manifest_without_mode_means_direct() {
        assert!(parse_manifest(r#"{"name": "hello"}"#).is_ok());
    }

    #[test]
    fn a_manifest_with_another_mode_is_a_clear_error() {
        let err = parse_manifest(r#"{"name": "hello", "mode": "pull"}"#).unwrap_err();
        assert!(err.contains("\"pull\"") && err.contains("direct"), "{err}");
    }

    #[test]
    fn a_manifest_without_a_valid_name_says_what_it_should_look_like() {
        assert!(parse_manifest(r#"{"mode": "direct"}"#).unwrap_err().contains("\"name\""));
        assert!(parse_manifest("not json").unwrap_err().contains("kua.json"));
        assert!(parse_manifest(r#"{"name": "../etc"}"#).unwrap_err().contains("name"));
    }

    #[test]
    fn the_app_on_the_command_line_wins_without_reading_the_manifest() {
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
