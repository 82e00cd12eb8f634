//! The pipeline end to end on the local engine.

use std::time::Duration;

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{CommitSha, Phase, StepName, StepStatus};
use serde_json::json;

use crate::support::{git, AppOptions, Behaviour, TestApp};

fn status_of(d: &kua_deploy::model::Deploy, step: StepName) -> StepStatus {
    d.step(step).unwrap_or_else(|| panic!("no step {step} in {d:#?}")).status
}

#[tokio::test(flavor = "multi_thread")]
async fn two_successive_deploys_serve_the_new_content_from_the_recorded_image() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();

    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(first.phase, Phase::Queued);
    let d1 = server.wait_end(&first.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded, "{d1:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
    let names: Vec<_> = d1.steps.iter().map(|s| s.name).collect();
    assert_eq!(
        names,
        [StepName::GitPull, StepName::MigrationGate, StepName::Build, StepName::Recreate, StepName::Verify]
    );
    assert!(d1.steps.iter().all(|s| s.status == StepStatus::Succeeded), "{d1:#?}");

    let v2 = app.push("v2", Behaviour::Serve);
    let second = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d2 = server.wait_end(&second.deploy_id).await;
    assert_eq!(d2.phase, Phase::Succeeded, "{d2:#?}");
    assert_eq!(d2.commit.as_ref().map(|c| c.as_str()), Some(v2.as_str()));
    assert_eq!(d2.commit_before, d1.commit);
    assert_eq!(app.fetch().as_deref(), Some("v2"));

    // The container runs exactly the image ID the deploy recorded, and verify says so.
    let built = d2.images.get(&"web".parse().unwrap()).expect("web image recorded").clone();
    assert_ne!(Some(&built), d1.images.get(&"web".parse().unwrap()));
    let running = app.web_containers();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].1, built.as_str());
    let verify = d2.verify.expect("verify object");
    assert!(verify.ok);
    assert_eq!(verify.services[0].running_image.as_deref(), Some(built.as_str()));
    assert_eq!(verify.services[0].health, "healthy");
    assert_eq!(d2.previous_images, d1.images);

    // Progress and history agree, newest first.
    let progress = server.client.progress(&app.name).await.unwrap();
    assert_eq!(progress.deploy_id, second.deploy_id);
    let history = server.client.history(&app.name, 10).await.unwrap();
    assert_eq!(history.deploys.len(), 2);
    assert_eq!(history.deploys[0].deploy_id, second.deploy_id);

    // What runs is what the last deploy verified: no drift.
    let rs = server.client.runtime_status(&app.name).await.unwrap();
    assert!(!rs.drift, "{rs:#?}");
    assert_eq!(rs.git_head.as_deref(), Some(v2.as_str()));
    assert!(rs.services[0].containers[0].matches_last_deploy);

    // The log kept the commands' output.
    let logs = server.client.logs(&second.deploy_id, 0).await.unwrap();
    assert!(logs.lines.iter().any(|l| l.line.contains("step build started")), "{:?}", logs.lines);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_failure_leaves_the_old_container_serving() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&ok.deploy_id).await.phase, Phase::Succeeded);
    let before = app.web_containers();

    app.push("v2", Behaviour::BrokenBuild);
    let bad = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&bad.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(status_of(&d, StepName::Build), StepStatus::Failed);
    assert_eq!(status_of(&d, StepName::Recreate), StepStatus::Skipped);
    assert!(d.error.as_deref().unwrap().contains("build failed"), "{:?}", d.error);
    assert_eq!(app.web_containers(), before, "the running container was touched");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_crashes_on_start_is_rolled_back_to_the_previous_image() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&ok.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded);

    app.push("v2", Behaviour::Crash);
    let bad = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&bad.deploy_id).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(status_of(&d, StepName::Verify), StepStatus::Failed);
    assert_eq!(status_of(&d, StepName::Rollback), StepStatus::Succeeded);
    assert!(!d.verify.as_ref().unwrap().ok);
    assert_eq!(d.previous_images, d1.images);
    let running = app.web_containers();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].1, d1.images.values().next().unwrap().as_str());
    assert_eq!(app.fetch().as_deref(), Some("v1"));
    // The last successful deploy still describes what runs.
    assert!(!server.client.runtime_status(&app.name).await.unwrap().drift);
}

#[tokio::test(flavor = "multi_thread")]
async fn the_migration_gate_blocks_until_the_deploy_is_approved() {
    let app = TestApp::new(AppOptions {
        migrations: Some(json!({"paths": ["migrations/"], "policy": "block"})),
        ..AppOptions::default()
    });
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);

    std::fs::write(app.work.join("migrations/0002_add.sql"), "alter table t add c int;\n").unwrap();
    app.push("v2", Behaviour::Serve);
    let gated = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&gated.deploy_id).await;
    assert_eq!(d.phase, Phase::AwaitingApproval, "{d:#?}");
    assert!(d.step(StepName::MigrationGate).unwrap().detail.contains("0002_add.sql"));
    assert_eq!(app.fetch().as_deref(), Some("v1"), "nothing is recreated while awaiting approval");

    // A second trigger while one awaits approval is refused with that deploy's id.
    let err = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Some("deploy_in_progress"));

    server.client.approve(&gated.deploy_id).await.unwrap();
    let d = server.wait_end(&gated.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert!(d.step(StepName::MigrationGate).unwrap().detail.starts_with("approved"));
    assert_eq!(app.fetch().as_deref(), Some("v2"));

    // A trigger that approves migrations up front passes the gate at once.
    std::fs::write(app.work.join("migrations/0003_more.sql"), "select 1;\n").unwrap();
    app.push("v3", Behaviour::Serve);
    let req = DeployRequest { approve_migrations: true, reason: Some("ship v3".into()), ..Default::default() };
    let pre = server.client.deploy(&app.name, &req).await.unwrap();
    let d = server.wait_end(&pre.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.reason.as_deref(), Some("ship v3"));
    assert_eq!(app.fetch().as_deref(), Some("v3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_migration_command_fails_the_deploy_before_anything_is_recreated() {
    let app = TestApp::new(AppOptions {
        migrations: Some(json!({"paths": ["migrations/"], "policy": "run", "service": "web",
                                "command": ["/bin/busybox", "sh", "-c", "test -f /www/index.html && grep -q v1 /www/index.html"]})),
        ..AppOptions::default()
    });
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&first.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded, "{d1:#?}");
    assert_eq!(status_of(&d1, StepName::Migrate), StepStatus::Succeeded);
    let before = app.web_containers();

    // The migration command greps for v1 in the new image, so v2 makes it fail.
    app.push("v2", Behaviour::Serve);
    let second = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&second.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status_of(&d, StepName::Migrate), StepStatus::Failed);
    assert_eq!(status_of(&d, StepName::Recreate), StepStatus::Skipped);
    assert_eq!(app.web_containers(), before);
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_requested_commit_is_deployed_and_one_off_the_branch_is_refused() {
    let app = TestApp::new(AppOptions::default());
    let v1 = git(&app.work, &["rev-parse", "HEAD"]);
    app.push("v2", Behaviour::Serve);
    // A commit pushed only to another branch.
    git(&app.work, &["checkout", "--quiet", "-b", "side"]);
    let side = app.push_to("side", "side", Behaviour::Serve);
    git(&app.work, &["checkout", "--quiet", "main"]);
    let server = app.start();

    let req = DeployRequest { commit: Some(CommitSha::parse(&v1).unwrap()), ..Default::default() };
    let acc = server.client.deploy(&app.name, &req).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.trigger.requested_commit.as_ref().map(|c| c.as_str()), Some(v1.as_str()));
    assert_eq!(app.fetch().as_deref(), Some("v1"), "the requested commit, not the branch tip");

    let req = DeployRequest { commit: Some(CommitSha::parse(&side).unwrap()), ..Default::default() };
    let acc = server.client.deploy(&app.name, &req).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed);
    assert!(d.error.as_deref().unwrap().contains("not on branch main"), "{:?}", d.error);
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_with_local_changes_is_refused_and_keeps_them() {
    let app = TestApp::new(AppOptions::default());
    app.push("v2", Behaviour::Serve);
    std::fs::write(app.checkout.join("index.html"), "hand edit\n").unwrap();
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(status_of(&d, StepName::GitPull), StepStatus::Failed);
    assert!(d.error.as_deref().unwrap().contains("local changes"), "{:?}", d.error);
    assert_eq!(std::fs::read_to_string(app.checkout.join("index.html")).unwrap(), "hand edit\n");
    assert!(app.web_containers().is_empty(), "nothing was started");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_trigger_during_a_deploy_gets_409_and_cancel_stops_the_build() {
    let app = TestApp::new(AppOptions::default());
    app.push("slow", Behaviour::SlowBuild(30));
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server
        .wait_for(&acc.deploy_id, Duration::from_secs(30), |d| {
            d.step(StepName::Build).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    let err = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Some("deploy_in_progress"));
    match err {
        kua_deploy::cli::client::ClientError::Conflict { deploy_id, .. } => {
            assert_eq!(deploy_id, Some(acc.deploy_id.clone()))
        }
        other => panic!("expected a conflict, got {other:?}"),
    }

    let started = std::time::Instant::now();
    let d = server.client.cancel(&acc.deploy_id).await.unwrap();
    assert_eq!(d.phase, Phase::Cancelled, "{d:#?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(status_of(&d, StepName::Recreate), StepStatus::Skipped);
    // The killed `docker compose build` leaves no client process behind.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ps =
        std::process::Command::new("pgrep").args(["-f", &format!("project-name {}", app.project)]).output().unwrap();
    assert!(String::from_utf8_lossy(&ps.stdout).trim().is_empty(), "compose still runs");
    // Cancelling again is a conflict: it already ended.
    let err = server.client.cancel(&acc.deploy_id).await.unwrap_err();
    assert_eq!(err.code(), Some("already_finished"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_without_a_compose_file_fails_the_first_step_saying_what_compose_looks_for() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&ok.deploy_id).await.phase, Phase::Succeeded);
    let before = app.web_containers();

    git(&app.work, &["mv", "docker-compose.yml", "compose.renamed.yml"]);
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(status_of(&d, StepName::GitPull), StepStatus::Failed);
    let error = d.error.as_deref().unwrap();
    assert!(error.contains("no Compose file") && error.contains("docker-compose.yml"), "{error}");
    assert_eq!(app.web_containers(), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_engine_that_does_not_answer_fails_the_deploy_clearly_and_runtime_status_says_502() {
    let app = TestApp::new(AppOptions::default());
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_kua-deploy"));
    child
        .args(["serve", "--config", app.registry.to_str().unwrap(), "--state-dir", app.state.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("KUA_ADMIN_TOKEN", crate::support::TOKEN)
        .env("DOCKER_HOST", format!("unix://{}/no-engine.sock", app.dir.path().display()));
    let server = crate::support::Server::spawn(child);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(status_of(&d, StepName::Build), StepStatus::Failed);
    assert!(d.error.as_deref().unwrap().to_lowercase().contains("docker"), "{:?}", d.error);
    let err = server.client.runtime_status(&app.name).await.unwrap_err();
    assert!(matches!(err, kua_deploy::cli::client::ClientError::Server { status: 502, .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_dies_within_stable_s_fails_verify_and_is_rolled_back() {
    let app = TestApp::new(AppOptions { verify: json!({"timeout_s": 30, "stable_s": 5}), ..AppOptions::default() });
    let server = app.start();
    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&ok.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded);

    app.push("v2", Behaviour::DieAfter(3));
    let bad = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&bad.deploy_id).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    let verify = d.step(StepName::Verify).unwrap();
    assert_eq!(verify.status, StepStatus::Failed);
    assert!(verify.detail.contains("exited") || verify.detail.contains("restarted"), "{}", verify.detail);
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_status_reports_drift_when_what_runs_is_not_what_was_verified() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let rs = server.client.runtime_status(&app.name).await.unwrap();
    assert!(!rs.drift, "nothing deployed yet is not drift: {rs:#?}");
    assert!(rs.last_deploy.is_none());

    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&ok.deploy_id).await.phase, Phase::Succeeded);
    assert!(!server.client.runtime_status(&app.name).await.unwrap().drift);

    let (id, _) = app.web_containers().remove(0);
    crate::support::sh(std::path::Path::new("/"), &["docker", "stop", "--time", "1", &id]);
    let rs = server.client.runtime_status(&app.name).await.unwrap();
    assert!(rs.drift, "{rs:#?}");
    let c = &rs.services[0].containers[0];
    assert_eq!(c.state, "exited");
    assert!(!c.matches_last_deploy);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_checkout_with_local_commits_is_refused_and_keeps_them() {
    let app = TestApp::new(AppOptions::default());
    app.push("v2", Behaviour::Serve);
    std::fs::write(app.checkout.join("hotfix.txt"), "made on the server\n").unwrap();
    git(&app.checkout, &["add", "hotfix.txt"]);
    git(&app.checkout, &["commit", "--quiet", "-m", "hotfix on the server"]);
    let local = git(&app.checkout, &["rev-parse", "HEAD"]);
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed);
    assert!(d.error.as_deref().unwrap().contains("local commits"), "{:?}", d.error);
    assert_eq!(git(&app.checkout, &["rev-parse", "HEAD"]), local, "the local commit is still checked out");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_during_a_migration_stops_its_container_too() {
    let app = TestApp::new(AppOptions {
        migrations: Some(json!({"paths": ["migrations/"], "policy": "run", "service": "web",
                                "command": ["/bin/busybox", "sleep", "60"]})),
        ..AppOptions::default()
    });
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server
        .wait_for(&acc.deploy_id, Duration::from_secs(60), |d| {
            d.step(StepName::Migrate).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    let migrating = || {
        crate::support::sh(
            std::path::Path::new("/"),
            &["docker", "ps", "-q", "--filter", &format!("name={}-web-kua-migrate", app.project)],
        )
    };
    let start = std::time::Instant::now();
    while migrating().is_empty() {
        assert!(start.elapsed() < Duration::from_secs(20), "the migration container never started");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = server.client.cancel(&acc.deploy_id).await.unwrap();
    assert_eq!(d.phase, Phase::Cancelled, "{d:#?}");
    assert_eq!(status_of(&d, StepName::Migrate), StepStatus::Failed);
    assert!(migrating().is_empty(), "the migration container still runs");
    assert!(app.web_containers().is_empty(), "nothing was recreated");
}
