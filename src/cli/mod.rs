//! The command line: `kua-deploy <command>` and the `release-app` binary.
//!
//! Exit statuses, the same for every command unless it says otherwise:
//! - 0: done (for `release` and `logs --follow`: the deploy succeeded);
//! - 1: it did not work: an invalid registry (`check-config`), no answer or an answer that is an
//!   error (`status`, `history`, `logs`, `apps`, `approve`, `cancel`: unreachable, a server
//!   certificate not trusted, an error status; `health`: anything but 200), or a deploy that did
//!   not succeed;
//! - 2: usage or configuration error on this side: bad options, no token, no or bad `kua.json`,
//!   a bad or missing `servers.json`, an unknown server name, a CA file that cannot be used, a
//!   registry file that cannot be read (`check-config`), a TLS certificate without its key
//!   (`serve`);
//! - 3, 4, 5: `release` only: awaiting approval; timed out or lost track of the deploy (its outcome
//!   is unknown); could not start it (unreachable, a server certificate not trusted, 401, 404, 409).

pub mod client;
pub mod control;
pub mod demo;
pub mod health;
pub mod manifest;
pub mod release;
pub mod servers;
pub mod show;
pub mod tls;

use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};

use crate::model::AppName;

/// Exit statuses; see the module doc.
pub mod exit {
    pub const OK: i32 = 0;
    pub const FAILED: i32 = 1;
    pub const USAGE: i32 = 2;
    pub const AWAITING_APPROVAL: i32 = 3;
    pub const TIMED_OUT: i32 = 4;
    pub const NOT_STARTED: i32 = 5;
}

/// The exit statuses, shown under `--help` (and in the man page).
pub const EXIT_HELP: &str = "\
Exit status:
  0  done (release, logs --follow: the deploy succeeded)
  1  it did not work: an invalid registry (check-config), no answer or an error answer, a deploy
     that did not succeed
  2  usage or configuration error on this side (bad options, no token, bad kua.json or
     servers.json, unreadable registry file)
  3  release: the deploy awaits approval
  4  release: timed out, or lost track of the deploy (its outcome is unknown)
  5  release: could not start it (unreachable, certificate not trusted, 401, 404, 409)";

/// The exit statuses of `release` and `release-app`.
pub const RELEASE_EXIT_HELP: &str = "\
Exit status:
  0  the deploy succeeded
  1  it did not succeed (failed, rolled_back, interrupted, cancelled)
  2  usage or configuration error (bad options, no token, bad kua.json or servers.json)
  3  the deploy awaits approval
  4  timed out, or lost track of the deploy (its outcome is unknown)
  5  could not start it (unreachable, certificate not trusted, 401, 404, 409)";

/// kua-deploy: push-to-deploy for Docker Compose apps.
#[derive(Debug, Parser)]
#[command(name = "kua-deploy", version, about, after_help = EXIT_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the deploy service: admin API, webhooks and the per-app pipelines.
    #[command(after_help = EXIT_HELP)]
    Serve(crate::app::ServeArgs),
    /// Check a registry file and report every problem in it (exit 1 if any, 2 if unreadable).
    #[command(after_help = EXIT_HELP)]
    CheckConfig(CheckConfigArgs),
    /// Show an app's latest deploy and what runs now.
    #[command(after_help = EXIT_HELP)]
    Status(show::StatusArgs),
    /// List an app's deploys, newest first.
    #[command(after_help = EXIT_HELP)]
    History(show::HistoryArgs),
    /// Print a deploy's log; with --follow, until it ends (exit 0 only if it succeeded).
    #[command(after_help = EXIT_HELP)]
    Logs(show::LogsArgs),
    /// List the apps and their last deploy.
    #[command(after_help = EXIT_HELP)]
    Apps(show::AppsArgs),
    /// Let a deploy awaiting approval (migration gate, policy block) go on.
    #[command(after_help = EXIT_HELP)]
    Approve(control::DeployArgs),
    /// Cancel a queued, awaiting or running deploy (refused once its recreate began).
    #[command(after_help = EXIT_HELP)]
    Cancel(control::DeployArgs),
    /// Deploy an app and follow it to the end (the same as `release-app`).
    #[command(after_help = RELEASE_EXIT_HELP)]
    Release(release::ReleaseArgs),
    /// Deploy a small example app on the local Docker engine, end to end.
    #[command(after_help = EXIT_HELP)]
    Demo(demo::DemoArgs),
    /// Ask the local server's /healthz (for a container HEALTHCHECK): exit 0 if it answers 200.
    #[command(after_help = EXIT_HELP)]
    Health(health::HealthArgs),
    /// Print a shell completion script for kua-deploy (e.g. `kua-deploy completions bash >
    /// /etc/bash_completion.d/kua-deploy`).
    #[command(after_help = EXIT_HELP)]
    Completions(CompletionsArgs),
    /// Print kua-deploy's man page (roff): `kua-deploy man > kua-deploy.1`.
    #[command(after_help = EXIT_HELP)]
    Man,
    /// (Run by kua-deploy itself, in a transient container of its new image: recreate kua-deploy's
    /// own service, verify it, and bring the previous image back if it does not hold.)
    #[command(hide = true)]
    SelfRecreate(crate::selfupdate::TransientArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct CheckConfigArgs {
    /// The registry file.
    #[arg(env = "KUA_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub path: PathBuf,
    /// Print the problems as a JSON list of {file, line, column, app, key, message} on stdout
    /// (`[]` when there are none); the exit status is the same.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    pub shell: clap_complete::Shell,
}

/// How a client command reaches kua-deploy; every client command takes these, before or after
/// its own arguments. The token itself comes only from the environment or a file, never from the
/// command line, where other users of the machine could read it.
#[derive(Debug, Clone, clap::Args)]
pub struct ConnArgs {
    /// kua-deploy's base URL (https://… or http://…); wins over every server name [default: the
    /// server of ./kua.json, else the default in servers.json, else http://127.0.0.1:8790].
    #[arg(long, env = "KUA_DEPLOY_URL")]
    pub url: Option<String>,
    /// A server named in servers.json ($KUA_SERVERS, else $XDG_CONFIG_HOME/kua-deploy/servers.json,
    /// else ~/.config/kua-deploy/servers.json); wins over ./kua.json's server.
    #[arg(long, env = "KUA_SERVER")]
    pub server: Option<String>,
    /// File holding the admin token, used when KUA_ADMIN_TOKEN is not set [default: the server's
    /// token_file in servers.json, then $KUA_STATE_DIR/admin-token, then ./kua-state/admin-token].
    #[arg(long, env = "KUA_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// PEM file of the CA(s) that sign the server's certificate, trusted besides the system's
    /// [default: the server's ca_file in servers.json].
    #[arg(long, env = "KUA_CA_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl ConnArgs {
    /// A client for the server chosen (see [`servers`] for the order; `manifest_server` is the
    /// `server` of kua.json), and where its URL came from. The error is a usage error, for exit
    /// status 2.
    pub fn client_for(&self, manifest_server: Option<&str>) -> Result<(client::Client, servers::Origin), String> {
        let wanted = servers::Wanted {
            url: self.url.clone(),
            server: self.server.clone(),
            manifest_server: manifest_server.map(str::to_owned),
            ca_file: self.ca_file.clone(),
        };
        // A URL given makes every name moot: a broken servers file does not stand in its way.
        let known = match &wanted.url {
            Some(_) => servers::Servers::default(),
            None => servers::Servers::load(&servers::Location::from_env())?,
        };
        let chosen = servers::resolve(&wanted, &known)?;
        let token =
            client::resolve_token(&client::TokenSources::from_env(self.token_file.clone(), chosen.token_file.clone()))?;
        let trust = tls::Trust::Roots { ca_file: chosen.ca_file.clone() };
        Ok((client::Client::with_trust(&chosen.url, token, &trust)?, chosen.origin))
    }

    /// [`ConnArgs::client_for`] the server `./kua.json` names, if there is one.
    pub fn client(&self) -> Result<client::Client, String> {
        let manifest = match &self.url {
            Some(_) => None,
            None => manifest::Manifest::read(Path::new(manifest::MANIFEST))?,
        };
        self.client_for(manifest.as_ref().and_then(|m| m.server.as_deref())).map(|(client, _)| client)
    }
}

/// Parses an app name argument, for clap.
pub(crate) fn parse_app(s: &str) -> Result<AppName, String> {
    AppName::parse(s).map_err(|e| e.to_string())
}

/// Runs a parsed command line and returns the process exit status.
pub async fn run(cli: Cli) -> i32 {
    match cli.command {
        Command::Serve(args) => report(crate::app::run(args).await),
        Command::Demo(args) => report(demo::run(args).await),
        Command::SelfRecreate(args) => crate::app::self_recreate(args).await,
        Command::CheckConfig(args) => check_config(&args),
        Command::Status(args) => show::status(args).await,
        Command::History(args) => show::history(args).await,
        Command::Logs(args) => show::logs(args).await,
        Command::Apps(args) => show::apps(args).await,
        Command::Approve(args) => control::approve(args).await,
        Command::Cancel(args) => control::cancel(args).await,
        Command::Release(args) => release::run(args).await,
        Command::Health(args) => health::run(args).await,
        Command::Completions(args) => completions(args.shell),
        Command::Man => man(),
    }
}

fn completions(shell: clap_complete::Shell) -> i32 {
    use clap::CommandFactory;
    clap_complete::generate(shell, &mut Cli::command(), "kua-deploy", &mut std::io::stdout());
    exit::OK
}

fn man() -> i32 {
    let mut out = std::io::stdout().lock();
    match write_man(&mut out) {
        Ok(()) => exit::OK,
        Err(e) => {
            eprintln!("error: cannot write the man page: {e}");
            exit::FAILED
        }
    }
}

/// One page for the whole tool: the top command's sections, then a section per command (its
/// synopsis, description and options as subsections), then the exit statuses. clap_mangen alone
/// would refer to a page per command (`kua-deploy-serve(1)`) that nobody installs.
fn write_man(out: &mut impl std::io::Write) -> std::io::Result<()> {
    use clap::CommandFactory;
    let top = Cli::command();
    let page = clap_mangen::Man::new(top.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("kua-deploy {}", sub.get_name());
        writeln!(out, ".SH \"{}\"", name.to_uppercase().replace('-', "\\-"))?;
        let sub = sub.clone().bin_name(&name).after_help("");
        let mut text = Vec::new();
        let sub_page = clap_mangen::Man::new(sub);
        sub_page.render_synopsis_section(&mut text)?;
        sub_page.render_description_section(&mut text)?;
        sub_page.render_options_section(&mut text)?;
        // Its sections become subsections of the command's own.
        let text = String::from_utf8_lossy(&text).replace("\n.SH ", "\n.SS ");
        let text = text.strip_prefix(".SH ").map(|t| format!(".SS {t}")).unwrap_or(text);
        out.write_all(text.as_bytes())?;
    }
    // As printed under --help, line for line (no filling).
    let statuses = EXIT_HELP.trim_start_matches("Exit status:\n").replace('-', "\\-");
    writeln!(out, ".SH \"EXIT STATUS\"\n.nf\n{statuses}\n.fi")?;
    page.render_version_section(out)
}

fn report(result: anyhow::Result<i32>) -> i32 {
    result.unwrap_or_else(|e| {
        eprintln!("error: {e:#}");
        exit::FAILED
    })
}

fn check_config(args: &CheckConfigArgs) -> i32 {
    // An unreadable file is a usage problem (wrong path), not an invalid registry.
    if let Err(e) = std::fs::File::open(&args.path) {
        let message = format!("cannot read {}: {e}", args.path.display());
        if args.json {
            let problem = JsonProblem { file: &args.path, line: None, column: None, app: None, key: "", message };
            print_json(&[problem]);
        } else {
            eprintln!("error: {message}");
        }
        return exit::USAGE;
    }
    let loaded = crate::config::Registry::load(&args.path);
    if args.json {
        let problems: Vec<JsonProblem<'_>> = match &loaded {
            Ok(_) => vec![],
            Err(errors) => errors.errors.iter().map(JsonProblem::of).collect(),
        };
        print_json(&problems);
        return if loaded.is_ok() { exit::OK } else { exit::FAILED };
    }
    match loaded {
        Ok(registry) => {
            let n = registry.apps.len();
            println!("ok: {n} app{} in {}", if n == 1 { "" } else { "s" }, args.path.display());
            exit::OK
        }
        Err(errors) => {
            eprintln!("{errors}");
            let n = errors.errors.len();
            eprintln!("{}: {n} problem{}", args.path.display(), if n == 1 { "" } else { "s" });
            exit::FAILED
        }
    }
}

/// One registry problem as `check-config --json` prints it: no position (`null`) when the file
/// could not be read or parsed at all; `key` is the dotted path from the top of the file.
#[derive(serde::Serialize)]
struct JsonProblem<'a> {
    file: &'a Path,
    line: Option<usize>,
    column: Option<usize>,
    app: Option<&'a str>,
    key: &'a str,
    message: String,
}

impl<'a> JsonProblem<'a> {
    fn of(e: &'a crate::config::ConfigError) -> Self {
        let at = |n: usize| (e.line > 0).then_some(n);
        JsonProblem {
            file: &e.path,
            line: at(e.line),
            column: at(e.column),
            app: e.app.as_deref(),
            key: &e.key,
            message: e.message.clone(),
        }
    }
}

fn print_json(problems: &[JsonProblem<'_>]) {
    match serde_json::to_string_pretty(problems) {
        Ok(text) => println!("{text}"),
        Err(e) => eprintln!("error: cannot write the problems as JSON: {e}"),
    }
}

/// `release-app [APP] [options]`: the release command as a binary of its own, for app repos.
#[derive(Debug, Parser)]
#[command(
    name = "release-app",
    version,
    about = "Deploy an app with kua-deploy and follow it to the end.",
    after_help = RELEASE_EXIT_HELP
)]
pub struct ReleaseAppCli {
    #[command(flatten)]
    pub release: release::ReleaseArgs,
}

/// Sends tracing output to stderr, filtered by `RUST_LOG` (default `default`), so stdout stays the
/// command's own output: text, coloured only when stderr is a terminal (a log file or journal gets
/// no escape codes), or one JSON object a line with the event's fields at the top level.
pub fn init_tracing(default: &str, format: crate::app::LogFormat) {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = match format {
        crate::app::LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).try_init(),
        crate::app::LogFormat::Json => builder.json().flatten_event(true).with_ansi(false).try_init(),
    };
}

/// Builds the runtime and runs `fut` on it, returning its exit status (1 if no runtime).
pub fn block_on<F: std::future::Future<Output = i32>>(fut: F) -> i32 {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(fut),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            exit::FAILED
        }
    }
}

/// The `kua-deploy` binary's whole main.
pub fn main() -> i32 {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == crate::host::CHILD_GUARD) {
        return crate::host::child_guard_main(&args[2..]);
    }
    let cli = Cli::parse();
    // The server logs what it does; a client command's own output is what the user reads.
    match &cli.command {
        Command::Serve(args) => init_tracing("info", args.log_format),
        _ => init_tracing("warn", crate::app::LogFormat::Text),
    }
    block_on(run(cli))
}

/// The `release-app` binary's whole main.
pub fn release_app_main() -> i32 {
    let cli = ReleaseAppCli::parse();
    init_tracing("warn", crate::app::LogFormat::Text);
    block_on(release::run(cli.release))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
        ReleaseAppCli::command().debug_assert();
    }

    #[test]
    fn connection_options_may_follow_the_subcommand_arguments() {
        let cli = Cli::try_parse_from(["kua-deploy", "status", "hello", "--url", "http://h:1"]).unwrap();
        match cli.command {
            Command::Status(a) => assert_eq!(a.conn.url.as_deref(), Some("http://h:1")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn release_app_takes_the_same_options_as_release() {
        let cli = ReleaseAppCli::try_parse_from([
            "release-app",
            "hello",
            "--timeout",
            "2m",
            "--approve-migrations",
            "--reason",
            "hotfix",
        ])
        .unwrap();
        assert_eq!(cli.release.app.as_ref().map(|a| a.as_str()), Some("hello"));
        assert_eq!(cli.release.timeout.as_secs(), 120);
        assert!(cli.release.approve_migrations);
    }
}
