//! Step 2's command line: what the old process tells the transient container (`kua-deploy
//! self-recreate`) to do. What it does is the pipeline's (`pipeline/transient.rs`): the same
//! recreate, verify and rollback code as every deploy.

use crate::model::{AppName, BranchName, CommitSha, ImageId, ProjectName, ServiceName};

/// `kua-deploy self-recreate` options: what the transient container does.
#[derive(Debug, Clone, clap::Args)]
pub struct TransientArgs {
    #[arg(long)]
    pub project: ProjectName,
    #[arg(long)]
    pub service: ServiceName,
    #[arg(long)]
    pub image: ImageId,
    #[arg(long)]
    pub previous: Option<ImageId>,
    /// The commit whose Compose configuration ran with `previous`: checked out before it comes back.
    #[arg(long, requires = "branch")]
    pub previous_commit: Option<CommitSha>,
    #[arg(long)]
    pub branch: Option<BranchName>,
    /// When the deploy recorded the recreate as begun (RFC 3339).
    #[arg(long)]
    pub since: String,
    /// The Compose files; none: Compose discovers them in the checkout.
    #[arg(long = "file")]
    pub files: Vec<String>,
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long, default_value_t = 5)]
    pub stable: u64,
    /// The app (for `{app}` in the secrets command).
    #[arg(long)]
    pub app: Option<AppName>,
    /// The app's secrets command, as a JSON list: the transient container fetches the values
    /// itself, since they are never handed over.
    #[arg(long = "secrets-command", requires = "app")]
    pub secrets_command: Option<String>,
    #[arg(long = "secrets-format", default_value = "dotenv", value_parser = ["dotenv", "json"])]
    pub secrets_format: String,
    #[arg(long = "secrets-timeout", default_value_t = 30)]
    pub secrets_timeout: u64,
}
