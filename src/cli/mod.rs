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

/// kua-deploy: push-to-deploy for Docker Compose apps.
#[derive(Debug, Parser)]
#[command(name = "kua-deploy", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the deploy service: admin API, webhooks and the per-app pipelines.
    Serve(crate::app::ServeArgs),
    /// Check a registry file and report every problem in it (exit 1 if any, 2 if unreadable).
    CheckConfig(CheckConfigArgs),
    /// Show an app's latest deploy and what runs now.
    Status(show::StatusArgs),
    /// List an app's deploys, newest first.
    History(show::HistoryArgs),
    /// Print a deploy's log; with --follow, until it ends (exit 0 only if it succeeded).
    Logs(show::LogsArgs),
    /// List the apps and their last deploy.
    Apps(show::AppsArgs),
    /// Let a deploy awaiting approval (migration gate, policy block) go on.
    Approve(control::DeployArgs),
    /// Cancel a queued, awaiting or running deploy (refused once its recreate began).
    Cancel(control::DeployArgs),
    /// Deploy an app and follow it to the end (the same as `release-app`).
    Release(release::ReleaseArgs),
    /// Deploy a small example app on the local Docker engine, end to end.
    Demo(demo::DemoArgs),
    /// Ask the local server's /healthz (for a container HEALTHCHECK): exit 0 if it answers 200.
    Health(health::HealthArgs),
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
    }
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
        eprintln!("error: cannot read {}: {e}", args.path.display());
        return exit::USAGE;
    }
    match crate::config::Registry::load(&args.path) {
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

/// `release-app [APP] [options]`: the release command as a binary of its own, for app repos.
#[derive(Debug, Parser)]
#[command(name = "release-app", version, about = "Deploy an app with kua-deploy and follow it to the end.")]
pub struct ReleaseAppCli {
    #[command(flatten)]
    pub release: release::ReleaseArgs,
}

/// Sends tracing output to stderr, filtered by `RUST_LOG` (default `default`), so stdout stays the
/// command's own output.
pub fn init_tracing(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // A second init (tests, embedding) keeps the first subscriber.
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
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
    init_tracing(if matches!(cli.command, Command::Serve(_)) { "info" } else { "warn" });
    block_on(run(cli))
}

/// The `release-app` binary's whole main.
pub fn release_app_main() -> i32 {
    let cli = ReleaseAppCli::parse();
    init_tracing("warn");
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
