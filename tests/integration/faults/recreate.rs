//! The server stopped at the worst instant: SIGTERM or SIGKILL while `compose up` replaces the
//! app's container (slowed by a long stop grace period and a PID 1 that ignores SIGTERM), or while
//! verify watches it. Whatever the instant, the next start resumes the deploy and the app ends up
//! running the verified new image, or what ran before — never down, never left `running`.

use std::path::Path;
use std::time::Duration;

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{Phase, StepName, StepStatus};

use crate::support::{compose_yaml, git, sh, AppOptions, Behaviour, Server, TestApp};

/// An app whose container takes `grace` seconds to stop (busybox httpd ignores SIGTERM), so a
/// recreate is slow enough to be interrupted; v1 deployed and serving.
async fn slow_to_stop_app(grace: u32, opts: AppOptions) -> (TestApp, Server) {
    let app = TestApp::new(opts);
    std::fs::write(
        app.work.join("docker-compose.yml"),
        compose_yaml(&format!("    stop_grace_period: {grace}s\n"), ""),
    )
    .unwrap();
    git(&app.work, &["commit", "--quiet", "--allow-empty", "-am", "slow stop"]);
    git(&app.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    assert_eq!(app.fetch().as_deref(), Some("v1"));
    (app, server)
}

fn created_containers(app: &TestApp) -> String {
    sh(
        Path::new("/"),
        &[
            "docker",
            "ps",
            "-aq",
            "--filter",
            &format!("label=com.docker.compose.project={}", app.project),
            "--filter",
            "status=created",
        ],
    )
}

fn step_running(step: StepName) -> impl Fn(&kua_deploy::model::Deploy) -> bool {
    move |d| d.step(step).is_some_and(|s| s.status == StepStatus::Running)
}

/// Stops the server (SIGTERM or SIGKILL) two seconds into the recreate of v2, starts it again, and
/// checks the deploy ends `want` with the app serving `serves`.
async fn stop_during_recreate(kill: bool, release: Behaviour, want: Phase, serves: &str) {
    let (app, mut server) = slow_to_stop_app(6, AppOptions::default()).await;
    app.push("v2", release);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&acc.deploy_id, Duration::from_secs(60), step_running(StepName::Recreate)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    if kill {
        server.kill9();
    } else {
        let took = server.terminate();
        assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}: the server waited for the recreate");
    }
    drop(server);

    let server = app.start();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, want, "{d:#?}\n{}", server.log());
    assert_eq!(app.fetch().as_deref(), Some(serves), "the app serves after the restart");
    assert_eq!(app.web_containers().len(), 1, "one web container, not two");
    assert_eq!(created_containers(&app), "", "no container left created and never started");
    let logs = server.client.logs(&acc.deploy_id, 0).await.unwrap();
    assert!(logs.lines.iter().any(|l| l.line.contains("resuming this deploy")), "the resume is logged");
    assert!(d.steps.iter().all(|s| s.status != StepStatus::Running), "{d:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_recreate_leaves_the_recreate_running_and_the_next_start_verifies_it() {
    stop_during_recreate(false, Behaviour::Serve, Phase::Succeeded, "v2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_recreate_and_the_next_start_verifies_the_new_image() {
    stop_during_recreate(true, Behaviour::Serve, Phase::Succeeded, "v2").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_recreate_of_a_release_that_crashes_ends_rolled_back_after_the_restart() {
    stop_during_recreate(true, Behaviour::Crash, Phase::RolledBack, "v1").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_verify_is_resumed_by_the_next_start_not_left_interrupted() {
    let opts = AppOptions { verify: serde_json::json!({"timeout_s": 30, "stable_s": 6}), ..AppOptions::default() };
    let (app, mut server) = slow_to_stop_app(1, opts).await;
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&acc.deploy_id, Duration::from_secs(60), step_running(StepName::Verify)).await;
    server.kill9();
    drop(server);

    let server = app.start();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert!(d.verify.as_ref().is_some_and(|v| v.ok), "{d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v2"));
    let status = server.client.runtime_status(&app.name).await.unwrap();
    assert!(!status.drift, "{status:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_recreate_killed_with_the_server_is_redone_by_the_next_start() {
    let (app, mut server) = slow_to_stop_app(6, AppOptions::default()).await;
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&acc.deploy_id, Duration::from_secs(60), step_running(StepName::Recreate)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // As if the whole machine went down: the server and the detached `compose up` with it.
    server.kill9();
    let pattern = format!("--project-name {} up", app.project);
    let killed = std::process::Command::new("pkill").args(["-KILL", "-f", "--", &pattern]).status().unwrap();
    assert!(killed.success(), "no detached `compose up` was found to kill");
    drop(server);

    let server = app.start();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}\n{}", server.log());
    assert_eq!(app.fetch().as_deref(), Some("v2"));
    assert_eq!(app.web_containers().len(), 1);
    assert_eq!(created_containers(&app), "");
    let logs = server.client.logs(&acc.deploy_id, 0).await.unwrap();
    assert!(
        logs.lines.iter().any(|l| l.line.contains("did not complete: recreating again")),
        "the recreate was redone, not found finished"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_rollback_is_resumed_and_ends_rolled_back_with_the_app_serving() {
    let (app, mut server) = slow_to_stop_app(4, AppOptions::default()).await;
    // v2 runs but turns unhealthy: its rollback stops a container that takes the grace period to
    // stop, which is when the server is killed.
    let unhealthy = "    stop_grace_period: 4s\n    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"false\"]\n      interval: 1s\n      retries: 1\n";
    std::fs::write(app.work.join("docker-compose.yml"), compose_yaml(unhealthy, "")).unwrap();
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&acc.deploy_id, Duration::from_secs(90), step_running(StepName::Rollback)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    server.kill9();
    drop(server);

    let server = app.start();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}\n{}", server.log());
    assert_eq!(app.fetch().as_deref(), Some("v1"));
    assert_eq!(app.web_containers().len(), 1);
    assert_eq!(created_containers(&app), "");
    let logs = server.client.logs(&acc.deploy_id, 0).await.unwrap();
    assert!(logs.lines.iter().any(|l| l.line.contains("resuming this deploy (Rollback")), "the rollback was resumed");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_build_does_not_outlive_a_server_killed_under_it() {
    let app = TestApp::new(AppOptions::default());
    app.push("slow", Behaviour::SlowBuild(30));
    let mut server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&acc.deploy_id, Duration::from_secs(30), step_running(StepName::Build)).await;
    let pattern = format!("--project-name {} build", app.project);
    let alive = || std::process::Command::new("pgrep").args(["-f", "--", &pattern]).output().unwrap().status.success();
    assert!(alive(), "the build runs before the kill");
    server.kill9();
    let gone = (0..30).any(|_| {
        std::thread::sleep(Duration::from_millis(100));
        !alive()
    });
    assert!(gone, "docker compose build still runs after the server was killed");
}
