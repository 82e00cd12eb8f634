//! The git commands the pipeline needs, on the app's host. Refs and commits reach git only as
//! checked newtypes and after `--end-of-options` where git accepts it, so nothing from a trigger
//! can become an option.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::host::{Cmd, Host, LogSink, Output, RunError};
use crate::model::{BranchName, CommitSha};

const FETCH_TIMEOUT: Duration = Duration::from_secs(300);
const LOCAL_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("git printed {0:?} where a commit id was expected")]
    BadOutput(String),
}

/// A checkout on a host.
#[derive(Clone)]
pub struct Git {
    host: Host,
    repo: PathBuf,
}

impl Git {
    pub fn new(host: Host, repo: PathBuf) -> Self {
        Self { host, repo }
    }

    fn cmd<'a>(&self, args: impl IntoIterator<Item = &'a str>) -> Cmd {
        let mut argv = vec!["git".to_owned()];
        argv.extend(args.into_iter().map(str::to_owned));
        Cmd::new(argv).cwd(&self.repo).timeout(LOCAL_TIMEOUT).env("GIT_TERMINAL_PROMPT", "0").env("LC_ALL", "C")
    }

    async fn ok(
        &self,
        what: &str,
        cmd: Cmd,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Output, GitError> {
        Ok(self.host.run_ok(what, &cmd, cancel, log).await?)
    }

    async fn commit_of(&self, what: &str, rev: &str) -> Result<CommitSha, GitError> {
        let spec = format!("{rev}^{{commit}}");
        let out = self
            .ok(
                what,
                self.cmd(["rev-parse", "--verify", "--quiet", "--end-of-options", &spec]),
                &CancellationToken::new(),
                &crate::host::NoLog,
            )
            .await?;
        let text = out.stdout.trim();
        CommitSha::parse(text).map_err(|_| GitError::BadOutput(text.to_owned()))
    }

    /// The commit checked out now.
    pub async fn head(&self) -> Result<CommitSha, GitError> {
        self.commit_of("reading HEAD of the checkout", "HEAD").await
    }

    /// Fetches `branch` from `origin` into `refs/remotes/origin/<branch>`.
    pub async fn fetch(
        &self,
        branch: &BranchName,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), GitError> {
        let refspec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        let cmd = self.cmd(["fetch", "--no-tags", "--prune", "origin", &refspec]).timeout(FETCH_TIMEOUT);
        self.ok(&format!("git fetch origin {branch}"), cmd, cancel, log).await.map(drop)
    }

    /// The tip of `origin/<branch>` as last fetched.
    pub async fn remote_tip(&self, branch: &BranchName) -> Result<CommitSha, GitError> {
        self.commit_of(&format!("finding origin/{branch}"), &format!("refs/remotes/origin/{branch}")).await
    }

    /// Whether `commit` exists here and is reachable from `origin/<branch>`.
    pub async fn is_on_branch(&self, commit: &CommitSha, branch: &BranchName) -> Result<bool, GitError> {
        let tip = format!("refs/remotes/origin/{branch}");
        let out = self.host.query(&self.cmd(["merge-base", "--is-ancestor", commit.as_str(), &tip])).await?;
        match out.code {
            Some(0) => Ok(true),
            // 1: not an ancestor; 128: an object git does not have (never fetched, so not on the branch).
            Some(1) | Some(128) => Ok(false),
            _ => Err(GitError::Failed { what: "git merge-base".into(), detail: out.last_line() }),
        }
    }

    /// Tracked files with local changes (staged or not); untracked files do not count.
    pub async fn local_changes(&self) -> Result<Vec<String>, GitError> {
        let out = self
            .ok(
                "git status",
                self.cmd(["status", "--porcelain", "--untracked-files=no"]),
                &CancellationToken::new(),
                &crate::host::NoLog,
            )
            .await?;
        Ok(out.stdout.lines().filter(|l| !l.trim().is_empty()).map(|l| l.trim().to_owned()).collect())
    }

    /// Points the local `branch` at `commit` and checks it out. Git refuses, and changes nothing,
    /// if that would overwrite a file it does not track.
    pub async fn checkout(
        &self,
        branch: &BranchName,
        commit: &CommitSha,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), GitError> {
        let cmd = self.cmd(["checkout", "--quiet", "-B", branch.as_str(), commit.as_str()]);
        self.ok(&format!("git checkout {}", commit.short()), cmd, cancel, log).await.map(drop)
    }

    /// Files under `paths` that differ between two commits.
    pub async fn changed_files(
        &self,
        from: &CommitSha,
        to: &CommitSha,
        paths: &[String],
        cancel: &CancellationToken,
    ) -> Result<Vec<String>, GitError> {
        let mut args = vec!["diff", "--name-only", "--no-renames", from.as_str(), to.as_str(), "--"];
        args.extend(paths.iter().map(String::as_str));
        let out = self.ok("git diff", self.cmd(args), cancel, &crate::host::NoLog).await?;
        Ok(out.stdout.lines().filter(|l| !l.is_empty()).map(str::to_owned).collect())
    }
}
