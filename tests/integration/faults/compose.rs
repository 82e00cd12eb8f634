//! Compose files that change between releases, and Compose's own rules: a release that changes
//! only `command:` or `healthcheck:` and fails verify is rolled back to the previous commit's
//! configuration (the app serves, the checkout is back, a plain `docker compose up -d` changes
//! nothing); with no `compose_files` and no `project`, kua-deploy uses what `docker compose` run in
//! the checkout would: `compose.yaml`, the override file, the top-level `name:` — and takes over
//! containers started by hand instead of starting a second copy.

use std::path::Path;
use std::process::Command;

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{Phase, StepName};

use crate::support::{compose_yaml, git, sh, AppOptions, Behaviour, TestApp};

/// An app whose registry names no project and no files: its Compose file says `name:`.
fn discovered_app() -> TestApp {
    TestApp::new(AppOptions { explicit_project: false, ..AppOptions::default() })
}

fn write_compose(app: &TestApp, file: &str, web_extra: &str) {
    let name = format!("name: {}\n", app.project);
    std::fs::write(app.work.join(file), compose_yaml(&format!("    stop_grace_period: 1s\n{web_extra}"), &name))
        .unwrap();
}

/// `docker compose up -d` in the checkout, as an operator would run it, and what it printed.
fn plain_compose_up(app: &TestApp) -> String {
    let out = Command::new("docker").args(["compose", "up", "-d"]).current_dir(&app.checkout).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "docker compose up -d failed: {text}");
    text
}

/// Deploys v1, then a v2 that changes only the Compose file (`web_extra` for `web`) in a way that
/// fails verify; checks the rollback brought back v1's configuration and images, whole.
async fn a_compose_only_change_that_fails_is_rolled_back_whole(web_extra: &str) {
    let app = discovered_app();
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&first.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded, "{d1:#?}");
    let v1 = git(&app.checkout, &["rev-parse", "HEAD"]);

    write_compose(&app, "docker-compose.yml", web_extra);
    git(&app.work, &["commit", "--quiet", "-am", "only the Compose file changes"]);
    git(&app.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    assert_eq!(d.previous_commit.as_ref().map(|c| c.as_str()), Some(v1.as_str()));

    assert_eq!(app.fetch().as_deref(), Some("v1"), "the app serves what it served before");
    assert_eq!(git(&app.checkout, &["rev-parse", "HEAD"]), v1, "the checkout is back at the commit that runs");
    let status = server.client.runtime_status(&app.name).await.unwrap();
    assert!(!status.drift, "{status:#?}");
    let container = status.services[0].containers[0].clone();
    assert_eq!(container.health, "healthy", "{status:#?}");

    // The operator's own `up` finds nothing to change: same configuration, tag on the image that runs.
    let before = app.web_containers();
    let said = plain_compose_up(&app);
    assert_eq!(app.web_containers(), before, "docker compose up -d recreated the container: {said}");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_changes_only_command_and_fails_is_rolled_back_with_the_previous_configuration() {
    a_compose_only_change_that_fails_is_rolled_back_whole(
        "    command: [\"/bin/busybox\", \"sh\", \"-c\", \"echo broken; exit 3\"]\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_release_that_changes_only_the_healthcheck_and_turns_unhealthy_is_rolled_back_healthy() {
    a_compose_only_change_that_fails_is_rolled_back_whole(
        "    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"false\"]\n      interval: 1s\n      retries: 1\n",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn runtime_status_counts_an_unhealthy_container_of_the_verified_image_as_drift() {
    let app = discovered_app();
    write_compose(
        &app,
        "docker-compose.yml",
        "    healthcheck:\n      test: [\"CMD\", \"/bin/busybox\", \"test\", \"-f\", \"/www/index.html\"]\n      interval: 1s\n      retries: 1\n",
    );
    app.push("v1", Behaviour::Serve);
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    assert!(!server.client.runtime_status(&app.name).await.unwrap().drift);

    let (id, _) = app.web_containers().remove(0);
    sh(Path::new("/"), &["docker", "exec", &id, "/bin/busybox", "rm", "/www/index.html"]);
    let mut status = server.client.runtime_status(&app.name).await.unwrap();
    for _ in 0..50 {
        if status.services[0].containers[0].health == "unhealthy" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        status = server.client.runtime_status(&app.name).await.unwrap();
    }
    let c = &status.services[0].containers[0];
    assert_eq!(c.health, "unhealthy", "{status:#?}");
    assert!(!c.matches_last_deploy && status.drift, "the verified image runs, unhealthy: {status:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_override_file_is_read_as_compose_reads_it() {
    let app = discovered_app();
    // The base file publishes nothing; the override publishes the port the test reaches it on.
    let base = compose_yaml("    stop_grace_period: 1s\n", &format!("name: {}\n", app.project))
        .replace("    ports: [\"127.0.0.1::80\"]\n", "");
    std::fs::write(app.work.join("docker-compose.yml"), base).unwrap();
    std::fs::write(app.work.join("docker-compose.override.yml"), "services:\n  web:\n    ports: [\"127.0.0.1::80\"]\n")
        .unwrap();
    app.push("v1", Behaviour::Serve);
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.compose_files, ["docker-compose.yml", "docker-compose.override.yml"]);
    let pulled = &d.step(StepName::GitPull).unwrap().detail;
    assert!(pulled.contains("docker-compose.override.yml") && pulled.contains(&app.project), "{pulled}");
    assert_eq!(app.fetch().as_deref(), Some("v1"), "the override's port is published");

    // A release that drops the override's port is deployed without it.
    git(&app.work, &["rm", "--quiet", "docker-compose.override.yml"]);
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&acc.deploy_id).await.phase, Phase::Succeeded);
    assert_eq!(app.fetch(), None, "no port is published any more");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_repository_with_only_compose_yaml_deploys() {
    let app = discovered_app();
    git(&app.work, &["mv", "docker-compose.yml", "compose.yaml"]);
    app.push("v1", Behaviour::Serve);
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.compose_files, ["compose.yaml"]);
    assert_eq!(app.fetch().as_deref(), Some("v1"));
    let before = app.web_containers();
    let said = plain_compose_up(&app);
    assert_eq!(app.web_containers(), before, "docker compose up -d after a deploy recreated: {said}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_started_by_hand_under_its_compose_name_is_taken_over_not_started_twice() {
    let app = discovered_app();
    // Started by hand from the checkout, the way it ran before kua-deploy came.
    let out = Command::new("docker").args(["compose", "up", "-d", "--build"]).current_dir(&app.checkout).output();
    assert!(out.unwrap().status.success());
    assert_eq!(app.web_containers().len(), 1);

    app.push("v2", Behaviour::Serve);
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.project.as_ref().map(|p| p.as_str()), Some(app.project.as_str()), "the project of `name:`");
    assert_eq!(app.web_containers().len(), 1, "one copy of the app, not two");
    assert_eq!(app.fetch().as_deref(), Some("v2"));
    assert!(!d.previous_images.is_empty(), "what ran by hand is what a rollback would bring back");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_that_fails_after_its_build_puts_the_checkout_and_the_tag_back() {
    let app = TestApp::new(AppOptions {
        explicit_project: false,
        migrations: Some(serde_json::json!({"paths": ["migrations/"], "policy": "run", "service": "web",
                                "command": ["/bin/busybox", "grep", "-q", "v1", "/www/index.html"]})),
        ..AppOptions::default()
    });
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    let v1 = git(&app.checkout, &["rev-parse", "HEAD"]);

    // v2 builds, then its migration fails: nothing was recreated.
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(git(&app.checkout, &["rev-parse", "HEAD"]), v1, "the checkout is back at the commit that runs");
    let before = app.web_containers();
    let said = plain_compose_up(&app);
    assert_eq!(app.web_containers(), before, "docker compose up -d started the unreleased build: {said}");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn compose_project_name_in_dotenv_names_the_project() {
    let app = discovered_app();
    // No `name:` in the file: the project comes from `.env`, as it would for `docker compose`.
    write_compose(&app, "docker-compose.yml", "");
    let text = std::fs::read_to_string(app.work.join("docker-compose.yml")).unwrap();
    std::fs::write(app.work.join("docker-compose.yml"), text.replace(&format!("name: {}\n", app.project), "")).unwrap();
    std::fs::write(app.work.join(".env"), format!("COMPOSE_PROJECT_NAME={}\n", app.project)).unwrap();
    app.push("v1", Behaviour::Serve);
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.project.as_ref().map(|p| p.as_str()), Some(app.project.as_str()));
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}
