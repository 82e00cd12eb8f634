//! The queue: every trigger enters here. One deploy at a time per app (a worker task per app that
//! has work), apps in parallel within the registry's `limits`: a deploy waits, still `queued`,
//! for a slot of its host and a global one ([`slots`](super::slots)). Queued deploys live in
//! SQLite, so a restart loses none; the worker only decides which one runs next. Cancel and
//! approve also go through here, because they must agree with the worker about what is running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::slots::{Held, Slots};
use super::{planned_steps, run_deploy, runtime, Control, DeployCtx, SharedControl};
use crate::config::{AppConfig, HostSpec, Registry};
use crate::docker::Docker;
use crate::host::{Host, Redactor};
use crate::model::{AppName, Delivery, Deploy, DeployId, Phase, ProjectName, RuntimeStatus, StepName, Trigger};
use crate::selfupdate::{self, SelfTarget};
use crate::store::{LogWriter, NewDeploy, PushRecord, Store};
use crate::target::{SelfHandOff, Target, Targets};

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("there is no app named {0} in the registry")]
    UnknownApp(AppName),
    #[error("app {app} has a deploy in progress ({deploy_id}, {phase}); wait for it, or cancel it")]
    InProgress { app: AppName, deploy_id: DeployId, phase: Phase },
    #[error("no deploy with id {0}")]
    NoSuchDeploy(DeployId),
    #[error("deploy {id} already ended ({phase})")]
    AlreadyFinished { id: DeployId, phase: Phase },
    #[error("deploy {0} has begun recreating containers; it can no longer be cancelled")]
    CancelRefused(DeployId),
    #[error("deploy {id} is {phase}, not awaiting approval")]
    NotAwaitingApproval { id: DeployId, phase: Phase },
    #[error("deploy {0} stopped when the state database failed; it is recorded failed as soon as the database takes writes again (GET /healthz says what fails)")]
    Unrecorded(DeployId),
    #[error("state database: {0}")]
    Store(#[from] rusqlite::Error),
}

/// How long a cancel waits for the running deploy to stop before it answers with what it sees.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// A trigger as the queue takes it.
#[derive(Debug, Clone)]
pub struct Request {
    pub app: AppName,
    pub trigger: Trigger,
    pub approve_migrations: bool,
    pub reason: Option<String>,
}

/// The deploy an app's worker is running, and the means to stop it.
struct Running {
    id: DeployId,
    control: SharedControl,
    cancel: CancellationToken,
}

#[derive(Default)]
struct AppSlot {
    worker: bool,
    running: Option<Running>,
    /// Deploys a previous process left in recreate, verify or rollback: run before anything queued.
    resume: Vec<Deploy>,
}

struct Inner {
    store: Store,
    registry: Arc<Registry>,
    redactor: Redactor,
    shutdown: CancellationToken,
    self_target: Option<SelfTarget>,
    /// For a self app found only later (see `run_one`).
    handoff_ceiling: Duration,
    targets: Arc<dyn Targets>,
    tracker: TaskTracker,
    slots: Mutex<HashMap<AppName, AppSlot>>,
    /// How many deploys may run at once, per host and in all.
    limits: Slots,
}

/// Cheap to clone; all clones share the same slots.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<Inner>,
}

impl Queue {
    pub fn new(
        store: Store,
        registry: Arc<Registry>,
        redactor: Redactor,
        shutdown: CancellationToken,
        self_target: Option<SelfTarget>,
        handoff_ceiling: Duration,
        targets: Arc<dyn Targets>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                store,
                redactor,
                shutdown,
                self_target,
                handoff_ceiling,
                targets,
                tracker: TaskTracker::new(),
                slots: Mutex::new(HashMap::new()),
                limits: Slots::new(registry.limits.clone()),
                registry,
            }),
        }
    }

    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.inner.registry
    }

    /// The runtime of `app` on its host, as deploys see it; `project` as a deploy resolved it.
    pub fn target(&self, app: &AppConfig, project: Option<ProjectName>) -> Arc<dyn Target> {
        let host = Host::new(app.host.clone(), self.inner.redactor.clone());
        self.inner.targets.target(app, project, "status", host)
    }

    /// What runs of `app` now, checked against its last successful deploy: `runtime-status`.
    pub async fn runtime_status(&self, app: &AppConfig) -> Result<RuntimeStatus, runtime::ReadError> {
        let store = &self.inner.store;
        let last = store.latest(&app.name)?;
        let ok = store.last_succeeded(&app.name)?;
        let target = self.target(app, last.as_ref().and_then(|d| d.project.clone()));
        Ok(runtime::runtime_status(app, target.as_ref(), &self.inner.redactor, last, ok.as_ref()).await?)
    }

    fn slots(&self) -> std::sync::MutexGuard<'_, HashMap<AppName, AppSlot>> {
        self.inner.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues a deploy, unless the app already has one in progress.
    pub fn submit(&self, req: Request) -> Result<Deploy, QueueError> {
        let app = self.inner.registry.app(&req.app).ok_or_else(|| QueueError::UnknownApp(req.app.clone()))?;
        let mut slots = self.slots();
        if let Some(active) = self.inner.store.active(&req.app)?.into_iter().next() {
            return Err(QueueError::InProgress { app: req.app, deploy_id: active.deploy_id, phase: active.phase });
        }
        let deploy = self.inner.store.insert_deploy(&NewDeploy {
            app: req.app.clone(),
            trigger: req.trigger,
            approve_migrations: req.approve_migrations,
            reason: req.reason,
            steps: planned_steps(app),
        })?;
        self.ensure_worker(&mut slots, &req.app);
        Ok(deploy)
    }

    /// Queues the deploy a push asks for, unless it is a redelivery, and records the delivery in
    /// the same step. While the app deploys, pushes coalesce: the new deploy replaces any that is
    /// still queued or awaiting approval, which ends `cancelled` naming it. The checks and the
    /// insert happen under the queue lock, so two copies of one delivery cannot both deploy.
    pub fn submit_push(&self, req: Request, delivery: Delivery) -> Result<PushRecord, QueueError> {
        let app = self.inner.registry.app(&req.app).ok_or_else(|| QueueError::UnknownApp(req.app.clone()))?;
        let new = NewDeploy {
            app: req.app.clone(),
            trigger: req.trigger,
            approve_migrations: req.approve_migrations,
            reason: req.reason,
            steps: planned_steps(app),
        };
        let mut slots = self.slots();
        let record = self.inner.store.record_push(&new, delivery)?;
        if matches!(record, PushRecord::Queued { .. }) {
            self.ensure_worker(&mut slots, &req.app);
        }
        Ok(record)
    }

    /// Starts workers for every app with queued deploys (after a restart).
    pub fn resume_queued(&self) -> Result<(), QueueError> {
        let apps = self.inner.store.apps_with_queued()?;
        let mut slots = self.slots();
        for app in apps {
            self.ensure_worker(&mut slots, &app);
        }
        Ok(())
    }

    /// Takes over deploys a previous process left `running` after their recreate began (startup
    /// recovery): each app's worker finishes them first.
    pub fn resume(&self, deploys: Vec<Deploy>) {
        let mut slots = self.slots();
        for d in deploys {
            let app = d.app.clone();
            slots.entry(app.clone()).or_default().resume.push(d);
            self.ensure_worker(&mut slots, &app);
        }
    }

    fn handing_over(&self, app: &AppName) -> bool {
        self.inner.store.in_phase(Phase::SelfRecreatePending).is_ok_and(|p| p.iter().any(|d| &d.app == app))
    }

    fn ensure_worker(&self, slots: &mut HashMap<AppName, AppSlot>, app: &AppName) {
        let slot = slots.entry(app.clone()).or_default();
        if slot.worker || self.inner.shutdown.is_cancelled() {
            return;
        }
        slot.worker = true;
        let queue = self.clone();
        let app = app.clone();
        self.inner.tracker.spawn(async move { queue.work(app).await });
    }

    /// Runs the app's queued deploys one after another, then ends. Whether to go on is decided under
    /// the same lock `submit` takes, so a deploy queued as the worker ends is never stranded.
    async fn work(self, app: AppName) {
        loop {
            let picked = {
                let mut slots = self.slots();
                let slot = slots.entry(app.clone()).or_default();
                // A self-recreate still being judged holds the app: what is queued behind it waits
                // until the completion (`complete.rs`) has ended it and calls resume_queued.
                let held = self.inner.shutdown.is_cancelled() || self.handing_over(&app);
                let resumed = if held || slot.resume.is_empty() { None } else { Some(slot.resume.remove(0)) };
                let next = match resumed {
                    Some(d) => Ok(Some((d, true))),
                    None if held => Ok(None),
                    None => self.inner.store.next_queued(&app).map(|d| d.map(|d| (d, false))),
                };
                match next {
                    Ok(Some(picked)) => picked,
                    Ok(None) => {
                        slot.worker = false;
                        return;
                    }
                    Err(e) => {
                        tracing::error!(app = %app, "cannot read the queue: {e}");
                        slot.worker = false;
                        return;
                    }
                }
            };
            let (deploy, resuming) = picked;
            // A deploy taken over mid-recreate has an app between two versions: it finishes first,
            // and kua-deploy's own deploy must not wait behind the fleet's (see `bypasses_limits`).
            let held = match self.inner.registry.app(&app) {
                Some(config) if !resuming && !self.bypasses_limits(&app) => {
                    match self.wait_for_slots(&config.host, &deploy.deploy_id).await {
                        Some(held) => Some(held),
                        // Cancelled, superseded or shut down while it waited: the loop looks again.
                        None => continue,
                    }
                }
                _ => None,
            };
            let (control, cancel) = {
                let mut slots = self.slots();
                if self.inner.shutdown.is_cancelled() {
                    // Stopping while it waited: it stays queued for the next start (the loop ends).
                    continue;
                }
                let control: SharedControl = Arc::new(Mutex::new(Control::default()));
                let cancel = self.inner.shutdown.child_token();
                let running =
                    Running { id: deploy.deploy_id.clone(), control: control.clone(), cancel: cancel.clone() };
                slots.entry(app.clone()).or_default().running = Some(running);
                (control, cancel)
            };
            self.run_one(&app, deploy, control, cancel, resuming).await;
            self.slots().entry(app.clone()).or_default().running = None;
            // Ended, parked awaiting approval or handed over: its slots go to the next in line.
            drop(held);
        }
    }

    /// kua-deploy's own app takes no slot: it runs on the local host, a handful of times a day,
    /// and a release of the deployer must not queue behind a burst of the fleet's deploys.
    fn bypasses_limits(&self, app: &AppName) -> bool {
        self.inner.registry.self_app.as_ref() == Some(app)
            || self.inner.self_target.as_ref().is_some_and(|t| &t.app == app)
    }

    /// Waits for the slots of deploy `id` on `host`; `None` when the deploy stopped being queued
    /// (a cancel or a newer push ended it) or the server stops while it waits. Cancel needs no
    /// part in this: it finds the deploy `queued` with no run and ends it at once.
    async fn wait_for_slots(&self, host: &HostSpec, id: &DeployId) -> Option<Held> {
        let store = &self.inner.store;
        // Made before the phase is read: a change in between still wakes the wait.
        let mut watch = store.watch(id);
        let log = LogWriter::new(store.clone(), id.clone());
        let acquire = self.inner.limits.acquire(host, |line| log.info(line));
        tokio::pin!(acquire);
        loop {
            match store.deploy(id) {
                Ok(Some(d)) if d.phase == Phase::Queued => {}
                Ok(_) => return None,
                Err(e) => {
                    tracing::error!(deploy = %id, "cannot read the deploy waiting for a slot: {e}");
                    return None;
                }
            }
            tokio::select! {
                // A slot freed by a deploy the shutdown stopped must not start this one.
                biased;
                _ = self.inner.shutdown.cancelled() => return None,
                held = &mut acquire => return Some(held),
                _ = watch.phase_changed() => {}
            }
        }
    }

    async fn run_one(
        &self,
        app: &AppName,
        deploy: Deploy,
        control: SharedControl,
        cancel: CancellationToken,
        resuming: bool,
    ) {
        let store = self.inner.store.clone();
        let Some(config) = self.inner.registry.app(app).cloned() else {
            let msg = format!("app {app} is no longer in the registry");
            let _ = store.fail(&deploy.deploy_id, &msg);
            return;
        };
        let host = Host::new(config.host.clone(), self.inner.redactor.clone());
        // A deploy that already resolved its project (resumed, or approved) keeps it.
        let target =
            self.inner.targets.target(&config, deploy.project.clone(), deploy.deploy_id.as_str(), host.clone());
        let mut ctx = DeployCtx::new(store, config, &deploy, host, cancel, control, target);
        ctx.resuming = resuming;
        ctx.declared_self = self.inner.registry.self_app.as_ref() == Some(app);
        let self_target = match self.inner.self_target.clone().filter(|t| &t.app == app) {
            Some(t) => Some(t),
            // Not found at start (the engine may not have answered yet): look again.
            None if ctx.declared_self => {
                let local = Host::new(crate::config::HostSpec::Local, self.inner.redactor.clone());
                let ceiling = self.inner.handoff_ceiling;
                selfupdate::discover(&self.inner.registry, &Docker::new(local), ceiling).await.filter(|t| &t.app == app)
            }
            None => None,
        };
        ctx.self_handoff = self_target.map(|t| Arc::new(t) as Arc<dyn SelfHandOff>);
        let end = run_deploy(ctx).await;
        tracing::info!(app = %app, deploy = %deploy.deploy_id, "deploy ended: {end:?}");
    }

    /// Cancels a queued, awaiting or running deploy; refused once recreate began. Waits briefly for
    /// a running deploy to stop, so the answer usually shows it `cancelled`.
    pub async fn cancel(&self, id: &DeployId) -> Result<Deploy, QueueError> {
        let store = &self.inner.store;
        // Decided under the queue lock, which the worker also holds when it picks a deploy and
        // approve when it re-queues one: the phase read here cannot change under the decision.
        let stopping = {
            let slots = self.slots();
            let deploy = store.deploy(id)?.ok_or_else(|| QueueError::NoSuchDeploy(id.clone()))?;
            let running = slots.get(&deploy.app).and_then(|s| s.running.as_ref()).filter(|r| &r.id == id);
            match (deploy.phase, running) {
                (p, _) if p.is_terminal() => return Err(QueueError::AlreadyFinished { id: id.clone(), phase: p }),
                (Phase::SelfRecreatePending, _) => return Err(QueueError::CancelRefused(id.clone())),
                (_, Some(r)) => {
                    let mut c = r.control.lock().unwrap_or_else(|e| e.into_inner());
                    if c.recreate_began {
                        return Err(QueueError::CancelRefused(id.clone()));
                    }
                    c.cancel_requested = true;
                    r.cancel.cancel();
                    true
                }
                (from @ (Phase::Queued | Phase::AwaitingApproval), None) => {
                    let why = match from {
                        Phase::AwaitingApproval => "cancelled while awaiting approval",
                        _ => "cancelled while queued",
                    };
                    store.cancel_waiting(id, why)?;
                    false
                }
                // No worker runs it: its run ended on a storage error, and its end is still to be written.
                (Phase::Running, None) => return Err(QueueError::Unrecorded(id.clone())),
                (phase, None) => return Err(QueueError::AlreadyFinished { id: id.clone(), phase }),
            }
        };
        if stopping {
            // Made before the phase is read: an end written in between still wakes it.
            let mut watch = store.watch(id);
            let until = tokio::time::Instant::now() + CANCEL_WAIT;
            loop {
                let d = store.deploy(id)?.expect("exists");
                if d.phase.is_terminal() {
                    return Ok(d);
                }
                if tokio::time::timeout_at(until, watch.phase_changed()).await.is_err() {
                    break;
                }
            }
        }
        Ok(store.deploy(id)?.expect("exists"))
    }

    /// Lets an `awaiting_approval` deploy go on from its build step.
    pub fn approve(&self, id: &DeployId) -> Result<Deploy, QueueError> {
        let store = &self.inner.store;
        let mut slots = self.slots();
        let deploy = store.deploy(id)?.ok_or_else(|| QueueError::NoSuchDeploy(id.clone()))?;
        let gate = deploy.step(StepName::MigrationGate).map(|s| s.detail.clone()).unwrap_or_default();
        if deploy.phase != Phase::AwaitingApproval || !store.approve(id, &format!("approved: {gate}"))? {
            return Err(QueueError::NotAwaitingApproval { id: id.clone(), phase: deploy.phase });
        }
        self.ensure_worker(&mut slots, &deploy.app);
        Ok(store.deploy(id)?.expect("exists"))
    }

    /// Stops every running deploy (they end `interrupted`) and waits for the workers, at most `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.shutdown.cancel();
        self.inner.tracker.close();
        if tokio::time::timeout(grace, self.inner.tracker.wait()).await.is_err() {
            tracing::warn!("some deploys did not stop within {grace:?}; startup recovery will mark them interrupted");
        }
    }
}
