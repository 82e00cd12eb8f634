//! The deploy pipeline: `git_pull → migration_gate → build → (migrate) → recreate → verify →
//! (rollback)`. [`run_deploy`] runs a deploy's pending steps in order, records each one, and ends
//! the deploy in an honest phase. Each step lives in its own file and only reads and writes the
//! [`DeployCtx`]; steps never call each other. [`queue`] decides which deploy runs when.

mod build;
mod git_pull;
mod migrate;
mod migration_gate;
pub mod queue;
mod recreate;
mod rollback;
pub mod runtime;
mod verify;

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::config::{AppConfig, MigrationPolicy};
use crate::docker::compose::Compose;
use crate::docker::DockerError;
use crate::git::{Git, GitError};
use crate::host::{Host, LogSink, RunError};
use crate::model::{CommitSha, Deploy, DeployId, Images, Phase, StepName, StepStatus};
use crate::selfupdate::SelfTarget;
use crate::store::{LogWriter, Store};

/// The steps a deploy of `app` plans when it is queued; `rollback` is added only if needed.
pub fn planned_steps(app: &AppConfig) -> Vec<StepName> {
    let mut steps = vec![StepName::GitPull, StepName::MigrationGate, StepName::Build];
    if matches!(app.migrations.as_ref().map(|m| &m.policy), Some(MigrationPolicy::Run { .. })) {
        steps.push(StepName::Migrate);
    }
    steps.extend([StepName::Recreate, StepName::Verify]);
    steps
}

/// Shared between a running deploy and whoever may cancel it. Cancel and the start of recreate
/// take the same lock, so a cancel either stops the deploy before recreate or is refused.
#[derive(Debug, Default)]
pub struct Control {
    pub cancel_requested: bool,
    pub recreate_began: bool,
}

pub type SharedControl = Arc<Mutex<Control>>;

/// What one step ended in.
#[derive(Debug)]
pub enum StepOutcome {
    Succeeded(String),
    Skipped(String),
    Failed(String),
    /// Stop here, keeping the app, until someone approves (migration gate).
    AwaitApproval(String),
    /// A command was killed because of cancel or shutdown.
    Stopped,
    /// kua-deploy's own recreate was handed to a transient container; the process that comes
    /// back ends the deploy.
    HandedOff,
}

impl From<GitError> for StepOutcome {
    fn from(e: GitError) -> Self {
        match e {
            GitError::Run(RunError::Cancelled { .. }) => StepOutcome::Stopped,
            e => StepOutcome::Failed(e.to_string()),
        }
    }
}

impl From<DockerError> for StepOutcome {
    fn from(e: DockerError) -> Self {
        match e {
            DockerError::Run(RunError::Cancelled { .. }) => StepOutcome::Stopped,
            e => StepOutcome::Failed(e.to_string()),
        }
    }
}

/// Everything a step may read or write while a deploy runs.
pub struct DeployCtx {
    pub store: Store,
    pub app: AppConfig,
    pub id: DeployId,
    pub requested_commit: Option<CommitSha>,
    pub host: Host,
    pub git: Git,
    pub compose: Compose,
    pub log: LogWriter,
    pub cancel: CancellationToken,
    pub control: SharedControl,
    pub commit_before: Option<CommitSha>,
    pub commit: Option<CommitSha>,
    pub images: Images,
    pub previous_images: Images,
    pub recreate_started_at: Option<String>,
    /// Set when this deploy's app is kua-deploy's own: recreate hands over instead.
    pub self_target: Option<SelfTarget>,
    /// The registry's `self` names this app (even if its container was not found).
    pub declared_self: bool,
}

impl DeployCtx {
    pub fn new(
        store: Store,
        app: AppConfig,
        deploy: &Deploy,
        host: Host,
        cancel: CancellationToken,
        control: SharedControl,
    ) -> Self {
        let git = Git::new(host.clone(), app.repo.clone());
        let compose = Compose::new(host.clone(), app.repo.clone(), app.project.clone(), app.compose_files.clone());
        Self {
            log: LogWriter::new(store.clone(), deploy.deploy_id.clone()),
            store,
            id: deploy.deploy_id.clone(),
            requested_commit: deploy.trigger.requested_commit.clone(),
            git,
            compose,
            host,
            cancel,
            control,
            commit_before: deploy.commit_before.clone(),
            commit: deploy.commit.clone(),
            images: deploy.images.clone(),
            previous_images: deploy.previous_images.clone(),
            recreate_started_at: deploy.verify.as_ref().map(|v| v.recreate_started_at.clone()),
            self_target: None,
            declared_self: false,
            app,
        }
    }

    fn sink(&self) -> &dyn LogSink {
        &self.log
    }

    /// Whether this deploy recreates kua-deploy itself.
    pub fn is_self(&self) -> bool {
        self.self_target.is_some() || self.declared_self
    }
}

async fn run_step(step: StepName, ctx: &mut DeployCtx) -> StepOutcome {
    match step {
        StepName::GitPull => git_pull::run(ctx).await,
        StepName::MigrationGate => migration_gate::run(ctx).await,
        StepName::Build => build::run(ctx).await,
        StepName::Migrate => migrate::run(ctx).await,
        StepName::Recreate => recreate::run(ctx).await,
        StepName::Verify => verify::run(ctx).await,
        StepName::Rollback => rollback::run(ctx).await,
    }
}

/// How a deploy's run ended, for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished(Phase),
    Paused,
}

/// Runs the deploy's pending steps and records the end. A store error ends the deploy as failed,
/// recorded as soon as storage takes writes again; a deploy is never left `running` by a live process.
pub async fn run_deploy(mut ctx: DeployCtx) -> RunEnd {
    let id = ctx.id.clone();
    let store = ctx.store.clone();
    match drive(&mut ctx).await {
        Ok(end) => end,
        Err(e) => {
            let msg = format!("kua-deploy could not record the deploy's state: {e}");
            tracing::error!(deploy = %id, "{msg}");
            store.end_failed_when_writable(&id, &msg);
            RunEnd::Finished(Phase::Failed)
        }
    }
}

async fn drive(ctx: &mut DeployCtx) -> rusqlite::Result<RunEnd> {
    let store = ctx.store.clone();
    let id = ctx.id.clone();
    if !store.transition(&id, &[Phase::Queued], Phase::Running, None)? {
        // Cancelled (or finished) between being picked and starting: nothing to do.
        let phase = store.deploy(&id)?.map(|d| d.phase).unwrap_or(Phase::Cancelled);
        return Ok(RunEnd::Finished(phase));
    }
    let deploy = store.deploy(&id)?.expect("a deploy being run exists");
    ctx.log.info(&format!("deploy {id} of {} on host {} started", ctx.app.name, ctx.host.label()));
    let pending: Vec<StepName> = deploy
        .steps
        .iter()
        .filter(|s| matches!(s.status, StepStatus::Pending | StepStatus::Running))
        .map(|s| s.name)
        .collect();

    for step in pending {
        // A cancel (or shutdown) that arrived while the last step ran without a command to kill
        // takes effect here, between steps; recreate checks it under the same lock as cancel.
        let go_on = if step == StepName::Recreate { begin_recreate(ctx) } else { !stop_requested(ctx) };
        if !go_on {
            return stop_before(ctx, step);
        }
        store.step_start(&id, step, "")?;
        ctx.log.info(&format!("step {step} started"));
        let outcome = run_step(step, ctx).await;
        match outcome {
            StepOutcome::Succeeded(detail) => {
                ctx.log.info(&format!("step {step} succeeded: {detail}"));
                store.step_finish(&id, step, StepStatus::Succeeded, &detail)?;
            }
            StepOutcome::Skipped(detail) => {
                ctx.log.info(&format!("step {step} skipped: {detail}"));
                store.step_finish(&id, step, StepStatus::Skipped, &detail)?;
            }
            StepOutcome::AwaitApproval(_) if stop_requested(ctx) => return finish_stopped(ctx, step),
            StepOutcome::AwaitApproval(detail) => {
                ctx.log.info(&format!("step {step} waits for approval: {detail}"));
                // The gate stays `running` (it holds the deploy), its detail saying what to approve.
                store.step_detail(&id, step, &detail)?;
                store.transition(&id, &[Phase::Running], Phase::AwaitingApproval, None)?;
                return Ok(RunEnd::Paused);
            }
            StepOutcome::Stopped => return finish_stopped(ctx, step),
            StepOutcome::HandedOff => return Ok(RunEnd::Paused),
            StepOutcome::Failed(detail) => {
                ctx.log.info(&format!("step {step} failed: {detail}"));
                store.step_finish(&id, step, StepStatus::Failed, &detail)?;
                // kua-deploy's own recreate that failed never replaced this process: nothing to undo,
                // and recreating the previous image would only restart it.
                if matches!(step, StepName::Recreate | StepName::Verify) && !ctx.is_self() {
                    return roll_back(ctx, step, detail).await;
                }
                return finish(
                    ctx,
                    Phase::Failed,
                    Some(format!("{step} failed: {detail}")),
                    "not run: an earlier step failed",
                );
            }
        }
    }
    finish(ctx, Phase::Succeeded, None, "")
}

fn stop_requested(ctx: &DeployCtx) -> bool {
    ctx.cancel.is_cancelled() || ctx.control.lock().unwrap_or_else(|e| e.into_inner()).cancel_requested
}

/// A stop is a user's cancel (→ `cancelled`, possible only before recreate) or a shutdown
/// (→ `interrupted`); `when` says where in the deploy it happened.
fn stopped(ctx: &DeployCtx, when: &str) -> (Phase, String) {
    if ctx.control.lock().unwrap_or_else(|e| e.into_inner()).cancel_requested {
        (Phase::Cancelled, format!("cancelled {when}; nothing was recreated"))
    } else {
        (Phase::Interrupted, format!("interrupted: kua-deploy stopped {when}"))
    }
}

/// Ends the deploy before `step` starts.
fn stop_before(ctx: &DeployCtx, step: StepName) -> rusqlite::Result<RunEnd> {
    let (phase, msg) = stopped(ctx, &format!("before step {step}"));
    finish(ctx, phase, Some(msg), "not run")
}

/// Marks that recreate began, unless a cancel got there first.
fn begin_recreate(ctx: &DeployCtx) -> bool {
    let mut c = ctx.control.lock().unwrap_or_else(|e| e.into_inner());
    if c.cancel_requested || ctx.cancel.is_cancelled() {
        return false;
    }
    c.recreate_began = true;
    true
}

fn finish(ctx: &DeployCtx, phase: Phase, error: Option<String>, skip_detail: &str) -> rusqlite::Result<RunEnd> {
    // The last log line is written before the phase ends, so a follower sees it before the end.
    ctx.log.info(&format!("deploy ended: {phase}{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()));
    ctx.store.close_open_steps(&ctx.id, skip_detail)?;
    ctx.store.transition(&ctx.id, &[Phase::Running], phase, error.as_deref())?;
    Ok(RunEnd::Finished(phase))
}

/// Ends the deploy after `step`'s command was killed, or a cancel came while it ran.
fn finish_stopped(ctx: &DeployCtx, step: StepName) -> rusqlite::Result<RunEnd> {
    let (phase, msg) = stopped(ctx, &format!("during step {step}"));
    ctx.store.step_finish(&ctx.id, step, StepStatus::Failed, &msg)?;
    finish(ctx, phase, Some(msg), "not run")
}

async fn roll_back(ctx: &mut DeployCtx, failed: StepName, why: String) -> rusqlite::Result<RunEnd> {
    let error = format!("{failed} failed: {why}");
    if !ctx.app.rollback {
        return finish(ctx, Phase::Failed, Some(format!("{error}; rollback is off for this app")), "not run");
    }
    ctx.store.step_start(&ctx.id, StepName::Rollback, "")?;
    ctx.log.info("step rollback started");
    match rollback::run(ctx).await {
        StepOutcome::Succeeded(detail) => {
            ctx.store.step_finish(&ctx.id, StepName::Rollback, StepStatus::Succeeded, &detail)?;
            finish(ctx, Phase::RolledBack, Some(format!("{error}; rolled back: {detail}")), "not run")
        }
        StepOutcome::Skipped(detail) => {
            ctx.store.step_finish(&ctx.id, StepName::Rollback, StepStatus::Skipped, &detail)?;
            finish(ctx, Phase::Failed, Some(format!("{error}; no rollback: {detail}")), "not run")
        }
        StepOutcome::Failed(detail) | StepOutcome::AwaitApproval(detail) => {
            ctx.store.step_finish(&ctx.id, StepName::Rollback, StepStatus::Failed, &detail)?;
            finish(ctx, Phase::Failed, Some(format!("{error}; rollback failed too: {detail}")), "not run")
        }
        StepOutcome::Stopped | StepOutcome::HandedOff => finish_stopped(ctx, StepName::Rollback),
    }
}
