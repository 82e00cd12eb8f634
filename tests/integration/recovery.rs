//! A server that dies mid-deploy, and one told to stop.

use std::time::Duration;

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{Phase, StepName, StepStatus};

use crate::support::{AppOptions, Behaviour, TestApp};

#[tokio::test(flavor = "multi_thread")]
async fn a_server_killed_during_build_marks_the_deploy_interrupted_on_restart_and_the_app_is_untouched() {
    let app = TestApp::new(AppOptions::default());
    let mut server = app.start();
    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&ok.deploy_id).await.phase, Phase::Succeeded);
    let before = app.web_containers();

    app.push("slow", Behaviour::SlowBuild(20));
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server
        .wait_for(&acc.deploy_id, Duration::from_secs(30), |d| {
            d.step(StepName::Build).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    server.kill9();

    let server = app.start();
    let d = server.client.deploy_status(&acc.deploy_id).await.unwrap();
    assert_eq!(d.phase, Phase::Interrupted, "{d:#?}");
    assert!(d.error.as_deref().unwrap().contains("build"), "{:?}", d.error);
    assert_eq!(d.step(StepName::Build).unwrap().status, StepStatus::Failed);
    assert!(d.finished_at.is_some());
    assert_eq!(app.web_containers(), before);
    assert_eq!(app.fetch().as_deref(), Some("v1"));

    // The app is free again: a new deploy runs.
    let again = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_ne!(again.deploy_id, acc.deploy_id);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_during_a_deploy_stops_the_server_promptly_and_leaves_nothing_running() {
    let app = TestApp::new(AppOptions::default());
    app.push("slow", Behaviour::SlowBuild(30));
    let mut server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server
        .wait_for(&acc.deploy_id, Duration::from_secs(30), |d| {
            d.step(StepName::Build).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    let took = server.terminate();
    assert!(took < Duration::from_secs(5), "SIGTERM took {took:?}");

    let server = app.start();
    let d = server.client.deploy_status(&acc.deploy_id).await.unwrap();
    assert_eq!(d.phase, Phase::Interrupted, "{d:#?}");
    assert!(d.steps.iter().all(|s| s.status != StepStatus::Running));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_still_queued_when_the_server_stopped_runs_after_restart() {
    // Queue a deploy through the store directly, as a server that died right after accepting it
    // would have left it, then start the server on that state.
    let app = TestApp::new(AppOptions::default());
    let store = kua_deploy::store::Store::open(&app.state).unwrap();
    let registry = kua_deploy::config::Registry::load(&app.registry).unwrap();
    let queued = store
        .insert_deploy(&kua_deploy::store::NewDeploy {
            app: app.name.clone(),
            trigger: kua_deploy::model::Trigger {
                source: kua_deploy::model::TriggerSource::Api,
                delivery: None,
                git_ref: "refs/heads/main".into(),
                requested_commit: None,
            },
            approve_migrations: false,
            reason: None,
            steps: kua_deploy::pipeline::planned_steps(registry.app(&app.name).unwrap()),
        })
        .unwrap();
    drop(store);
    let server = app.start();
    let d = server.wait_end(&queued.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_left_by_an_interrupted_recreate_does_not_block_the_next_deploy() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let ok = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&ok.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded);
    // What `docker compose up --force-recreate` leaves when killed between creating the new
    // container (named `<old id>_<name>`) and removing the old one.
    let (old_id, image) = app.web_containers().remove(0);
    let leftover = format!("{}_{}-web-1", &old_id[..12], app.project);
    crate::support::sh(
        std::path::Path::new("/"),
        &[
            "docker",
            "create",
            "--name",
            &leftover,
            "--label",
            &format!("com.docker.compose.project={}", app.project),
            "--label",
            "com.docker.compose.service=web",
            "--label",
            "com.docker.compose.oneoff=False",
            "--label",
            "com.docker.compose.container-number=1",
            "--label",
            "kua-deploy.test=1",
            &image,
        ],
    );

    app.push("v2", Behaviour::Serve);
    let next = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&next.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v2"));
    let logs = server.client.logs(&next.deploy_id, 0).await.unwrap();
    assert!(logs.lines.iter().any(|l| l.line.contains(&leftover)), "the removal is logged");
}
