//! The read-only client commands: `status`, `history`, `logs` and `apps`, as text for people or,
//! with `--json`, as the API's answer for scripts. Also the formatting of deploys and steps that
//! `release` shares.

use std::time::{Duration, Instant};

use futures::StreamExt;

use super::client::{Client, ClientError};
use super::{exit, parse_app, ConnArgs};
use crate::api::types::FollowItem;
use crate::model::{parse_time, AppName, Deploy, DeployId, LogLine, Phase, Step, StepStatus};

#[derive(Debug, Clone, clap::Args)]
pub struct StatusArgs {
    /// The app's name in the registry.
    #[arg(value_parser = parse_app)]
    pub app: AppName,
    /// Print `{"progress": <deploy or null>, "runtime_status": ...}` as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct HistoryArgs {
    /// The app's name in the registry.
    #[arg(value_parser = parse_app)]
    pub app: AppName,
    /// How many deploys to list, newest first.
    #[arg(long, default_value_t = 20)]
    pub limit: u32,
    /// Print the API's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct LogsArgs {
    /// The deploy's id, as `history` lists it.
    #[arg(value_parser = parse_deploy_id)]
    pub deploy_id: DeployId,
    /// Keep printing until the deploy ends; exit 0 only if it succeeded.
    #[arg(long, short)]
    pub follow: bool,
    /// Start after this line number.
    #[arg(long, default_value_t = 0)]
    pub after: i64,
    /// Print the log page as JSON (with --follow: the stream's items, one per line).
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Debug, Clone, clap::Args)]
pub struct AppsArgs {
    /// Print the API's answer as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

pub(crate) fn parse_deploy_id(s: &str) -> Result<DeployId, String> {
    DeployId::parse(s).map_err(|e| e.to_string())
}

/// How long `logs --follow` keeps reconnecting to a server that went away (a restart, a
/// self-recreate) before it gives up.
const FOLLOW_RECONNECT_FOR: Duration = Duration::from_secs(120);

pub async fn status(args: StatusArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let progress = match client.progress(&args.app).await {
        Ok(d) => Some(d),
        Err(ClientError::NotFound { code, .. }) if code == "no_deploys" => None,
        Err(e) => return fail(&e),
    };
    let runtime = client.runtime_status(&args.app).await;
    if args.json {
        let runtime_json = match &runtime {
            Ok(r) => serde_json::to_value(r).unwrap_or_default(),
            Err(e) => serde_json::json!({"error": e.to_string()}),
        };
        print_json(&serde_json::json!({"progress": progress, "runtime_status": runtime_json}));
    } else {
        match &progress {
            Some(d) => print_deploy(d, "latest deploy"),
            None => println!("{}: no deploys yet", args.app),
        }
        if let Ok(r) = &runtime {
            println!();
            println!(
                "{} on {}{}",
                r.app,
                r.host,
                r.git_head.as_deref().map(|h| format!(", git HEAD {}", short(h, 12))).unwrap_or_default()
            );
            if r.services.is_empty() {
                println!("  no services");
            }
            for s in &r.services {
                println!("  {}", s.service);
                if s.containers.is_empty() {
                    println!("    (no container)");
                }
                for c in &s.containers {
                    println!(
                        "    {}  {}  {}  health {}  {}  started {}  {}",
                        short(&c.id, 12),
                        c.name,
                        c.state,
                        c.health,
                        short_image(&c.image),
                        fmt_time(&c.started_at),
                        if c.matches_last_deploy { "matches the last deploy" } else { "DIFFERS from the last deploy" }
                    );
                }
            }
            if r.drift {
                println!("drift: YES, what runs is not what the last successful deploy verified");
            } else {
                println!("drift: none");
            }
        }
    }
    match runtime {
        Ok(_) => exit::OK,
        Err(e) => {
            eprintln!("error: runtime status unavailable: {e}");
            exit::FAILED
        }
    }
}

pub async fn history(args: HistoryArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let list = match client.history(&args.app, args.limit).await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    if args.json {
        print_json(&list);
        return exit::OK;
    }
    if list.deploys.is_empty() {
        println!("{}: no deploys yet", list.app);
        return exit::OK;
    }
    let rows: Vec<Vec<String>> = list
        .deploys
        .iter()
        .map(|d| {
            vec![
                d.deploy_id.to_string(),
                d.phase.to_string(),
                d.commit.as_ref().map(|c| c.short().to_owned()).unwrap_or_else(|| "-".into()),
                fmt_time(&d.created_at),
                d.error.as_deref().map(|e| one_line(e, 70)).unwrap_or_default(),
            ]
        })
        .collect();
    print_table(&["ID", "PHASE", "COMMIT", "CREATED", "ERROR"], &rows);
    exit::OK
}

pub async fn apps(args: AppsArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let list = match client.apps().await {
        Ok(l) => l,
        Err(e) => return fail(&e),
    };
    if args.json {
        print_json(&list);
        return exit::OK;
    }
    if list.apps.is_empty() {
        println!("no apps in the registry");
        return exit::OK;
    }
    let rows: Vec<Vec<String>> = list
        .apps
        .iter()
        .map(|a| {
            vec![
                a.app.to_string(),
                a.host.clone(),
                a.branch.clone(),
                a.services.join(","),
                a.last_phase.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                a.last_commit.as_ref().map(|c| c.short().to_owned()).unwrap_or_else(|| "-".into()),
                a.last_deploy_id.as_ref().map(|d| d.to_string()).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    print_table(&["APP", "HOST", "BRANCH", "SERVICES", "LAST PHASE", "COMMIT", "LAST DEPLOY"], &rows);
    exit::OK
}

pub async fn logs(args: LogsArgs) -> i32 {
    let client = match connect(&args.conn) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if args.follow {
        follow(&client, &args.deploy_id, args.after, args.json).await
    } else {
        page_through(&client, &args.deploy_id, args.after, args.json).await
    }
}

/// Reads every page, since the server caps how many lines one answer holds. With `--json`, the
/// pages are printed as one page object, written as they come so a long log is never held.
async fn page_through(client: &Client, id: &DeployId, mut after: i64, json: bool) -> i32 {
    let mut printed = 0usize;
    let mut opened = false;
    loop {
        let page = match client.logs(id, after).await {
            Ok(p) => p,
            Err(e) => return fail(&e),
        };
        if json && !opened {
            print!("{{\"deploy_id\":{},\"lines\":[", to_json(&page.deploy_id));
            opened = true;
        }
        for l in &page.lines {
            if json {
                print!("{}\n{}", if printed == 0 { "" } else { "," }, to_json(l));
            } else {
                println!("{}", fmt_log_line(l));
            }
            printed += 1;
        }
        // A page that does not move forward would loop for ever.
        let moved = page.next_after > after;
        after = after.max(page.next_after);
        if !(page.more && moved) {
            if json {
                println!("\n],\"phase\":{},\"next_after\":{after},\"more\":false}}", to_json(&page.phase));
            }
            return exit::OK;
        }
    }
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

/// Streams the log to the end, reconnecting from the last line seen when the server goes away.
async fn follow(client: &Client, id: &DeployId, mut after: i64, json: bool) -> i32 {
    let mut lost_since: Option<Instant> = None;
    loop {
        let mut stream = std::pin::pin!(client.follow_logs(id, after));
        let error = loop {
            match stream.next().await {
                Some(Ok(item)) => {
                    if lost_since.take().is_some() {
                        eprintln!("-- reconnected");
                    }
                    if json {
                        println!("{}", serde_json::to_string(&item).unwrap_or_default());
                    }
                    match item {
                        FollowItem::Line(l) => {
                            after = after.max(l.seq);
                            if !json {
                                println!("{}", fmt_log_line(&l));
                            }
                        }
                        FollowItem::End { phase, .. } => {
                            if !json {
                                eprintln!("-- deploy {id} ended: {phase}");
                            }
                            return if phase == Phase::Succeeded { exit::OK } else { exit::FAILED };
                        }
                    }
                }
                Some(Err(e)) => break e,
                None => {
                    break ClientError::Unreachable {
                        url: client.base_url().to_owned(),
                        reason: "the log stream ended without saying how the deploy ended".into(),
                    }
                }
            }
        };
        let retryable = error.is_retryable() || matches!(error, ClientError::Protocol { .. });
        let first_loss = lost_since.is_none();
        let since = *lost_since.get_or_insert_with(Instant::now);
        if !retryable || since.elapsed() > FOLLOW_RECONNECT_FOR {
            return fail(&error);
        }
        if first_loss {
            eprintln!("-- {error}; reconnecting for up to {}", fmt_duration(FOLLOW_RECONNECT_FOR));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

pub(crate) fn connect(conn: &ConnArgs) -> Result<Client, i32> {
    conn.client().map_err(|msg| {
        eprintln!("error: {msg}");
        exit::USAGE
    })
}

pub(crate) fn fail(e: &ClientError) -> i32 {
    eprintln!("error: {e}");
    exit::FAILED
}

pub(crate) fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print JSON: {e}"),
    }
}

fn print_table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let last = cells.len().saturating_sub(1);
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i == last {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

/// The deploy object for people: phase, commit, steps, images, verify and error.
pub(crate) fn print_deploy(d: &Deploy, title: &str) {
    println!("{title} {} of {}: {}", d.deploy_id, d.app, d.phase);
    let mut trigger = d.trigger.source.to_string();
    if let Some(delivery) = &d.trigger.delivery {
        trigger.push_str(&format!(" (delivery {delivery})"));
    }
    if let Some(reason) = &d.reason {
        trigger.push_str(&format!(", reason {reason:?}"));
    }
    println!("  trigger   {trigger}");
    print_commit(d);
    let mut times = format!("created {}", fmt_time(&d.created_at));
    if let Some(f) = &d.finished_at {
        times.push_str(&format!(", finished {}", fmt_time(f)));
    }
    if let Some(took) = span(d.started_at.as_deref(), d.finished_at.as_deref()) {
        times.push_str(&format!(" (took {})", fmt_duration(took)));
    }
    println!("  time      {times}");
    for step in &d.steps {
        println!("    {}", step_line(step, true));
    }
    print_outcome_details(d);
}

pub(crate) fn print_commit(d: &Deploy) {
    if let Some(c) = &d.commit {
        let before = d.commit_before.as_ref().map(|b| format!(" (was {})", b.short())).unwrap_or_default();
        println!("  commit    {c}{before}");
    }
}

/// Images, what verify saw when it failed, and the error: what a person needs to act on.
pub(crate) fn print_outcome_details(d: &Deploy) {
    for (service, image) in &d.images {
        println!("  image     {service} {image}");
    }
    if let Some(v) = d.verify.as_ref().filter(|v| !v.ok) {
        for s in &v.services {
            println!(
                "  verify    {}: {} health {}, running {} (expected {})",
                s.service,
                s.state,
                s.health,
                s.running_image.as_deref().map(short_image).unwrap_or_else(|| "nothing".into()),
                short_image(s.expected_image.as_str()),
            );
        }
    }
    if let Some(next) = &d.superseded_by {
        println!("  replaced  by deploy {next}");
    }
    if let Some(e) = &d.error {
        println!("  error     {e}");
    }
}

/// One step, e.g. `build succeeded (3.2s): built web=sha256:…`, or with `symbol`:
/// `✓ build (3.2s): built web=sha256:…`.
pub(crate) fn step_line(step: &Step, symbol: bool) -> String {
    let mut s = if symbol {
        format!("{} {}", step_symbol(step.status), step.name)
    } else {
        format!("{} {}", step.name, step.status)
    };
    if symbol && matches!(step.status, StepStatus::Pending | StepStatus::Running) {
        s.push_str(&format!(" ({})", step.status));
    }
    if let Some(d) = span(step.started_at.as_deref(), step.finished_at.as_deref()) {
        s.push_str(&format!(" ({})", fmt_duration(d)));
    }
    if !step.detail.is_empty() {
        s.push_str(": ");
        s.push_str(&step.detail);
    }
    s
}

pub(crate) fn step_symbol(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "✓",
        StepStatus::Failed => "✗",
        StepStatus::Skipped => "-",
        StepStatus::Running => "…",
        StepStatus::Pending => "·",
    }
}

/// The time between two RFC 3339 stamps, when both are there and in order.
pub(crate) fn span(start: Option<&str>, end: Option<&str>) -> Option<Duration> {
    let (start, end) = (parse_time(start?)?, parse_time(end?)?);
    (end - start).to_std().ok()
}

/// `0.4s`, `3.2s`, `59.9s`, `1m05s`, `1h02m`.
pub(crate) fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m", secs / 3600, (secs % 3600) / 60)
    }
}

/// An RFC 3339 time as `2026-11-27 14:40:00Z`; anything unparseable as given.
pub(crate) fn fmt_time(s: &str) -> String {
    match parse_time(s) {
        Some(t) => t.format("%Y-%m-%d %H:%M:%SZ").to_string(),
        None => s.to_owned(),
    }
}

fn fmt_log_line(l: &LogLine) -> String {
    let time = parse_time(&l.ts).map(|t| t.format("%H:%M:%S").to_string()).unwrap_or_else(|| l.ts.clone());
    let tag = match l.stream.as_str() {
        "stdout" => "out",
        "stderr" => "err",
        "info" => "kua",
        other => other,
    };
    format!("{time} {tag:<3} {}", l.line)
}

/// `sha256:` and the first 12 hex digits, the length `docker images` shows.
pub(crate) fn short_image(s: &str) -> String {
    match s.strip_prefix("sha256:") {
        Some(hex) => format!("sha256:{}", short(hex, 12)),
        None => s.to_owned(),
    }
}

fn short(s: &str, n: usize) -> String {
    s.chars().take(n).collect()
}

/// The first line of a message, cut to `max` characters, for one table cell.
fn one_line(s: &str, max: usize) -> String {
    let first = s.lines().next().unwrap_or("");
    if first.chars().count() > max || s.lines().nth(1).is_some() {
        format!("{}…", first.chars().take(max).collect::<String>())
    } else {
        first.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StepName;

    fn step(status: StepStatus, detail: &str) -> Step {
        Step {
            name: StepName::Build,
            status,
            started_at: Some("2026-11-27T14:40:00.000000Z".into()),
            finished_at: (status != StepStatus::Running).then(|| "2026-11-27T14:40:03.200000Z".into()),
            detail: detail.into(),
        }
    }

    #[test]
    fn a_finished_step_reads_as_name_status_duration_and_detail() {
        let s = step(StepStatus::Succeeded, "built web=sha256:abcd…");
        assert_eq!(step_line(&s, false), "build succeeded (3.2s): built web=sha256:abcd…");
        assert_eq!(step_line(&s, true), "✓ build (3.2s): built web=sha256:abcd…");
    }

    #[test]
    fn a_running_step_has_no_duration_yet() {
        assert_eq!(step_line(&step(StepStatus::Running, ""), false), "build running");
    }

    #[test]
    fn durations_read_in_the_largest_sensible_unit() {
        assert_eq!(fmt_duration(Duration::from_millis(3200)), "3.2s");
        assert_eq!(fmt_duration(Duration::from_secs(65)), "1m05s");
        assert_eq!(fmt_duration(Duration::from_secs(3720)), "1h02m");
    }

    #[test]
    fn long_errors_are_cut_to_one_line_in_tables() {
        assert_eq!(one_line("short", 10), "short");
        assert_eq!(one_line("first\nsecond", 10), "first…");
        assert_eq!(one_line("abcdefghijkl", 5), "abcde…");
    }

    #[test]
    fn image_ids_are_shortened_like_docker_does() {
        let id = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(short_image(&id), "sha256:abababababab");
        assert_eq!(short_image("nginx:latest"), "nginx:latest");
    }
}
