//! Every path of a deploy through the real runner, store (SQLite in a temp dir) and git (a bare
//! remote and a checkout on disk), with the in-memory [`FakeTarget`] as the runtime: no engine.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use super::complete::complete_handoffs;
use super::queue::{Queue, QueueError, Request};
use super::{planned_steps, run_deploy, Control, DeployCtx, RunEnd};
use crate::config::Registry;
use crate::config::{
    AppConfig, HostSpec, MigrationPolicy, MigrationsConfig, SecretsConfig, SecretsFormat, VerifyConfig,
};
use crate::host::Host;
use crate::host::Redactor;
use crate::model::Delivery;
use crate::model::{
    AppName, BranchName, CommitSha, Deploy, Images, Phase, ServiceName, StepName, StepStatus, Trigger, TriggerSource,
};
use crate::store::{NewDeploy, PushRecord, Store};
use crate::target::fake::{FakeHandOff, FakeTarget, FakeTargets, FakeWitness};
use crate::target::{HandOffSeen, SelfRuns};

fn git(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("git")
        .args(["-c", "user.name=T", "-c", "user.email=t@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A remote, a work tree pushing to it, the app's checkout, a store, and the app.
struct World {
    _dir: tempfile::TempDir,
    work: PathBuf,
    checkout: PathBuf,
    store: Store,
    app: AppConfig,
}

impl World {
    fn new(migrations: Option<MigrationPolicy>, rollback: bool) -> World {
        let dir = tempfile::tempdir().unwrap();
        let (remote, work, checkout) = (dir.path().join("remote.git"), dir.path().join("work"), dir.path().join("app"));
        git(dir.path(), &["init", "-q", "--bare", remote.to_str().unwrap()]);
        git(dir.path(), &["init", "-q", work.to_str().unwrap()]);
        std::fs::create_dir_all(work.join("migrations")).unwrap();
        std::fs::write(work.join("migrations/.keep"), "").unwrap();
        std::fs::write(work.join("index.html"), "v1").unwrap();
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "-qm", "v1"]);
        git(&work, &["remote", "add", "origin", remote.to_str().unwrap()]);
        git(&work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
        git(dir.path(), &["clone", "-q", remote.to_str().unwrap(), checkout.to_str().unwrap()]);
        let app = AppConfig {
            name: AppName::parse("hello").unwrap(),
            host: HostSpec::Local,
            repo: checkout.clone(),
            branch: BranchName::parse("main").unwrap(),
            compose_files: None,
            project: None,
            services: vec![ServiceName::parse("web").unwrap()],
            migrations: migrations.map(|policy| MigrationsConfig { paths: vec!["migrations/".into()], policy }),
            verify: VerifyConfig { timeout_s: 5, stable_s: 0 },
            rollback,
            webhook: None,
            secrets: None,
            status: None,
            notify: Vec::new(),
        };
        let store = Store::open(&dir.path().join("state")).unwrap();
        World { _dir: dir, work, checkout, store, app }
    }

    /// Commits `file` with `content` and pushes it; the new commit.
    fn push(&self, file: &str, content: &str) -> String {
        std::fs::write(self.work.join(file), content).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "-qm", content]);
        git(&self.work, &["push", "-q", "origin", "HEAD:refs/heads/main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn head(&self) -> String {
        git(&self.checkout, &["rev-parse", "HEAD"])
    }

    fn queue(&self, commit: Option<&str>) -> Deploy {
        self.store
            .insert_deploy(&NewDeploy {
                app: self.app.name.clone(),
                trigger: api_trigger(commit),
                approve_migrations: false,
                reason: None,
                steps: planned_steps(&self.app),
            })
            .unwrap()
    }

    /// Runs `deploy` (or resumes it) to its end on `target`.
    async fn run(&self, deploy: &Deploy, target: &Arc<FakeTarget>, run: Run) -> (RunEnd, Deploy) {
        self.run_self(deploy, target, run, None).await
    }

    /// Like [`World::run`], for kua-deploy's own app when `handoff` is given.
    async fn run_self(
        &self,
        deploy: &Deploy,
        target: &Arc<FakeTarget>,
        run: Run,
        handoff: Option<FakeHandOff>,
    ) -> (RunEnd, Deploy) {
        let control = Arc::new(Mutex::new(Control::default()));
        let cancel = CancellationToken::new();
        if let Run::Cancelled = run {
            control.lock().unwrap().cancel_requested = true;
            cancel.cancel();
        }
        if let Run::ShutDown = run {
            cancel.cancel();
        }
        let mut ctx = DeployCtx::new(
            self.store.clone(),
            self.app.clone(),
            deploy,
            Host::local(),
            cancel.clone(),
            control,
            target.clone(),
        );
        ctx.resuming = matches!(run, Run::Resume);
        ctx.self_handoff = handoff.map(|h| Arc::new(h) as Arc<dyn crate::target::SelfHandOff>);
        if let Run::ShutdownAfter(ms) = run {
            tokio::spawn(async move {
                tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
                cancel.cancel();
            });
        }
        let end = run_deploy(ctx).await;
        (end, self.store.deploy(&deploy.deploy_id).unwrap().unwrap())
    }

    /// A first deploy that leaves build 1 running.
    async fn deployed(&self, target: &Arc<FakeTarget>) -> Deploy {
        let (_, d) = self.run(&self.queue(None), target, Run::Normal).await;
        assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
        d
    }
}

/// An app whose first deploy left build 1 running, with a v2 pushed and not yet deployed.
async fn v1_running_v2_pushed(rollback: bool) -> (World, Arc<FakeTarget>) {
    let w = World::new(None, rollback);
    let target = Arc::new(FakeTarget::default());
    w.deployed(&target).await;
    w.push("index.html", "v2");
    (w, target)
}

#[derive(Clone, Copy)]
enum Run {
    Normal,
    /// A cancel arrived before the deploy started.
    Cancelled,
    /// The server was stopping as the deploy started.
    ShutDown,
    /// The server stops (shutdown) this many ms into the run.
    ShutdownAfter(u64),
    /// A restarted process takes it over.
    Resume,
}

fn status(d: &Deploy, step: StepName) -> StepStatus {
    d.step(step).map(|s| s.status).unwrap_or_else(|| panic!("no step {step} in {d:#?}"))
}

fn web() -> ServiceName {
    ServiceName::parse("web").unwrap()
}

fn images(n: u32) -> Images {
    [(web(), FakeTarget::image(n))].into()
}

#[tokio::test]
async fn a_deploy_resolves_builds_snapshots_applies_and_verifies_and_ends_succeeded() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    let d = w.deployed(&target).await;
    assert_eq!(target.calls(), ["resolve", "build", "snapshot", "apply 000000000001", "verify 000000000001"]);
    assert_eq!(d.images, images(1));
    assert!(d.verify.as_ref().is_some_and(|v| v.ok));
    assert_eq!(d.project.as_ref().map(|p| p.as_str()), Some("fake"));
    assert!(d.steps.iter().all(|s| s.status == StepStatus::Succeeded), "{d:#?}");
}

#[tokio::test]
async fn a_commit_off_the_branch_fails_git_pull_and_touches_nothing() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    let (_, d) = w.run(&w.queue(Some(&"ab".repeat(20))), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(status(&d, StepName::GitPull), StepStatus::Failed);
    assert_eq!(status(&d, StepName::Build), StepStatus::Skipped);
    assert!(target.calls().is_empty(), "{:?}", target.calls());
}

#[tokio::test]
async fn a_failed_build_fails_the_deploy_puts_the_checkout_back_and_recreates_nothing() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    w.deployed(&target).await;
    let v1 = w.head();
    w.push("index.html", "v2");
    target.with(|s| {
        s.failing.insert("build");
        s.calls.clear();
    });
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status(&d, StepName::Build), StepStatus::Failed);
    assert_eq!(status(&d, StepName::Recreate), StepStatus::Skipped);
    assert!(!target.calls().iter().any(|c| c.starts_with("apply")), "{:?}", target.calls());
    assert_eq!(w.head(), v1, "the checkout is back at the commit that runs");
}

#[tokio::test]
async fn a_failed_migration_fails_the_deploy_and_puts_the_image_names_back() {
    let run = MigrationPolicy::Run { service: web(), command: vec!["migrate".into()] };
    let w = World::new(Some(run), true);
    let target = Arc::new(FakeTarget::default());
    w.deployed(&target).await;
    w.push("migrations/002.sql", "alter");
    target.with(|s| {
        s.failing.insert("oneoff");
        s.calls.clear();
    });
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status(&d, StepName::Migrate), StepStatus::Failed);
    let calls = target.calls();
    assert!(calls.contains(&"restore 000000000001".to_owned()), "the build's names point at what runs: {calls:?}");
    assert!(!calls.iter().any(|c| c.starts_with("apply")), "{calls:?}");
}

#[tokio::test]
async fn a_release_that_fails_verify_is_rolled_back_to_what_ran() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    let first = w.deployed(&target).await;
    w.push("index.html", "v2");
    target.with(|s| s.next_build_broken = true);
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(status(&d, StepName::Verify), StepStatus::Failed);
    assert_eq!(status(&d, StepName::Rollback), StepStatus::Succeeded);
    assert_eq!(d.previous_images, images(1));
    assert_eq!(d.previous_commit, first.commit);
    assert_eq!(target.state.lock().unwrap().running, images(1));
    assert_eq!(w.head(), first.commit.unwrap().to_string(), "the checkout is back at the commit that runs");
}

#[tokio::test]
async fn a_recreate_that_fails_is_rolled_back_too() {
    let (w, target) = v1_running_v2_pushed(true).await;
    // The new images' apply fails; the rollback's apply works.
    target.with(|s| {
        s.unstartable.insert(FakeTarget::image(2));
    });
    let deploy = w.queue(None);
    let (_, d) = w.run(&deploy, &target, Run::Normal).await;
    assert_eq!(status(&d, StepName::Recreate), StepStatus::Failed, "{d:#?}");
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(target.state.lock().unwrap().running, images(1));
}

#[tokio::test]
async fn a_rollback_that_fails_too_ends_failed_saying_both() {
    let (w, target) = v1_running_v2_pushed(true).await;
    target.with(|s| {
        s.next_build_broken = true;
        s.broken.insert(FakeTarget::image(1));
    });
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status(&d, StepName::Rollback), StepStatus::Failed);
    assert!(d.error.as_deref().unwrap().contains("rollback failed too"), "{:?}", d.error);
}

#[tokio::test]
async fn with_rollback_off_a_failed_verify_ends_failed_and_nothing_is_brought_back() {
    let (w, target) = v1_running_v2_pushed(false).await;
    target.with(|s| s.next_build_broken = true);
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed);
    assert!(d.error.as_deref().unwrap().contains("rollback is off"), "{:?}", d.error);
    assert_eq!(target.state.lock().unwrap().running, images(2));
}

#[tokio::test]
async fn a_first_deploy_that_fails_verify_has_nothing_to_go_back_to() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    target.with(|s| s.next_build_broken = true);
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status(&d, StepName::Rollback), StepStatus::Skipped);
}

#[tokio::test]
async fn a_cancel_before_the_recreate_ends_cancelled_with_nothing_recreated() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    let (end, d) = w.run(&w.queue(None), &target, Run::Cancelled).await;
    assert_eq!(end, RunEnd::Finished(Phase::Cancelled));
    assert_eq!(d.phase, Phase::Cancelled, "{d:#?}");
    assert!(!target.calls().iter().any(|c| c.starts_with("apply")));
}

#[tokio::test]
async fn a_shutdown_before_the_recreate_ends_interrupted_and_puts_nothing_in_place() {
    let (w, target) = v1_running_v2_pushed(true).await;
    let (_, d) = w.run(&w.queue(None), &target, Run::ShutDown).await;
    assert_eq!(d.phase, Phase::Interrupted, "{d:#?}");
    assert_eq!(target.state.lock().unwrap().running, images(1));
}

#[tokio::test]
async fn a_checkout_whose_configuration_cannot_be_read_is_put_back() {
    let (w, target) = v1_running_v2_pushed(true).await;
    let v1 = w.head();
    target.with(|s| {
        s.failing.insert("resolve");
    });
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status(&d, StepName::GitPull), StepStatus::Failed);
    assert_eq!(w.head(), v1, "the checkout git_pull moved is back at the commit that runs");
}

#[tokio::test]
async fn a_recreate_that_cannot_read_what_runs_fails_without_a_rollback_and_puts_the_checkout_back() {
    let (w, target) = v1_running_v2_pushed(true).await;
    let v1 = w.head();
    target.with(|s| {
        s.failing.insert("snapshot");
        s.calls.clear();
    });
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status(&d, StepName::Recreate), StepStatus::Failed);
    assert!(d.step(StepName::Rollback).is_none(), "nothing was touched, nothing is rolled back");
    assert!(!target.calls().iter().any(|c| c.starts_with("apply")));
    assert_eq!(w.head(), v1);
}

#[tokio::test]
async fn the_migration_gate_parks_the_deploy_until_it_is_approved() {
    let w = World::new(Some(MigrationPolicy::Block), true);
    let target = Arc::new(FakeTarget::default());
    w.deployed(&target).await;
    w.push("migrations/002.sql", "alter");
    let deploy = w.queue(None);
    let (end, d) = w.run(&deploy, &target, Run::Normal).await;
    assert_eq!(end, RunEnd::Paused);
    assert_eq!(d.phase, Phase::AwaitingApproval);
    assert_eq!(status(&d, StepName::MigrationGate), StepStatus::Running);
    assert!(w.store.approve(&deploy.deploy_id, "approved").unwrap());
    let (_, d) = w.run(&w.store.deploy(&deploy.deploy_id).unwrap().unwrap(), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(status(&d, StepName::MigrationGate), StepStatus::Succeeded);
}

#[tokio::test]
async fn a_newer_push_supersedes_a_parked_deploy_and_is_the_one_that_runs() {
    let w = World::new(Some(MigrationPolicy::Block), true);
    let target = Arc::new(FakeTarget::default());
    w.deployed(&target).await;
    w.push("migrations/002.sql", "alter");
    let parked = w.queue(None);
    assert_eq!(w.run(&parked, &target, Run::Normal).await.1.phase, Phase::AwaitingApproval);

    let fixed = w.push("migrations/002.sql", "alter, fixed");
    let push = NewDeploy {
        app: w.app.name.clone(),
        trigger: Trigger {
            source: TriggerSource::Webhook,
            delivery: Some("d-2".into()),
            git_ref: "refs/heads/main".into(),
            requested_commit: Some(CommitSha::parse(&fixed).unwrap()),
        },
        approve_migrations: true,
        reason: None,
        steps: planned_steps(&w.app),
    };
    let delivery = forgejo_push("d-2", "kua/hello", &fixed);
    let PushRecord::Queued { deploy_id, superseded } = w.store.record_push(&push, delivery).unwrap() else {
        panic!("the push is queued");
    };
    assert_eq!(superseded, std::slice::from_ref(&parked.deploy_id));
    let old = w.store.deploy(&parked.deploy_id).unwrap().unwrap();
    assert_eq!(old.phase, Phase::Cancelled);
    assert_eq!(old.superseded_by.as_ref(), Some(&deploy_id));
    assert_eq!(status(&old, StepName::MigrationGate), StepStatus::Failed, "the gate that held it is closed");

    let (_, d) = w.run(&w.store.deploy(&deploy_id).unwrap().unwrap(), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.commit.map(|c| c.to_string()), Some(fixed));
}

#[tokio::test]
async fn a_shutdown_during_the_recreate_leaves_the_deploy_running_and_the_next_start_verifies_it() {
    let (w, target) = v1_running_v2_pushed(true).await;
    target.with(|s| s.apply_blocks = true);
    let deploy = w.queue(None);
    let (end, d) = w.run(&deploy, &target, Run::ShutdownAfter(300)).await;
    assert_eq!(end, RunEnd::LeftForResume);
    assert_eq!(d.phase, Phase::Running, "left for the next start: {d:#?}");
    assert_eq!(w.store.recover_orphans().unwrap().resume.len(), 1);

    // The next process: the recreate went on without the old one; it is waited for and verified.
    target.with(|s| {
        s.apply_blocks = false;
        s.calls.clear();
    });
    let (_, d) = w.run(&d, &target, Run::Resume).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(target.calls(), ["wait fake-process", "verify 000000000002"], "not applied twice");
}

#[tokio::test]
async fn a_deploy_resumed_after_its_verify_failed_rolls_back() {
    let (w, target) = v1_running_v2_pushed(true).await;
    target.with(|s| {
        s.next_build_broken = true;
        s.apply_blocks = true;
    });
    let deploy = w.queue(None);
    let (_, d) = w.run(&deploy, &target, Run::ShutdownAfter(300)).await;
    assert_eq!(d.phase, Phase::Running);
    target.with(|s| s.apply_blocks = false);
    let (_, d) = w.run(&d, &target, Run::Resume).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(target.state.lock().unwrap().running, images(1));
}

#[tokio::test]
async fn a_recreate_found_not_done_after_a_restart_is_redone() {
    let (w, target) = v1_running_v2_pushed(true).await;
    target.with(|s| s.apply_blocks = true);
    let (_, d) = w.run(&w.queue(None), &target, Run::ShutdownAfter(300)).await;
    // As if the machine went down with the recreate: what ran before still runs.
    target.with(|s| {
        s.apply_blocks = false;
        s.running = images(1);
        s.calls.clear();
    });
    let (_, d) = w.run(&d, &target, Run::Resume).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(target.calls(), ["wait fake-process", "apply 000000000002", "verify 000000000002"]);
}

#[tokio::test]
async fn kua_deploys_own_recreate_is_handed_over_and_left_for_the_process_that_comes_back() {
    let (w, target) = v1_running_v2_pushed(true).await;
    target.with(|s| s.calls.clear());
    let handoff = FakeHandOff { service: web(), fails: None };
    let (end, d) = w.run_self(&w.queue(None), &target, Run::Normal, Some(handoff)).await;
    assert_eq!(end, RunEnd::Paused);
    assert_eq!(d.phase, Phase::SelfRecreatePending, "{d:#?}");
    assert_eq!(d.previous_images, images(1), "what ran is recorded before the handoff");
    assert!(!target.calls().iter().any(|c| c.starts_with("apply")), "no ordinary recreate: {:?}", target.calls());
}

#[tokio::test]
async fn a_failed_handoff_fails_the_deploy_without_a_rollback_of_kua_deploy_itself() {
    let (w, target) = v1_running_v2_pushed(true).await;
    let handoff = FakeHandOff { service: web(), fails: Some("no engine socket mounted".into()) };
    let (_, d) = w.run_self(&w.queue(None), &target, Run::Normal, Some(handoff)).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert!(d.step(StepName::Rollback).is_none(), "restarting itself on the old image would only stop it");
    assert!(d.error.as_deref().unwrap().contains("no engine socket mounted"));
}

/// The queue as the server runs it, with `target` as every deploy's runtime.
fn queue_over(w: &World, target: &Arc<FakeTarget>) -> Queue {
    let registry = Registry {
        path: w.checkout.join("registry.json"),
        apps: [(w.app.name.clone(), w.app.clone())].into(),
        hosts: Default::default(),
        self_app: None,
        public_url: None,
        limits: Default::default(),
    };
    queue_of(&w.store, registry, Arc::new(FakeTargets(target.clone())))
}

/// The queue as the server makes it, over `targets`.
fn queue_of(store: &Store, registry: Registry, targets: Arc<dyn crate::target::Targets>) -> Queue {
    Queue::new(
        store.clone(),
        Arc::new(registry),
        Redactor::new(Vec::<String>::new()),
        CancellationToken::new(),
        None,
        crate::selfupdate::HANDOFF_CEILING,
        targets,
    )
}

fn api_request(w: &World) -> Request {
    Request { app: w.app.name.clone(), trigger: api_trigger(None), approve_migrations: false, reason: None }
}

/// A release through the admin API, of `commit` or the branch head.
fn api_trigger(commit: Option<&str>) -> Trigger {
    Trigger {
        source: TriggerSource::Api,
        delivery: None,
        git_ref: "refs/heads/main".into(),
        requested_commit: commit.map(|c| CommitSha::parse(c).unwrap()),
    }
}

/// Waits until the fake has been asked for an operation starting with `op`.
async fn called(target: &FakeTarget, op: &str) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while !target.calls().iter().any(|c| c.starts_with(op)) {
        assert!(tokio::time::Instant::now() < deadline, "never called {op}: {:?}", target.calls());
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

/// Waits for the deploy to end, woken by the store's notifications.
async fn ended(store: &Store, id: &crate::model::DeployId) -> Deploy {
    let mut watch = store.watch(id);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let d = store.deploy(id).unwrap().unwrap();
        if d.phase.is_terminal() {
            return d;
        }
        assert!(tokio::time::timeout_at(deadline, watch.phase_changed()).await.is_ok(), "never ended: {d:#?}");
    }
}

#[tokio::test]
async fn a_cancel_during_a_build_kills_it_and_the_deploy_ends_cancelled_with_the_checkout_put_back() {
    let (w, target) = v1_running_v2_pushed(true).await;
    let v1 = w.head();
    target.with(|s| {
        s.calls.clear();
        s.build_blocks = true;
    });
    let queue = queue_over(&w, &target);
    let d = queue.submit(api_request(&w)).unwrap();
    called(&target, "build").await;
    let d = queue.cancel(&d.deploy_id).await.unwrap();
    assert_eq!(d.phase, Phase::Cancelled, "{d:#?}");
    assert_eq!(status(&d, StepName::Build), StepStatus::Failed);
    assert!(d.error.as_deref().unwrap().contains("cancelled during step build"), "{:?}", d.error);
    assert_eq!(w.head(), v1, "the checkout is back where it was");
    assert!(!target.calls().iter().any(|c| c.starts_with("apply")), "nothing recreated: {:?}", target.calls());
}

#[tokio::test]
async fn a_cancel_during_the_recreate_is_refused_and_the_deploy_goes_on_to_verify() {
    let (w, target) = v1_running_v2_pushed(true).await;
    let gate = Arc::new(tokio::sync::Notify::new());
    target.with(|s| {
        s.calls.clear();
        s.apply_gate = Some(gate.clone());
    });
    let queue = queue_over(&w, &target);
    let d = queue.submit(api_request(&w)).unwrap();
    called(&target, "apply").await;
    let refused = queue.cancel(&d.deploy_id).await;
    assert!(matches!(refused, Err(QueueError::CancelRefused(_))), "{refused:?}");
    gate.notify_one();
    let d = ended(&w.store, &d.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(target.state.lock().unwrap().running, images(2));
}

/// Hands kua-deploy's own v2 deploy over; the deploy, and the ends the hook sees from then on.
async fn handed_over() -> (World, Deploy, Arc<Mutex<Vec<Phase>>>) {
    let (w, target) = v1_running_v2_pushed(true).await;
    let ends = Arc::new(Mutex::new(Vec::new()));
    let seen = ends.clone();
    w.store.on_deploy_end(Arc::new(move |_, phase| seen.lock().unwrap().push(phase)));
    let handoff = FakeHandOff { service: web(), fails: None };
    let (_, d) = w.run_self(&w.queue(None), &target, Run::Normal, Some(handoff)).await;
    assert_eq!(d.phase, Phase::SelfRecreatePending, "{d:#?}");
    (w, d, ends)
}

fn registry_of(w: &World) -> Registry {
    Registry {
        path: w.checkout.join("registry.json"),
        apps: [(w.app.name.clone(), w.app.clone())].into(),
        hosts: Default::default(),
        self_app: Some(w.app.name.clone()),
        public_url: None,
        limits: Default::default(),
    }
}

/// kua-deploy's own container as the process that came back finds it, running `image`.
async fn came_back_on(image: &crate::model::ImageId) -> SelfRuns {
    // Started after the recreate began.
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    SelfRuns {
        service: web(),
        container_id: "own".into(),
        image: image.to_string(),
        state: "running".into(),
        health: "healthy".into(),
        started_at: crate::model::now_rfc3339(),
    }
}

#[tokio::test]
async fn kua_deploys_own_deploy_ends_succeeded_once_when_it_came_back_on_the_verified_new_image() {
    let (w, d, ends) = handed_over().await;
    let own = came_back_on(&d.images[&web()]).await;
    let witness = FakeWitness(Ok(HandOffSeen { verdict: Some(0), own: Some(own) }));
    complete_handoffs(&w.store, &witness, &registry_of(&w)).await;
    let d = w.store.deploy(&d.deploy_id).unwrap().unwrap();
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(
        (status(&d, StepName::Recreate), status(&d, StepName::Verify)),
        (StepStatus::Succeeded, StepStatus::Succeeded)
    );
    assert!(d.verify.as_ref().is_some_and(|v| v.ok), "{:?}", d.verify);
    // A second start finds nothing pending and ends nothing again.
    complete_handoffs(&w.store, &witness, &registry_of(&w)).await;
    assert_eq!(*ends.lock().unwrap(), [Phase::Succeeded], "the end is observed once");
}

#[tokio::test]
async fn kua_deploys_own_deploy_ends_rolled_back_when_the_transient_container_brought_the_old_image_back() {
    let (w, d, _) = handed_over().await;
    let own = came_back_on(&d.previous_images[&web()]).await;
    let witness = FakeWitness(Ok(HandOffSeen { verdict: Some(1), own: Some(own) }));
    complete_handoffs(&w.store, &witness, &registry_of(&w)).await;
    let d = w.store.deploy(&d.deploy_id).unwrap().unwrap();
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(status(&d, StepName::Verify), StepStatus::Failed);
    assert_eq!(status(&d, StepName::Rollback), StepStatus::Succeeded);
}

#[tokio::test]
async fn kua_deploys_own_deploy_fails_when_the_new_image_runs_without_a_verdict_or_nothing_can_be_seen() {
    for (seen, says) in [
        (Ok(()), "did not verify the new image (exit status 2)"),
        (Err("the transient container gave no verdict within 10s".to_owned()), "no verdict within"),
    ] {
        let (w, d, _) = handed_over().await;
        let seen = match seen {
            Ok(_) => Ok(HandOffSeen { verdict: Some(2), own: Some(came_back_on(&d.images[&web()]).await) }),
            Err(e) => Err(e),
        };
        complete_handoffs(&w.store, &FakeWitness(seen), &registry_of(&w)).await;
        let d = w.store.deploy(&d.deploy_id).unwrap().unwrap();
        assert_eq!(d.phase, Phase::Failed, "{d:#?}");
        assert!(d.error.as_deref().unwrap().contains(says), "{:?}", d.error);
        assert!(d.steps.iter().all(|s| s.status != StepStatus::Running), "no step left running: {:#?}", d.steps);
    }
}

#[tokio::test]
async fn runtime_status_reads_the_target_and_flags_drift_when_what_runs_is_not_what_was_verified() {
    let w = World::new(None, true);
    let target = Arc::new(FakeTarget::default());
    let d = w.deployed(&target).await;
    let redactor = Redactor::new(Vec::<String>::new());
    let status =
        super::runtime::runtime_status(&w.app, target.as_ref(), &redactor, Some(d.clone()), Some(&d)).await.unwrap();
    assert!(!status.drift, "{status:#?}");
    assert_eq!(status.git_head.as_deref(), Some(w.head().as_str()));
    // Someone ran another image by hand.
    target.with(|s| s.running = images(7));
    let status =
        super::runtime::runtime_status(&w.app, target.as_ref(), &redactor, Some(d.clone()), Some(&d)).await.unwrap();
    assert!(status.drift, "{status:#?}");
    assert!(!status.services[0].containers[0].matches_last_deploy);
}

/// A vault stand-in on disk: a shell script that counts its runs and then does `body`.
fn vault(w: &World, body: &str, format: SecretsFormat, timeout_s: u64) -> SecretsConfig {
    let dir = w._dir.path();
    let script = dir.join("vault.sh");
    std::fs::write(&script, format!("#!/bin/sh\necho \"$1\" >> {}/vault.runs\n{body}\n", dir.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    SecretsConfig { command: vec![script.display().to_string(), "{app}".into()], format, timeout_s }
}

fn vault_runs(w: &World) -> Vec<String> {
    std::fs::read_to_string(w._dir.path().join("vault.runs")).unwrap_or_default().lines().map(str::to_owned).collect()
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
            found.push(path);
        }
    }
    found
}

#[tokio::test]
async fn a_vaults_values_reach_the_runtime_and_only_their_names_are_recorded() {
    let (mut w, target) = v1_running_v2_pushed(true).await;
    let body = "printf 'DB_PASSWORD=s3cr3t-value-1\\nexport API_KEY=\"k3y-value-2\"\\n'";
    w.app.secrets = Some(vault(&w, body, SecretsFormat::Dotenv, 5));
    target.with(|s| s.calls.clear());
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.step(StepName::Secrets).unwrap().detail, "provided DB_PASSWORD, API_KEY");
    assert_eq!(vault_runs(&w), ["hello"], "{{app}} became the app's name");
    let calls = target.calls();
    // git_pull reads the configuration, the secrets step gives the values and reads it again.
    assert_eq!(&calls[..4], ["resolve", "secrets DB_PASSWORD,API_KEY", "resolve", "build"], "{calls:?}");
    let given = target.state.lock().unwrap().secrets.clone();
    assert_eq!(
        given,
        [("DB_PASSWORD".to_owned(), "s3cr3t-value-1".to_owned()), ("API_KEY".into(), "k3y-value-2".into())]
    );
    // Nowhere in the state dir (database, WAL, anything), the API's deploy object or its log.
    for value in ["s3cr3t-value-1", "k3y-value-2"] {
        assert_eq!(files_holding(&w._dir.path().join("state"), value), Vec::<PathBuf>::new());
        assert!(!serde_json::to_string(&d).unwrap().contains(value));
        let (lines, _) = w.store.log_page(&d.deploy_id, 0, 10_000, 1 << 20).unwrap();
        assert!(!lines.iter().any(|l| l.line.contains(value)));
    }
}

#[tokio::test]
async fn a_vault_that_fails_prints_garbage_hangs_or_gives_a_short_value_fails_the_deploy_before_build() {
    for (body, timeout_s, says) in [
        ("echo 'the vault is sealed' >&2; exit 3", 5, "exited with status 3: the vault is sealed"),
        ("printf 'GOOD=long-enough\\nthis-is-not-dotenv\\n'", 5, "line 2 that is not KEY=VALUE"),
        ("sleep 20", 1, "did not finish within 1s"),
        ("printf 'PIN=123\\n'", 5, "the value of PIN is shorter than 4 characters"),
    ] {
        let (mut w, target) = v1_running_v2_pushed(true).await;
        let v1 = w.head();
        w.app.secrets = Some(vault(&w, body, SecretsFormat::Dotenv, timeout_s));
        target.with(|s| s.calls.clear());
        let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
        assert_eq!(d.phase, Phase::Failed, "{d:#?}");
        assert!(d.error.as_deref().unwrap().contains(says), "{body}: {:?}", d.error);
        assert_eq!(status(&d, StepName::Secrets), StepStatus::Failed);
        assert_ne!(status(&d, StepName::Build), StepStatus::Succeeded);
        assert!(!target.calls().iter().any(|c| c == "build" || c.starts_with("apply")), "{:?}", target.calls());
        assert_eq!(target.state.lock().unwrap().running, images(1), "the app is untouched");
        assert_eq!(w.head(), v1, "the checkout is put back");
    }
}

#[tokio::test]
async fn a_rollback_fetches_the_secrets_again_since_nothing_was_kept() {
    let (mut w, target) = v1_running_v2_pushed(true).await;
    w.app.secrets = Some(vault(&w, r#"echo '{"DB_PASSWORD": "s3cr3t-value-1"}'"#, SecretsFormat::Json, 5));
    target.with(|s| s.next_build_broken = true);
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(vault_runs(&w).len(), 2, "once for the release, once for the rollback");
}

#[tokio::test]
async fn a_variable_the_compose_files_use_and_the_vault_did_not_give_fails_the_deploy_naming_it() {
    let (mut w, target) = v1_running_v2_pushed(true).await;
    w.app.secrets = Some(vault(&w, "echo DB_PASSWORD=s3cr3t-value-1", SecretsFormat::Dotenv, 5));
    target.with(|s| {
        s.calls.clear();
        s.unset = vec!["SMTP_PASSWORD".into()];
    });
    let (_, d) = w.run(&w.queue(None), &target, Run::Normal).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert!(d.error.as_deref().unwrap().contains("use SMTP_PASSWORD, which the secrets command did not give"));
    assert!(!target.calls().iter().any(|c| c == "build"));
}

#[test]
fn no_step_writes_the_store_or_names_a_runtime_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/pipeline");
    for step in ["git_pull", "migration_gate", "secrets", "build", "migrate", "recreate", "verify", "rollback"] {
        let text = std::fs::read_to_string(dir.join(format!("{step}.rs"))).unwrap();
        for needle in ["ctx.store", "crate::store", "crate::docker", "target::compose", "selfupdate::"] {
            assert!(!text.contains(needle), "{step}.rs names `{needle}`: go through ctx.record, ctx.target");
        }
    }
}

/// A Forgejo push delivery of `after` to `main` of `repository`, as the webhook intake records it.
fn forgejo_push(id: &str, repository: &str, after: &str) -> Delivery {
    Delivery {
        id: Some(id.into()),
        provider: "forgejo".into(),
        event: "push".into(),
        repository: repository.into(),
        git_ref: Some("refs/heads/main".into()),
        after: Some(after.to_owned()),
        outcome: String::new(),
        reason: String::new(),
        deploy_id: None,
        received_at: crate::model::now_rfc3339(),
    }
}

/// Each app its own fake runtime, as each app has its own Compose project.
struct PerApp(std::collections::BTreeMap<AppName, Arc<FakeTarget>>);

impl crate::target::Targets for PerApp {
    fn target(
        &self,
        app: &AppConfig,
        _: Option<crate::model::ProjectName>,
        _: &str,
        _: Host,
    ) -> Arc<dyn crate::target::Target> {
        self.0[&app.name].clone()
    }
}

/// Two apps on the local host (`hello` and `other`) in one store, through the queue as the server
/// runs it under `limits`; each app's builds wait for its gate.
struct Fleet {
    worlds: [World; 2],
    targets: [Arc<FakeTarget>; 2],
    gates: [Arc<tokio::sync::Notify>; 2],
    queue: Queue,
}

impl Fleet {
    fn new(deploys: usize, per_host: usize, migrations: Option<MigrationPolicy>) -> Fleet {
        let a = World::new(migrations, true);
        let mut b = World::new(None, true);
        b.app.name = AppName::parse("other").unwrap();
        b.store = a.store.clone();
        let gates = [Arc::new(tokio::sync::Notify::new()), Arc::new(tokio::sync::Notify::new())];
        let targets = [Arc::new(FakeTarget::default()), Arc::new(FakeTarget::default())];
        for (t, g) in targets.iter().zip(&gates) {
            t.with(|s| s.build_gate = Some(g.clone()));
        }
        let registry = Registry {
            path: a.checkout.join("registry.json"),
            apps: [(a.app.name.clone(), a.app.clone()), (b.app.name.clone(), b.app.clone())].into(),
            hosts: Default::default(),
            self_app: None,
            public_url: None,
            limits: crate::config::DeployLimits { deploys, deploys_per_host: per_host, per_host: Default::default() },
        };
        let per_app =
            PerApp([(a.app.name.clone(), targets[0].clone()), (b.app.name.clone(), targets[1].clone())].into());
        let queue = queue_of(&a.store, registry, Arc::new(per_app));
        Fleet { worlds: [a, b], targets, gates, queue }
    }

    fn store(&self) -> &Store {
        &self.worlds[0].store
    }

    fn submit(&self, i: usize) -> Deploy {
        self.queue.submit(api_request(&self.worlds[i])).unwrap()
    }

    fn phase(&self, d: &Deploy) -> Phase {
        self.store().deploy(&d.deploy_id).unwrap().unwrap().phase
    }

    fn log(&self, d: &Deploy) -> Vec<String> {
        let (lines, _) = self.store().log_page(&d.deploy_id, 0, 10_000, 1 << 20).unwrap();
        lines.into_iter().map(|l| l.line).collect()
    }

    /// Queues a deploy of the first app and, once it builds, one of the second, which waits for a
    /// slot saying `line`.
    async fn second_waiting(&self, line: &str) -> (Deploy, Deploy) {
        let first = self.submit(0);
        called(&self.targets[0], "build").await;
        let second = self.submit(1);
        self.logged(&second, line).await;
        (first, second)
    }

    /// Lets both apps' builds go on, and waits for both deploys to end.
    async fn release_both(&self, first: &Deploy, second: &Deploy) -> (Deploy, Deploy) {
        self.gates[1].notify_one();
        self.gates[0].notify_one();
        (ended(self.store(), &first.deploy_id).await, ended(self.store(), &second.deploy_id).await)
    }

    /// Waits until the deploy is in `phase`.
    async fn until(&self, d: &Deploy, phase: Phase) {
        let mut watch = self.store().watch(&d.deploy_id);
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.phase(d) != phase {
            let woken = tokio::time::timeout_at(deadline, watch.phase_changed()).await;
            assert!(woken.is_ok(), "never {phase}: {:#?}", self.store().deploy(&d.deploy_id));
        }
    }

    /// Waits until the deploy's log has `line`.
    async fn logged(&self, d: &Deploy, line: &str) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        while !self.log(d).iter().any(|l| l == line) {
            assert!(tokio::time::Instant::now() < deadline, "never logged {line:?}: {:#?}", self.log(d));
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
}

const WAITING_ON_LOCAL: &str = "waiting for a free slot on host local: 1 deploy running there (limit 1)";

#[tokio::test]
async fn with_one_deploy_per_host_a_second_app_on_the_host_waits_queued_and_runs_once_the_first_ends() {
    let f = Fleet::new(8, 1, None);
    let (first, second) = f.second_waiting(WAITING_ON_LOCAL).await;
    assert_eq!(f.phase(&second), Phase::Queued, "a deploy waiting for a slot stays queued");
    assert!(f.targets[1].calls().is_empty(), "nothing of it ran: {:?}", f.targets[1].calls());

    let (first, second) = f.release_both(&first, &second).await;
    assert_eq!((first.phase, second.phase), (Phase::Succeeded, Phase::Succeeded), "{second:#?}");
    assert!(second.started_at >= first.finished_at, "one after the other: {first:#?}\n{second:#?}");
    let log = f.log(&second);
    assert_eq!(log.iter().filter(|l| l.starts_with("waiting for")).count(), 1, "said once: {log:#?}");
    assert!(log.iter().any(|l| l.starts_with("got a slot after waiting")), "{log:#?}");
}

#[tokio::test]
async fn the_global_limit_makes_a_deploy_wait_even_when_its_host_has_room() {
    let f = Fleet::new(1, 2, None);
    let (first, second) =
        f.second_waiting("waiting for a free deploy slot: 1 deploy running on all hosts (limit 1)").await;
    assert_eq!(f.phase(&second), Phase::Queued);
    let (first, second) = f.release_both(&first, &second).await;
    assert_eq!(second.phase, Phase::Succeeded, "{second:#?}");
    assert!(second.started_at >= first.finished_at);
}

#[tokio::test]
async fn a_deploy_waiting_for_a_slot_is_cancelled_at_once_and_leaves_no_slot_taken() {
    let f = Fleet::new(8, 1, None);
    let (first, waiting) = f.second_waiting(WAITING_ON_LOCAL).await;
    let asked = std::time::Instant::now();
    let cancelled = f.queue.cancel(&waiting.deploy_id).await.unwrap();
    assert!(asked.elapsed() < std::time::Duration::from_secs(1), "took {:?}", asked.elapsed());
    assert_eq!(cancelled.phase, Phase::Cancelled, "{cancelled:#?}");
    assert!(cancelled.error.as_deref().unwrap().contains("cancelled while queued"), "{:?}", cancelled.error);
    assert!(f.targets[1].calls().is_empty());

    f.gates[0].notify_one();
    assert_eq!(ended(f.store(), &first.deploy_id).await.phase, Phase::Succeeded);
    // The slot is free again: the next deploy of the other app does not wait.
    f.gates[1].notify_one();
    let next = f.submit(1);
    let next = ended(f.store(), &next.deploy_id).await;
    assert_eq!(next.phase, Phase::Succeeded, "{next:#?}");
    assert!(!f.log(&next).iter().any(|l| l.starts_with("waiting for")), "{:#?}", f.log(&next));
}

#[tokio::test]
async fn a_deploy_parked_awaiting_approval_holds_no_slot_and_waits_for_one_when_approved() {
    let f = Fleet::new(8, 1, Some(MigrationPolicy::Block));
    let a = &f.worlds[0];
    f.gates[0].notify_one();
    a.deployed(&f.targets[0]).await;
    a.push("migrations/002.sql", "alter");
    let parked = f.submit(0);
    f.until(&parked, Phase::AwaitingApproval).await;
    // The other app's deploy runs at once, though the limit is one deploy on the host.
    f.gates[1].notify_one();
    let other = f.submit(1);
    let other = ended(f.store(), &other.deploy_id).await;
    assert_eq!(other.phase, Phase::Succeeded, "{other:#?}");
    assert!(!f.log(&other).iter().any(|l| l.starts_with("waiting for")));

    f.gates[0].notify_one();
    f.queue.approve(&parked.deploy_id).unwrap();
    assert_eq!(ended(f.store(), &parked.deploy_id).await.phase, Phase::Succeeded);
}

#[tokio::test]
async fn a_push_while_the_app_waits_for_a_slot_replaces_the_waiting_deploy_and_the_newest_runs() {
    let f = Fleet::new(8, 1, None);
    let first = f.submit(0);
    called(&f.targets[0], "build").await;
    let b = &f.worlds[1];
    let push = |n: u32, commit: &str| {
        let req = Request {
            app: b.app.name.clone(),
            trigger: Trigger {
                source: TriggerSource::Webhook,
                delivery: Some(format!("d-{n}")),
                git_ref: "refs/heads/main".into(),
                requested_commit: Some(CommitSha::parse(commit).unwrap()),
            },
            approve_migrations: false,
            reason: None,
        };
        let delivery = forgejo_push(&format!("d-{n}"), "kua/other", commit);
        match f.queue.submit_push(req, delivery).unwrap() {
            PushRecord::Queued { deploy_id, .. } => f.store().deploy(&deploy_id).unwrap().unwrap(),
            other => panic!("the push is queued: {other:?}"),
        }
    };
    let older = push(1, &b.push("index.html", "v2"));
    f.logged(&older, WAITING_ON_LOCAL).await;
    let newest_commit = b.push("index.html", "v3");
    let newest = push(2, &newest_commit);
    let older = f.store().deploy(&older.deploy_id).unwrap().unwrap();
    assert_eq!(older.phase, Phase::Cancelled);
    assert_eq!(older.superseded_by.as_ref(), Some(&newest.deploy_id));
    f.logged(&newest, WAITING_ON_LOCAL).await;

    f.gates[1].notify_one();
    f.gates[0].notify_one();
    assert_eq!(ended(f.store(), &first.deploy_id).await.phase, Phase::Succeeded);
    let newest = ended(f.store(), &newest.deploy_id).await;
    assert_eq!(newest.phase, Phase::Succeeded, "{newest:#?}");
    assert_eq!(newest.commit.map(|c| c.to_string()), Some(newest_commit));
    assert_eq!(f.targets[1].calls().iter().filter(|c| *c == "build").count(), 1, "only the newest built");
}

#[tokio::test]
async fn a_deploy_waiting_for_a_slot_when_the_server_stops_stays_queued_for_the_next_start() {
    let f = Fleet::new(8, 1, None);
    let (first, waiting) = f.second_waiting(WAITING_ON_LOCAL).await;
    f.queue.shutdown(std::time::Duration::from_secs(5)).await;
    assert_eq!(f.phase(&first), Phase::Interrupted);
    let waiting = f.store().deploy(&waiting.deploy_id).unwrap().unwrap();
    assert_eq!(waiting.phase, Phase::Queued, "{waiting:#?}");
    assert_eq!(waiting.started_at, None);
}
