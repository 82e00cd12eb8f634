//! Checked domain types: names, commits, refs, image IDs, phases and steps, and the deploy record
//! the API returns. No I/O here; everything from outside passes through one of these constructors
//! before it reaches a path, a command line or the database.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a value from outside was refused; the message says what a valid value looks like.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

macro_rules! string_newtype {
    ($(#[$m:meta])* $name:ident, $check:path) => {
        $(#[$m])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, utoipa::ToSchema)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            pub fn parse(s: &str) -> Result<Self, InvalidValue> {
                $check(s).map(|()| Self(s.to_owned()))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl std::str::FromStr for $name {
            type Err = InvalidValue;
            fn from_str(s: &str) -> Result<Self, InvalidValue> {
                Self::parse(s)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

fn check_name(kind: &str, s: &str, max: usize) -> Result<(), InvalidValue> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok && !s.contains("..") {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "{kind} {s:?} is not valid: use 1 to {max} letters, digits, '-', '_' or '.', starting with a letter or digit"
        )))
    }
}

fn check_app_name(s: &str) -> Result<(), InvalidValue> {
    check_name("app name", s, 63)
}

fn check_service_name(s: &str) -> Result<(), InvalidValue> {
    check_name("service name", s, 63)
}

fn check_project_name(s: &str) -> Result<(), InvalidValue> {
    // Compose project names: lowercase letters, digits, '-' and '_', starting with a letter or digit.
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().next().is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "Compose project name {s:?} is not valid: use lowercase letters, digits, '-' and '_', starting with a letter or digit"
        )))
    }
}

fn check_commit(s: &str) -> Result<(), InvalidValue> {
    if (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(())
    } else {
        Err(InvalidValue(format!(
            "commit {:?} is not a full object id: give 40 (SHA-1) or 64 (SHA-256) lowercase hex digits",
            truncate(s, 80)
        )))
    }
}

/// A branch name as `git check-ref-format --branch` would accept it, and never one that git could
/// read as an option.
fn check_branch(s: &str) -> Result<(), InvalidValue> {
    let bad = s.is_empty()
        || s.len() > 200
        || s.starts_with('-')
        || s.starts_with('/')
        || s.ends_with('/')
        || s.ends_with('.')
        || s.ends_with(".lock")
        || s.contains("..")
        || s.contains("//")
        || s.contains("@{")
        || s == "@"
        || s.split('/').any(|part| part.starts_with('.'))
        || s.chars().any(|c| c.is_control() || c.is_whitespace() || "~^:?*[\\".contains(c));
    if bad {
        Err(InvalidValue(format!(
            "branch {:?} is not a valid git branch name (no leading '-', spaces, '..', '~^:?*[\\', or '@{{')",
            truncate(s, 80)
        )))
    } else {
        Ok(())
    }
}

fn check_image_id(s: &str) -> Result<(), InvalidValue> {
    match s.strip_prefix("sha256:") {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) => Ok(()),
        _ => Err(InvalidValue(format!("image id {:?} is not of the form sha256:<64 hex>", truncate(s, 80)))),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(n).collect::<String>())
    }
}

string_newtype!(
    /// The name of an app in the registry; safe in URLs, paths and file names.
    AppName,
    check_app_name
);
string_newtype!(
    /// A Compose service name.
    ServiceName,
    check_service_name
);
string_newtype!(
    /// A Compose project name.
    ProjectName,
    check_project_name
);
string_newtype!(
    /// A full git object id (SHA-1 or SHA-256), lowercase hex: never an option, never abbreviated.
    CommitSha,
    check_commit
);
string_newtype!(
    /// A git branch name (without `refs/heads/`).
    BranchName,
    check_branch
);
string_newtype!(
    /// A local image ID, `sha256:<64 hex>`.
    ImageId,
    check_image_id
);

impl CommitSha {
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
    /// The all-zero id git uses for "no commit" (a branch deletion or creation).
    pub fn is_zero(&self) -> bool {
        self.0.bytes().all(|b| b == b'0')
    }
}

impl ImageId {
    /// `sha256:` and the first 12 hex digits, as `docker images` shows them.
    pub fn short(&self) -> &str {
        &self.0[..19]
    }
}

/// A deploy's id: a UUIDv7, so ids sort by creation time.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(transparent)]
#[schema(value_type = String, format = Uuid)]
pub struct DeployId(String);

impl DeployId {
    pub fn new() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
    pub fn parse(s: &str) -> Result<Self, InvalidValue> {
        uuid::Uuid::parse_str(s)
            .map(|u| Self(u.hyphenated().to_string()))
            .map_err(|_| InvalidValue(format!("deploy id {:?} is not a UUID", truncate(s, 80))))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for DeployId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for DeployId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

macro_rules! str_enum {
    ($(#[$m:meta])* $name:ident { $($variant:ident => $s:literal),+ $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $s),+ }
            }
            pub fn parse(s: &str) -> Option<Self> {
                match s { $($s => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

str_enum!(
    /// Where a deploy stands. The last five are terminal.
    Phase {
        Queued => "queued",
        Running => "running",
        AwaitingApproval => "awaiting_approval",
        SelfRecreatePending => "self_recreate_pending",
        Succeeded => "succeeded",
        Failed => "failed",
        RolledBack => "rolled_back",
        Interrupted => "interrupted",
        Cancelled => "cancelled",
    }
);

impl Phase {
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::RolledBack | Phase::Interrupted | Phase::Cancelled)
    }
}

str_enum!(
    /// The pipeline's steps, in the order they run.
    StepName {
        GitPull => "git_pull",
        MigrationGate => "migration_gate",
        Secrets => "secrets",
        Build => "build",
        Migrate => "migrate",
        Recreate => "recreate",
        Verify => "verify",
        Rollback => "rollback",
    }
);

str_enum!(
    StepStatus {
        Pending => "pending",
        Running => "running",
        Succeeded => "succeeded",
        Failed => "failed",
        Skipped => "skipped",
    }
);

str_enum!(
    /// What set a deploy going.
    TriggerSource {
        Api => "api",
        Webhook => "webhook",
    }
);

/// The trigger as the deploy object shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Trigger {
    pub source: TriggerSource,
    pub delivery: Option<String>,
    #[serde(rename = "ref")]
    pub git_ref: String,
    pub requested_commit: Option<CommitSha>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Step {
    pub name: StepName,
    pub status: StepStatus,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub detail: String,
}

/// What verify saw of one service's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceCheck {
    pub service: ServiceName,
    pub container_id: Option<String>,
    pub expected_image: ImageId,
    pub running_image: Option<String>,
    pub state: String,
    pub health: String,
    pub started_at: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyReport {
    pub ok: bool,
    pub recreate_started_at: String,
    pub services: Vec<ServiceCheck>,
}

pub type Images = BTreeMap<ServiceName, ImageId>;

/// One deploy, exactly as `GET /api/v1/deploys/{id}` returns it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Deploy {
    pub deploy_id: DeployId,
    pub app: AppName,
    pub phase: Phase,
    pub trigger: Trigger,
    pub commit_before: Option<CommitSha>,
    pub commit: Option<CommitSha>,
    pub created_at: String,
    pub started_at: Option<String>,
    pub finished_at: Option<String>,
    pub steps: Vec<Step>,
    /// The image ID built for each service.
    #[schema(inline)]
    pub images: Images,
    /// The image ID each service ran before the recreate: rollback brings these back.
    #[schema(inline)]
    pub previous_images: Images,
    pub verify: Option<VerifyReport>,
    pub error: Option<String>,
    /// The reason given by whoever triggered it.
    #[serde(default)]
    pub reason: Option<String>,
    /// Set when a newer trigger replaced this queued deploy.
    #[serde(default)]
    pub superseded_by: Option<DeployId>,
    /// The Compose project this deploy used, as resolved in the checkout (the registry's
    /// `project`, or what Compose makes of `name:`, `.env` and the directory).
    #[serde(default)]
    pub project: Option<ProjectName>,
    /// The Compose files it used, relative to the checkout, override file included.
    #[serde(default)]
    pub compose_files: Vec<String>,
    /// The commit whose Compose configuration ran before the recreate: rollback returns to it.
    #[serde(default)]
    pub previous_commit: Option<CommitSha>,
}

impl Deploy {
    pub fn step(&self, name: StepName) -> Option<&Step> {
        self.steps.iter().find(|s| s.name == name)
    }
    /// The step that is running now, if any.
    pub fn running_step(&self) -> Option<&Step> {
        self.steps.iter().find(|s| s.status == StepStatus::Running)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ContainerStatus {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub health: String,
    pub started_at: String,
    pub matches_last_deploy: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ServiceStatus {
    pub service: String,
    pub containers: Vec<ContainerStatus>,
}

/// `GET /api/v1/apps/{app}/runtime-status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuntimeStatus {
    pub app: AppName,
    pub host: String,
    pub git_head: Option<String>,
    pub last_deploy: Option<Deploy>,
    pub services: Vec<ServiceStatus>,
    pub drift: bool,
}

impl RuntimeStatus {
    /// The app's health in one word: its worst service decides.
    pub fn health(&self) -> AppHealth {
        let mut worst = AppHealth::Healthy;
        for s in &self.services {
            let here = if s.containers.is_empty() {
                AppHealth::Down
            } else if s.containers.iter().any(|c| c.state != "running" || c.health == "unhealthy") {
                AppHealth::Unhealthy
            } else if s.containers.iter().any(|c| c.health == "starting") {
                AppHealth::Starting
            } else {
                AppHealth::Healthy
            };
            worst = worst.max(here);
        }
        worst
    }
}

/// How an app's services are doing, as one word for a glance (the overview, a gauge). Ordered
/// from best to worst, so the worst of several is their maximum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AppHealth {
    /// Every service has its containers running, healthy where they have a healthcheck.
    Healthy,
    /// A container's healthcheck has not passed yet.
    Starting,
    /// A container is not running, or its healthcheck fails.
    Unhealthy,
    /// A service has no container at all.
    Down,
    /// The app's host or its engine could not be read.
    Unreachable,
}

impl fmt::Display for AppHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AppHealth::Healthy => "healthy",
            AppHealth::Starting => "starting",
            AppHealth::Unhealthy => "unhealthy",
            AppHealth::Down => "down",
            AppHealth::Unreachable => "unreachable",
        })
    }
}

/// One webhook delivery as recorded for an app: what came in and what became of it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Delivery {
    /// The provider's delivery id (`X-Forgejo-Delivery`, `X-GitHub-Delivery`, …), if it sent one.
    pub id: Option<String>,
    pub provider: String,
    pub event: String,
    pub repository: String,
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    pub after: Option<String>,
    /// `queued`, `duplicate` (seen before: answered with the original deploy) or `ignored`.
    pub outcome: String,
    pub reason: String,
    pub deploy_id: Option<DeployId>,
    pub received_at: String,
}

/// One line of a deploy's log, as the store keeps it and the API pages and streams it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LogLine {
    pub seq: i64,
    pub ts: String,
    pub stream: String,
    pub line: String,
}

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

/// Receives every line a command prints, already redacted. Defined here, below both `host`, which
/// feeds it, and `store`, whose `LogWriter` is one.
pub trait LogSink: Send + Sync {
    fn line(&self, stream: Stream, text: &str);
}

/// Which part of storage a problem is about; each kind is set and cleared on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// A write to the database failed, and none has succeeded since.
    Write,
    /// Copying the write-ahead log into the database file failed.
    Checkpoint,
    /// Keeping `kua.db.backup` up to date failed.
    Backup,
    /// The state dir's filesystem is full or read-only.
    Filesystem,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Problem {
    pub kind: ProblemKind,
    pub message: String,
    pub since: String,
}

/// What is wrong with storage, as `/healthz` answers it; the store produces it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StorageHealth {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub problems: Vec<Problem>,
    /// Deploys that stopped on a storage error and are recorded `failed` once writes work again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unrecorded_deploys: Vec<DeployId>,
    /// When `kua.db.backup` was last brought up to date (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup: Option<String>,
}

/// The current time as RFC 3339 with microseconds, UTC: the one format every timestamp uses.
pub fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// Parses an RFC 3339 time (Docker's nanosecond form included).
pub fn parse_time(s: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.with_timezone(&chrono::Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_app_s_health_is_that_of_its_worst_service() {
        let c = |state: &str, health: &str| ContainerStatus {
            id: "c".into(),
            name: "n".into(),
            image: "sha256:x".into(),
            state: state.into(),
            health: health.into(),
            started_at: String::new(),
            matches_last_deploy: true,
        };
        let status = |services: Vec<Vec<ContainerStatus>>| RuntimeStatus {
            app: AppName::parse("hello").unwrap(),
            host: "local".into(),
            git_head: None,
            last_deploy: None,
            services: services
                .into_iter()
                .enumerate()
                .map(|(i, containers)| ServiceStatus { service: format!("s{i}"), containers })
                .collect(),
            drift: false,
        };
        assert_eq!(
            status(vec![vec![c("running", "none")], vec![c("running", "healthy")]]).health(),
            AppHealth::Healthy
        );
        assert_eq!(
            status(vec![vec![c("running", "starting")], vec![c("running", "none")]]).health(),
            AppHealth::Starting
        );
        assert_eq!(
            status(vec![vec![c("running", "starting")], vec![c("exited", "none")]]).health(),
            AppHealth::Unhealthy
        );
        assert_eq!(status(vec![vec![c("running", "unhealthy")]]).health(), AppHealth::Unhealthy);
        assert_eq!(status(vec![vec![c("running", "unhealthy")], vec![]]).health(), AppHealth::Down);
    }

    #[test]
    fn commit_must_be_full_lowercase_hex() {
        assert!(CommitSha::parse(&"a".repeat(40)).is_ok());
        assert!(CommitSha::parse(&"0".repeat(64)).is_ok());
        assert!(CommitSha::parse("abc123").is_err());
        assert!(CommitSha::parse(&"A".repeat(40)).is_err());
        assert!(CommitSha::parse("--upload-pack=touch$IFS/tmp/pwned").is_err());
    }

    #[test]
    fn branch_names_that_git_could_read_as_options_are_refused() {
        assert!(BranchName::parse("main").is_ok());
        assert!(BranchName::parse("release/1.2").is_ok());
        for bad in ["-x", "--upload-pack=evil", "a..b", "a b", "x.lock", "", "a~1", "@{-1}"] {
            assert!(BranchName::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn app_names_cannot_escape_a_path() {
        assert!(AppName::parse("hello").is_ok());
        for bad in ["..", "../etc", "a/b", ".hidden", "", "a%2Fb", "-rf"] {
            assert!(AppName::parse(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn terminal_phases_are_the_last_five() {
        let terminal: Vec<_> = Phase::ALL.iter().filter(|p| p.is_terminal()).collect();
        assert_eq!(terminal.len(), 5);
        assert!(!Phase::AwaitingApproval.is_terminal());
    }

    #[test]
    fn docker_nanosecond_times_parse() {
        assert!(parse_time("2026-11-27T14:40:00.123456789Z").is_some());
        assert!(parse_time(&now_rfc3339()).is_some());
    }
}
