//! The deploy pipeline: `git_pull → migration_gate → build → (migrate) → recreate → verify →
//! (rollback)`. [`run_deploy`] runs a deploy's pending steps in order, records each one, and ends
//! the deploy in an honest phase. Each step lives in its own file and only reads and writes the
//! [`DeployCtx`]; steps never call each other. [`queue`] decides which deploy runs when.

mod build;
pub mod complete;
mod git_pull;
mod migrate;
mod migration_gate;
pub mod monitor;
pub mod queue;
mod recreate;
mod rollback;
pub mod runtime;
#[cfg(test)]
mod scenarios;
mod secrets;
mod slots;
pub mod transient;
mod verify;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{AppConfig, MigrationPolicy};
use crate::git::{Git, GitError};
use crate::host::{Host, LogSink, RunError};
use crate::model::{CommitSha, Deploy, DeployId, Images, Phase, ProjectName, StepName, StepStatus, VerifyReport};
use crate::store::{LogWriter, Store};
use crate::target::{HandOffEnd, HandOffRequest, Limits, SelfHandOff, Started, Target, TargetError};

/// The steps a deploy of `app` plans when it is queued; `rollback` is added only if needed.
pub fn planned_steps(app: &AppConfig) -> Vec<StepName> {
    let mut steps = vec![StepName::GitPull, StepName::MigrationGate];
    if app.secrets.is_some() {
        steps.push(StepName::Secrets);
    }
    steps.push(StepName::Build);
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
    /// Failed before the step touched the app (recreate could not record what runs): no rollback.
    NotStarted(String),
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

impl From<TargetError> for StepOutcome {
    fn from(e: TargetError) -> Self {
        match e {
            TargetError::Stopped => StepOutcome::Stopped,
            TargetError::Failed(why) => StepOutcome::Failed(why),
        }
    }
}

/// What a step learned that the deploy's record must keep. Steps hand facts to the runner
/// ([`DeployCtx::record`]), which writes them; a step never writes the store itself.
#[derive(Debug, Clone)]
pub enum Fact {
    /// git_pull: what was checked out before, and the target.
    Commits { before: CommitSha, commit: CommitSha },
    /// git_pull: the project and files the checkout gives.
    Plan { project: ProjectName, files: Vec<String> },
    /// build: each service's image ID.
    Images(Images),
    /// recreate, before it touches anything: what ran, and when the recreate began. Written before
    /// the recreate starts, so that a restarted server knows to resume the deploy.
    RecreateBegun { previous: Images, previous_commit: Option<CommitSha>, at: String },
    /// verify: what it saw.
    Verified(VerifyReport),
}

/// What recreate, verify and rollback work on: the runtime, the checkout, verify's limits, and who
/// hears of the process that applies images. A deploy lends one from its [`DeployCtx`]; the
/// self-deploy's transient container, which has no store, makes its own ([`transient`]) — so both
/// run the same recreate, verify and rollback code.
pub struct Runtime<'a> {
    pub target: &'a dyn Target,
    pub git: &'a Git,
    pub limits: Limits,
    pub cancel: &'a CancellationToken,
    pub log: &'a dyn LogSink,
    /// Told the process that applies images as soon as it runs.
    pub started: Started<'a>,
}

/// Everything a step may read or write while a deploy runs. The store is the runner's: steps
/// read and record through the methods below.
pub struct DeployCtx {
    store: Store,
    pub app: AppConfig,
    pub id: DeployId,
    pub requested_commit: Option<CommitSha>,
    pub host: Host,
    pub git: Git,
    /// The app's runtime: every step that builds, recreates or watches goes through it.
    pub target: Arc<dyn Target>,
    pub log: LogWriter,
    pub cancel: CancellationToken,
    pub control: SharedControl,
    pub commit_before: Option<CommitSha>,
    pub commit: Option<CommitSha>,
    pub images: Images,
    pub previous_images: Images,
    /// The commit whose Compose configuration ran before the recreate.
    pub previous_commit: Option<CommitSha>,
    /// The project git_pull resolved (recorded on the deploy).
    pub project: Option<ProjectName>,
    pub recreate_started_at: Option<String>,
    /// This process took the deploy over from one that died in recreate, verify or rollback.
    pub resuming: bool,
    /// git_pull moved the checkout in this run (even if the step failed after that).
    pub checked_out: bool,
    /// Set when this deploy's app is kua-deploy's own: recreate hands over instead.
    pub self_handoff: Option<Arc<dyn SelfHandOff>>,
    /// The registry's `self` names this app (even if its container was not found).
    pub declared_self: bool,
    /// Records the process that applies images (see [`Runtime::started`]).
    record_process: Box<dyn Fn(String) + Send + Sync>,
}

impl DeployCtx {
    pub fn new(
        store: Store,
        app: AppConfig,
        deploy: &Deploy,
        host: Host,
        cancel: CancellationToken,
        control: SharedControl,
        target: Arc<dyn Target>,
    ) -> Self {
        let git = Git::new(host.clone(), app.repo.clone());
        let (recorder, id) = (store.clone(), deploy.deploy_id.clone());
        let record_process = Box::new(move |process: String| {
            if let Err(e) = recorder.set_recreate_process(&id, Some(&process)) {
                tracing::warn!(deploy = %id, "cannot record the recreate process {process}: {e}");
            }
        });
        Self {
            record_process,
            log: LogWriter::new(store.clone(), deploy.deploy_id.clone()),
            store,
            id: deploy.deploy_id.clone(),
            requested_commit: deploy.trigger.requested_commit.clone(),
            git,
            target,
            host,
            cancel,
            control,
            commit_before: deploy.commit_before.clone(),
            commit: deploy.commit.clone(),
            images: deploy.images.clone(),
            previous_images: deploy.previous_images.clone(),
            previous_commit: deploy.previous_commit.clone(),
            project: deploy.project.clone(),
            recreate_started_at: None,
            resuming: false,
            checked_out: false,
            self_handoff: None,
            declared_self: false,
            app,
        }
    }

    fn sink(&self) -> &dyn LogSink {
        &self.log
    }

    /// The deploy's [`Runtime`]; the process that applies images is recorded on the deploy as soon
    /// as it runs, so a restarted server can wait for it.
    fn runtime(&self) -> Runtime<'_> {
        Runtime {
            target: self.target.as_ref(),
            git: &self.git,
            limits: Limits {
                timeout: Duration::from_secs(self.app.verify.timeout_s),
                stable: Duration::from_secs(self.app.verify.stable_s),
            },
            cancel: &self.cancel,
            log: &self.log,
            started: &*self.record_process,
        }
    }

    /// Writes `fact` into the deploy's record now; the error says what could not be recorded.
    pub fn record(&self, fact: Fact) -> Result<(), String> {
        let (what, result) = match &fact {
            Fact::Commits { before, commit } => ("the commits", self.store.set_commits(&self.id, Some(before), commit)),
            Fact::Plan { project, files } => ("the Compose project", self.store.set_compose(&self.id, project, files)),
            Fact::Images(images) => ("the image IDs", self.store.set_images(&self.id, images)),
            Fact::RecreateBegun { previous, previous_commit, at } => {
                ("the previous images", self.store.set_recreate_begun(&self.id, previous, previous_commit.as_ref(), at))
            }
            Fact::Verified(report) => ("the verify result", self.store.set_verify(&self.id, report)),
        };
        result.map_err(|e| format!("cannot record {what}: {e}"))
    }

    /// Whether some earlier deploy of the app checked `commit` out.
    pub fn was_deployed(&self, commit: &CommitSha) -> Result<bool, String> {
        self.store.was_deployed(&self.app.name, commit).map_err(|e| format!("cannot read the app's deploys: {e}"))
    }

    /// The commit the app's last successful deploy ran.
    pub fn last_succeeded_commit(&self) -> Result<Option<CommitSha>, String> {
        match self.store.last_succeeded(&self.app.name) {
            Ok(d) => Ok(d.and_then(|d| d.commit)),
            Err(e) => Err(format!("cannot read the last deploy: {e}")),
        }
    }

    /// Whether the trigger approved migrations beforehand.
    pub fn migrations_approved(&self) -> Result<bool, String> {
        self.store.migrations_approved(&self.id).map_err(|e| format!("cannot read the approval: {e}"))
    }

    /// The commit the app's containers were made from by the last deploy that ended well.
    pub fn running_commit(&self) -> Result<Option<CommitSha>, String> {
        self.store.running_commit(&self.app.name).map_err(|e| format!("cannot read the app's last deploy: {e}"))
    }

    /// Hands kua-deploy's own recreate over (the self app's recreate step).
    async fn hand_off_self(&self, handoff: &dyn SelfHandOff, at: String) -> StepOutcome {
        let Some(image) = self.images.get(handoff.service()).cloned() else {
            return StepOutcome::Failed("the build did not record an image for kua-deploy's own service".into());
        };
        let Some(project) = self.project.clone() else {
            return StepOutcome::Failed("git_pull did not record the Compose project".into());
        };
        let req = HandOffRequest {
            store: &self.store,
            id: &self.id,
            app: &self.app,
            project,
            previous_commit: self.previous_commit.clone(),
            host: self.host.clone(),
            image,
            previous: self.previous_images.get(handoff.service()).cloned(),
            recreate_started_at: at,
            cancel: &self.cancel,
            log: &self.log,
        };
        match handoff.hand_off(req).await {
            HandOffEnd::Replaced => StepOutcome::HandedOff,
            HandOffEnd::Failed(why) => StepOutcome::Failed(why),
        }
    }

    /// Hands a vault's values to the runtime and to every redactor of this deploy.
    pub fn use_secrets(&mut self, vars: &[(String, String)]) {
        self.target.use_secrets(vars);
        self.host = self.host.with_secrets(vars.iter().map(|(_, v)| v.clone()));
        self.git = Git::new(self.host.clone(), self.app.repo.clone());
    }

    /// Whether this deploy recreates kua-deploy itself.
    pub fn is_self(&self) -> bool {
        self.self_handoff.is_some() || self.declared_self
    }
}

async fn run_step(step: StepName, ctx: &mut DeployCtx) -> StepOutcome {
    match step {
        StepName::GitPull => git_pull::run(ctx).await,
        StepName::MigrationGate => migration_gate::run(ctx).await,
        StepName::Secrets => secrets::run(ctx).await,
        StepName::Build => build::run(ctx).await,
        StepName::Migrate => migrate::run(ctx).await,
        StepName::Recreate => recreate::run(ctx).await,
        StepName::Verify => verify::run(ctx).await,
        StepName::Rollback => rollback::run(ctx).await,
    }
}

/// Whether a failure of `step` is undone by a rollback: each step says so itself (it is a
/// property of what the step does to the app, not of its name).
fn rolls_back_on_failure(step: StepName) -> bool {
    match step {
        StepName::GitPull => git_pull::ROLLS_BACK,
        StepName::MigrationGate => migration_gate::ROLLS_BACK,
        StepName::Secrets => secrets::ROLLS_BACK,
        StepName::Build => build::ROLLS_BACK,
        StepName::Migrate => migrate::ROLLS_BACK,
        StepName::Recreate => recreate::ROLLS_BACK,
        StepName::Verify => verify::ROLLS_BACK,
        StepName::Rollback => rollback::ROLLS_BACK,
    }
}

/// How a deploy's run ended, for the queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunEnd {
    Finished(Phase),
    Paused,
    /// kua-deploy is stopping after the recreate began: the deploy stays `running`, and the next
    /// start resumes it (only verify can say what the app runs now).
    LeftForResume,
}

/// Makes exactly `images` run (recreate's own work, which rollback does too); the recorded
/// process is cleared once it is done. `Err` is the step's outcome.
async fn apply_images(ctx: &DeployCtx, images: &Images) -> Result<(), StepOutcome> {
    recreate::apply(&ctx.runtime(), images).await?;
    clear_recorded_recreate(ctx);
    Ok(())
}

/// Forgets the recorded apply process once it is done.
fn clear_recorded_recreate(ctx: &DeployCtx) {
    if let Err(e) = ctx.store.set_recreate_process(&ctx.id, None) {
        tracing::warn!(deploy = %ctx.id, "cannot clear the recorded recreate process: {e}");
    }
}

/// Waits for a recreate a previous process started and left running, if any.
async fn wait_for_recorded_recreate(ctx: &DeployCtx) {
    if let Some(process) = ctx.store.recreate_process(&ctx.id).ok().flatten() {
        ctx.target.wait_applied(&process, ctx.sink()).await;
        let _ = ctx.store.set_recreate_process(&ctx.id, None);
    }
}

/// Runs the deploy's pending steps and records the end; a deploy is never left `running` by a
/// live process. A store error before the recreate ends the deploy `failed`, recorded as soon as
/// storage takes writes again. After the recreate began, only a verify can tell what the app runs:
/// the deploy is resumed (verify, rollback) once storage works again, or by the next start.
pub async fn run_deploy(mut ctx: DeployCtx) -> RunEnd {
    let id = ctx.id.clone();
    let store = ctx.store.clone();
    let mut result = if ctx.resuming { resume(&mut ctx).await } else { drive(&mut ctx).await };
    loop {
        let e = match result {
            Ok(end) => return end,
            Err(e) => e,
        };
        let msg = format!("kua-deploy could not record the deploy's state: {e}");
        tracing::error!(deploy = %id, "{msg}");
        if !ctx.control.lock().unwrap_or_else(|e| e.into_inner()).recreate_began {
            store.end_failed_when_writable(&id, &msg);
            return RunEnd::Finished(Phase::Failed);
        }
        tokio::select! {
            _ = tokio::time::sleep(STORAGE_RETRY) => {}
            _ = ctx.cancel.cancelled() => return RunEnd::LeftForResume,
        }
        result = resume(&mut ctx).await;
    }
}

/// How soon a deploy stopped by a storage error after its recreate began is taken up again.
const STORAGE_RETRY: Duration = Duration::from_secs(2);

async fn drive(ctx: &mut DeployCtx) -> rusqlite::Result<RunEnd> {
    let store = ctx.store.clone();
    let id = ctx.id.clone();
    if !store.start(&id)? {
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
    run_steps(ctx, pending).await
}

/// Where a deploy left `running` by a process that died in recreate, verify or rollback goes on.
#[derive(Debug, PartialEq, Eq)]
enum ResumeAt {
    Steps(Vec<StepName>),
    /// Recreate or verify had failed (or the rollback had begun): roll back, saying why.
    Rollback(StepName, String),
}

fn resume_point(deploy: &Deploy) -> ResumeAt {
    let failed = [StepName::Recreate, StepName::Verify]
        .into_iter()
        .find_map(|n| deploy.step(n).filter(|s| s.status == StepStatus::Failed).map(|s| (n, s.detail.clone())));
    let rollback_begun = deploy.step(StepName::Rollback).is_some_and(|s| s.status != StepStatus::Succeeded);
    match failed {
        Some((step, why)) => ResumeAt::Rollback(step, why),
        None if rollback_begun => {
            ResumeAt::Rollback(StepName::Verify, "the deploy was rolling back when kua-deploy stopped".into())
        }
        None => ResumeAt::Steps(
            deploy
                .steps
                .iter()
                .filter(|s| matches!(s.status, StepStatus::Pending | StepStatus::Running))
                .map(|s| s.name)
                .collect(),
        ),
    }
}

/// Takes over a deploy a previous process left in recreate, verify or rollback.
async fn resume(ctx: &mut DeployCtx) -> rusqlite::Result<RunEnd> {
    if !ctx.store.resume(&ctx.id)? {
        // Ended meanwhile (a storage failure recorded late): nothing to take over.
        let phase = ctx.store.deploy(&ctx.id)?.map(|d| d.phase).unwrap_or(Phase::Failed);
        return Ok(RunEnd::Finished(phase));
    }
    let deploy = ctx.store.deploy(&ctx.id)?.expect("a deploy being resumed exists");
    ctx.recreate_started_at = ctx.store.recreate_started_at(&ctx.id)?;
    ctx.control.lock().unwrap_or_else(|e| e.into_inner()).recreate_began = true;
    let at = resume_point(&deploy);
    ctx.log.info(&format!("kua-deploy restarted: resuming this deploy ({at:?})"));
    match at {
        ResumeAt::Steps(steps) if steps.contains(&StepName::Recreate) => {
            // A recreate redone after the restart needs the secrets, which were never kept.
            if let Err(e) = secrets::fetch_again(ctx).await {
                let why = format!("cannot fetch the secrets again after the restart: {e}");
                ctx.store.step_finish(&ctx.id, StepName::Recreate, StepStatus::Failed, &why)?;
                return roll_back(ctx, StepName::Recreate, why).await;
            }
            run_steps(ctx, steps).await
        }
        ResumeAt::Steps(steps) => run_steps(ctx, steps).await,
        ResumeAt::Rollback(step, why) => roll_back(ctx, step, why).await,
    }
}

async fn run_steps(ctx: &mut DeployCtx, pending: Vec<StepName>) -> rusqlite::Result<RunEnd> {
    let store = ctx.store.clone();
    let id = ctx.id.clone();
    for step in pending {
        // A cancel (or shutdown) that arrived while the last step ran without a command to kill
        // takes effect here, between steps; recreate checks it under the same lock as cancel.
        let go_on = if step == StepName::Recreate { begin_recreate(ctx) } else { !stop_requested(ctx) };
        if !go_on {
            put_back(ctx).await;
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
            StepOutcome::AwaitApproval(_) if stop_requested(ctx) => {
                put_back(ctx).await;
                return finish_stopped(ctx, step);
            }
            StepOutcome::AwaitApproval(detail) => {
                ctx.log.info(&format!("step {step} waits for approval: {detail}"));
                // The gate stays `running` (it holds the deploy), its detail saying what to approve.
                store.park(&id, step, &detail)?;
                return Ok(RunEnd::Paused);
            }
            StepOutcome::Stopped if left_for_resume(ctx, step) => return Ok(RunEnd::LeftForResume),
            StepOutcome::Stopped => {
                put_back(ctx).await;
                return finish_stopped(ctx, step);
            }
            StepOutcome::HandedOff => return Ok(RunEnd::Paused),
            StepOutcome::NotStarted(detail) => {
                ctx.log.info(&format!("step {step} failed before it changed anything: {detail}"));
                ctx.control.lock().unwrap_or_else(|e| e.into_inner()).recreate_began = false;
                put_back(ctx).await;
                let error = format!("{step} failed: {detail}");
                return finish(ctx, Phase::Failed, Some(error), &[(step, StepStatus::Failed, &detail)], "not run");
            }
            StepOutcome::Failed(detail) => {
                ctx.log.info(&format!("step {step} failed: {detail}"));
                // kua-deploy's own recreate that failed never replaced this process: nothing to undo,
                // and recreating the previous image would only restart it.
                if rolls_back_on_failure(step) && !ctx.is_self() {
                    store.step_finish(&id, step, StepStatus::Failed, &detail)?;
                    return roll_back(ctx, step, detail).await;
                }
                put_back(ctx).await;
                return finish(
                    ctx,
                    Phase::Failed,
                    Some(format!("{step} failed: {detail}")),
                    &[(step, StepStatus::Failed, &detail)],
                    "not run: an earlier step failed",
                );
            }
        }
    }
    finish(ctx, Phase::Succeeded, None, &[], "")
}

fn stop_requested(ctx: &DeployCtx) -> bool {
    ctx.cancel.is_cancelled() || ctx.control.lock().unwrap_or_else(|e| e.into_inner()).cancel_requested
}

/// A deploy that ends before its recreate began leaves the app as it found it: the checkout back
/// at the commit it was at, and the tags its build moved back on the images that run — so a plain
/// `docker compose up -d` afterwards still changes nothing. Best effort: what fails is logged.
async fn put_back(ctx: &DeployCtx) {
    if ctx.control.lock().unwrap_or_else(|e| e.into_inner()).recreate_began {
        return;
    }
    let (Some(before), Some(commit)) = (&ctx.commit_before, &ctx.commit) else { return };
    // Only a checkout git_pull itself made is undone: one it refused (local commits) is left alone.
    let pulled = ctx.store.deploy(&ctx.id).ok().flatten().and_then(|d| d.step(StepName::GitPull).map(|s| s.status));
    if !ctx.checked_out && pulled != Some(StepStatus::Succeeded) {
        return;
    }
    let never = CancellationToken::new();
    if before != commit {
        match ctx.git.checkout(&ctx.app.branch, before, &never, ctx.sink()).await {
            Ok(()) => ctx.log.info(&format!("the checkout is back at {}", before.short())),
            Err(e) => ctx.log.info(&format!("cannot return the checkout to {}: {e}", before.short())),
        }
    }
    if ctx.images.is_empty() {
        return;
    }
    let services: Vec<_> = ctx.images.keys().cloned().collect();
    let restored = match ctx.target.snapshot(&services).await {
        Ok(running) => ctx.target.restore(&running, ctx.sink()).await,
        Err(e) => Err(e),
    };
    if let Err(e) = restored {
        ctx.log.info(&format!("cannot put the image names back on the images that run: {e}"));
    }
}

/// A shutdown after the recreate began leaves the deploy `running`, for the next start to resume:
/// the recreate goes on detached, and only a verify can tell what the app runs.
fn left_for_resume(ctx: &DeployCtx, step: StepName) -> bool {
    let c = ctx.control.lock().unwrap_or_else(|e| e.into_inner());
    if !c.recreate_began || c.cancel_requested {
        return false;
    }
    ctx.log.info(&format!("kua-deploy is stopping during step {step}: its next start resumes this deploy"));
    true
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
    finish(ctx, phase, Some(msg), &[], "not run")
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

/// Ends the deploy in `phase`, closing the steps in `closing` in the same transaction.
fn finish(
    ctx: &DeployCtx,
    phase: Phase,
    error: Option<String>,
    closing: &[(StepName, StepStatus, &str)],
    skip_detail: &str,
) -> rusqlite::Result<RunEnd> {
    // The last log line is written before the phase ends, so a follower sees it before the end.
    ctx.log.info(&format!("deploy ended: {phase}{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()));
    ctx.store.finish(&ctx.id, phase, error.as_deref(), closing, skip_detail)?;
    Ok(RunEnd::Finished(phase))
}

/// Ends the deploy after `step`'s command was killed, or a cancel came while it ran.
fn finish_stopped(ctx: &DeployCtx, step: StepName) -> rusqlite::Result<RunEnd> {
    let (phase, msg) = stopped(ctx, &format!("during step {step}"));
    finish(ctx, phase, Some(msg.clone()), &[(step, StepStatus::Failed, &msg)], "not run")
}

async fn roll_back(ctx: &mut DeployCtx, failed: StepName, why: String) -> rusqlite::Result<RunEnd> {
    let error = format!("{failed} failed: {why}");
    if !ctx.app.rollback {
        return finish(ctx, Phase::Failed, Some(format!("{error}; rollback is off for this app")), &[], "not run");
    }
    ctx.store.step_start(&ctx.id, StepName::Rollback, "")?;
    ctx.log.info("step rollback started");
    match rollback::run(ctx).await {
        StepOutcome::Succeeded(detail) => {
            let closing = [(StepName::Rollback, StepStatus::Succeeded, detail.as_str())];
            finish(ctx, Phase::RolledBack, Some(format!("{error}; rolled back: {detail}")), &closing, "not run")
        }
        StepOutcome::Skipped(detail) => {
            let closing = [(StepName::Rollback, StepStatus::Skipped, detail.as_str())];
            finish(ctx, Phase::Failed, Some(format!("{error}; no rollback: {detail}")), &closing, "not run")
        }
        StepOutcome::Failed(detail) | StepOutcome::NotStarted(detail) | StepOutcome::AwaitApproval(detail) => {
            let closing = [(StepName::Rollback, StepStatus::Failed, detail.as_str())];
            finish(ctx, Phase::Failed, Some(format!("{error}; rollback failed too: {detail}")), &closing, "not run")
        }
        StepOutcome::Stopped if left_for_resume(ctx, StepName::Rollback) => Ok(RunEnd::LeftForResume),
        StepOutcome::Stopped | StepOutcome::HandedOff => finish_stopped(ctx, StepName::Rollback),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AppName, Step, Trigger, TriggerSource};

    fn deploy(steps: &[(StepName, StepStatus, &str)]) -> Deploy {
        Deploy {
            deploy_id: DeployId::new(),
            app: AppName::parse("hello").unwrap(),
            phase: Phase::Running,
            trigger: Trigger {
                source: TriggerSource::Api,
                delivery: None,
                git_ref: "refs/heads/main".into(),
                requested_commit: None,
            },
            commit_before: None,
            commit: None,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            steps: steps
                .iter()
                .map(|(name, status, detail)| Step {
                    name: *name,
                    status: *status,
                    started_at: None,
                    finished_at: None,
                    detail: detail.to_string(),
                })
                .collect(),
            images: Images::new(),
            previous_images: Images::new(),
            verify: None,
            error: None,
            reason: None,
            superseded_by: None,
            project: None,
            compose_files: Vec::new(),
            previous_commit: None,
        }
    }

    use StepName::*;
    use StepStatus::*;

    #[test]
    fn a_deploy_stopped_during_recreate_resumes_at_recreate_then_verify() {
        let d =
            deploy(&[(GitPull, Succeeded, ""), (Build, Succeeded, ""), (Recreate, Running, ""), (Verify, Pending, "")]);
        assert_eq!(resume_point(&d), ResumeAt::Steps(vec![Recreate, Verify]));
    }

    #[test]
    fn a_deploy_stopped_during_verify_resumes_at_verify() {
        let d = deploy(&[(Build, Succeeded, ""), (Recreate, Succeeded, ""), (Verify, Running, "")]);
        assert_eq!(resume_point(&d), ResumeAt::Steps(vec![Verify]));
    }

    #[test]
    fn a_deploy_whose_verify_had_failed_resumes_with_the_rollback_and_its_reason() {
        let d = deploy(&[(Recreate, Succeeded, ""), (Verify, Failed, "container exited")]);
        assert_eq!(resume_point(&d), ResumeAt::Rollback(Verify, "container exited".into()));
        let d = deploy(&[(Recreate, Succeeded, ""), (Verify, Failed, "unhealthy"), (Rollback, Running, "")]);
        assert_eq!(resume_point(&d), ResumeAt::Rollback(Verify, "unhealthy".into()));
    }

    #[test]
    fn a_deploy_stopped_during_its_rollback_rolls_back_again() {
        let d = deploy(&[(Recreate, Succeeded, ""), (Verify, Succeeded, ""), (Rollback, Running, "")]);
        assert!(matches!(resume_point(&d), ResumeAt::Rollback(Verify, _)));
    }
}
