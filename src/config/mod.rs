//! The registry (`deploy-registry.json`): strict JSON read with positions and checked as a whole, so
//! that `check-config` lists every problem with its app, key and line:column in one pass.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

pub use crate::host::{HostSpec, SshHost};
use crate::model::{AppName, BranchName, ProjectName, ServiceName};

pub const DEFAULT_PATH: &str = "deploy-registry.json";

const DEFAULT_BRANCH: &str = "main";
const DEFAULT_TIMEOUT_S: u64 = 120;
const DEFAULT_STABLE_S: u64 = 5;
const MAX_TIMEOUT_S: u64 = 3600;
const MAX_STABLE_S: u64 = 600;

const DEFAULT_SECRETS_TIMEOUT_S: u64 = 30;
const MAX_SECRETS_TIMEOUT_S: u64 = 600;

/// How many deploys may run at once on one host, unless the registry says otherwise: a build is
/// CPU- and disk-heavy, and a small server with two cores building three images at once slows
/// every one of them (and the apps it serves) more than it gains.
pub const DEFAULT_DEPLOYS_PER_HOST: usize = 2;
/// How many deploys may run at once in all: each holds a few processes, pipes and a log writer
/// on this server, and most of them wait on remote hosts; eight keep a fleet of a handful of
/// servers busy without letting a burst of pushes fork hundreds of `ssh` and `docker` processes.
pub const DEFAULT_DEPLOYS: usize = 8;
const MAX_DEPLOYS: u64 = 1000;

const TOP_KEYS: &[&str] = &["apps", "hosts", "self", "secrets", "status", "notify", "public_url", "limits"];
const LIMITS_KEYS: &[&str] = &["deploys", "deploys_per_host"];
const APP_KEYS: &[&str] = &[
    "host",
    "repo",
    "branch",
    "compose_files",
    "project",
    "services",
    "migrations",
    "verify",
    "rollback",
    "webhook",
    "secrets",
    "status",
    "notify",
];
const SECRETS_KEYS: &[&str] = &["command", "format", "timeout_s"];
const HOST_KEYS: &[&str] = &["ssh", "identity_file", "known_hosts_file", "max_deploys"];
const MIGRATIONS_KEYS: &[&str] = &["paths", "policy", "service", "command"];
const VERIFY_KEYS: &[&str] = &["timeout_s", "stable_s"];
const STATUS_KEYS: &[&str] = &["kind", "api", "token_env", "token_file", "repository"];
const NOTIFY_KEYS: &[&str] = &["kind", "url", "format", "events"];
const WEBHOOK_KEYS: &[&str] = &["repository", "secret_env", "secret_file"];

/// The whole registry, checked: every app in it is usable as it stands.
#[derive(Debug, Clone)]
pub struct Registry {
    pub path: PathBuf,
    pub apps: BTreeMap<AppName, AppConfig>,
    pub hosts: BTreeMap<String, SshHost>,
    pub self_app: Option<AppName>,
    /// Where people reach this server (`https://deploy.example`, no trailing `/`): commit statuses
    /// link to `<public_url>/api/v1/deploys/<id>`.
    pub public_url: Option<String>,
    pub limits: DeployLimits,
}

/// How many deploys may run at once (`limits`, and a host's `max_deploys`). A deploy holds a slot
/// of its host and one of the whole server from the moment it leaves `queued` until it ends or
/// parks awaiting approval.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeployLimits {
    /// On all hosts together (`limits.deploys`).
    pub deploys: usize,
    /// On each host that does not set its own (`limits.deploys_per_host`).
    pub deploys_per_host: usize,
    /// `hosts.<name>.max_deploys`, by host name.
    pub per_host: BTreeMap<String, usize>,
}

impl Default for DeployLimits {
    fn default() -> Self {
        Self { deploys: DEFAULT_DEPLOYS, deploys_per_host: DEFAULT_DEPLOYS_PER_HOST, per_host: BTreeMap::new() }
    }
}

impl DeployLimits {
    /// How many deploys may run at once on `host`. Hosts are told apart by their label (the
    /// `hosts` map's name, the `ssh://` URL, or `local`), as deploys and runtime-status name them.
    pub fn for_host(&self, host: &HostSpec) -> usize {
        self.per_host.get(&host.label()).copied().unwrap_or(self.deploys_per_host)
    }
}

#[derive(Debug, Clone)]
pub struct AppConfig {
    pub name: AppName,
    pub host: HostSpec,
    /// Absolute path of the checkout on the host.
    pub repo: PathBuf,
    pub branch: BranchName,
    /// Relative to `repo`; never absolute and never with a `..` component. None: Compose
    /// discovers the files in the checkout as `docker compose` run there would.
    pub compose_files: Option<Vec<String>>,
    /// None: the project Compose resolves in the checkout (`name:`, `.env`, the directory).
    pub project: Option<ProjectName>,
    /// Not empty, no duplicates.
    pub services: Vec<ServiceName>,
    pub migrations: Option<MigrationsConfig>,
    pub verify: VerifyConfig,
    pub rollback: bool,
    pub webhook: Option<WebhookConfig>,
    /// The vault command whose output the app's Compose commands get as environment (the
    /// top-level `secrets` unless the app sets its own or `null`).
    pub secrets: Option<SecretsConfig>,
    /// Where the deployed commit's status goes (the top-level `status` unless the app sets its own
    /// or `null`).
    pub status: Option<StatusConfig>,
    /// Who hears of the app's deploys (the top-level `notify` unless the app sets its own; `null`
    /// or `[]` for nobody).
    pub notify: Vec<NotifyTarget>,
}

/// `status`: a forge's commit status API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatusConfig {
    pub forge: Forge,
    /// The API's base URL, no trailing `/` (`https://git.example/api/v1`, `https://api.github.com`,
    /// `https://gitlab.example/api/v4`).
    pub api: String,
    pub token: SecretSource,
    /// `owner/name` (Forgejo, Gitea, GitHub), or a GitLab project's path or numeric id.
    pub repository: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forge {
    Forgejo,
    Gitea,
    GitHub,
    GitLab,
}

impl Forge {
    pub fn as_str(self) -> &'static str {
        match self {
            Forge::Forgejo => "forgejo",
            Forge::Gitea => "gitea",
            Forge::GitHub => "github",
            Forge::GitLab => "gitlab",
        }
    }
}

/// One `notify` target: an incoming webhook.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotifyTarget {
    /// May carry a token (query, userinfo, path): never shown whole.
    pub url: String,
    pub format: NotifyFormat,
    pub events: Vec<NotifyEvent>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyFormat {
    /// The deploy object as the API answers it.
    Json,
    /// `{"text": …}`: Slack, Mattermost, Rocket.Chat incoming webhooks.
    Slack,
    /// A plain-text body with ntfy's `Title`, `Priority` and `Tags` headers.
    Ntfy,
}

/// What a deploy did that someone may want to hear of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyEvent {
    Failed,
    RolledBack,
    Succeeded,
    AwaitingApproval,
    Cancelled,
    Interrupted,
}

impl NotifyEvent {
    pub const ALL: [NotifyEvent; 6] = [
        NotifyEvent::Failed,
        NotifyEvent::RolledBack,
        NotifyEvent::Succeeded,
        NotifyEvent::AwaitingApproval,
        NotifyEvent::Cancelled,
        NotifyEvent::Interrupted,
    ];
    /// What a target hears of unless it lists its own `events`.
    pub const DEFAULT: [NotifyEvent; 4] =
        [NotifyEvent::Failed, NotifyEvent::RolledBack, NotifyEvent::Succeeded, NotifyEvent::AwaitingApproval];

    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Failed => "failed",
            NotifyEvent::RolledBack => "rolled_back",
            NotifyEvent::Succeeded => "succeeded",
            NotifyEvent::AwaitingApproval => "awaiting_approval",
            NotifyEvent::Cancelled => "cancelled",
            NotifyEvent::Interrupted => "interrupted",
        }
    }
}

/// `secrets`: a command run on the app's host, no shell, whose output holds the app's secrets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretsConfig {
    /// The argv; `{app}` in a word becomes the app's name.
    pub command: Vec<String>,
    pub format: SecretsFormat,
    pub timeout_s: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecretsFormat {
    /// `KEY=VALUE` lines as dotenv tools read them.
    Dotenv,
    /// One JSON object of strings.
    Json,
}

impl SecretsConfig {
    /// The argv for `app`.
    pub fn argv(&self, app: &AppName) -> Vec<String> {
        self.command.iter().map(|w| w.replace("{app}", app.as_str())).collect()
    }
}

#[derive(Debug, Clone)]
pub struct MigrationsConfig {
    /// Relative to the app's `repo`.
    pub paths: Vec<String>,
    pub policy: MigrationPolicy,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MigrationPolicy {
    Allow,
    Block,
    Run { service: ServiceName, command: Vec<String> },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerifyConfig {
    pub timeout_s: u64,
    pub stable_s: u64,
}

impl Default for VerifyConfig {
    fn default() -> Self {
        Self { timeout_s: DEFAULT_TIMEOUT_S, stable_s: DEFAULT_STABLE_S }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookConfig {
    /// `owner/name`, or `group/sub/name` for a project in nested groups (GitLab).
    pub repository: String,
    pub secret: SecretSource,
}

/// Where a secret lives; the registry never holds the secret itself, and `Debug` shows only where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// The secret, or `None` when it is unset, empty or unreadable: a caller must then refuse, never
    /// fall back to an empty key.
    pub fn read(&self) -> Option<String> {
        let value = match self {
            SecretSource::Env(name) => std::env::var(name).ok()?,
            SecretSource::File(path) => {
                let mut s = std::fs::read_to_string(path).ok()?;
                // Editors and `echo` add a final newline that is not part of the secret.
                while s.ends_with('\n') || s.ends_with('\r') {
                    s.pop();
                }
                s
            }
        };
        (!value.is_empty()).then_some(value)
    }
}

/// One problem in the registry. `line` and `column` are 1-based (characters, not bytes); both are 0
/// when the file could not be read at all.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The registry file, so that each error prints as `file:line:col: ...` on its own.
    pub path: PathBuf,
    pub line: usize,
    pub column: usize,
    pub app: Option<String>,
    /// Dotted path from the top of the file, e.g. `apps.hello.verify.timeout_s`.
    pub key: String,
    pub message: String,
}

impl ConfigError {
    /// The key below the app (`verify.timeout_s`), or the whole key for top-level ones.
    pub fn key_in_app(&self) -> &str {
        match &self.app {
            Some(app) => {
                let prefix = format!("apps.{app}");
                match self.key.strip_prefix(prefix.as_str()) {
                    Some(rest) => rest.strip_prefix('.').unwrap_or(rest),
                    None => &self.key,
                }
            }
            None => &self.key,
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:", self.path.display())?;
        if self.line > 0 {
            write!(f, "{}:{}:", self.line, self.column)?;
        }
        if let Some(app) = &self.app {
            write!(f, " app {app:?}:")?;
        }
        let key = self.key_in_app();
        if !key.is_empty() {
            write!(f, " key {key:?}:")?;
        }
        write!(f, " {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// Every problem found in one registry file, in file order.
#[derive(Debug)]
pub struct ConfigErrors {
    pub path: PathBuf,
    pub errors: Vec<ConfigError>,
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl Registry {
    pub fn load(path: &Path) -> Result<Registry, ConfigErrors> {
        let unreadable = |message: String| ConfigErrors {
            path: path.to_owned(),
            errors: vec![ConfigError {
                path: path.to_owned(),
                line: 0,
                column: 0,
                app: None,
                key: String::new(),
                message,
            }],
        };
        let bytes = std::fs::read(path).map_err(|e| {
            unreadable(format!(
                "cannot read the registry: {e}; check the path (the default is ./{DEFAULT_PATH}, or pass --config PATH)"
            ))
        })?;
        let text = String::from_utf8(bytes)
            .map_err(|e| unreadable(format!("the registry is not UTF-8 text ({e}); save it as UTF-8")))?;
        Self::parse(&text, path)
    }

    pub fn parse(text: &str, path: &Path) -> Result<Registry, ConfigErrors> {
        check::check(text, path).map_err(|errors| ConfigErrors { path: path.to_owned(), errors })
    }

    pub fn app(&self, name: &AppName) -> Option<&AppConfig> {
        self.apps.get(name)
    }
}

mod check;
#[cfg(test)]
mod tests;
