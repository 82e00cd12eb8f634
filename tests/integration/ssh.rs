//! Apps on a host reached over OpenSSH: a real `sshd` on loopback, host keys always checked, one
//! connection per host shared by every command, and a remote command cancelled or timed out
//! leaves no process behind on the host.

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{DeployId, Phase, StepName, StepStatus};
use serde_json::json;

use crate::support::{AppOptions, Behaviour, Server, SshServer, TestApp};

fn on_ssh_host(app: &TestApp, sshd: &SshServer, known_hosts: &std::path::Path) {
    app.edit_registry(|reg| {
        reg["hosts"] = json!({"loop": {
            "ssh": format!("root@127.0.0.1:{}", sshd.port),
            "identity_file": sshd.identity,
            "known_hosts_file": known_hosts,
        }});
        reg["apps"]["hello"]["host"] = json!("loop");
    });
}

/// A real sshd, the test app on it, the server, and the app's first deploy over it, succeeded.
async fn deployed_over_ssh() -> (SshServer, TestApp, Server) {
    let sshd = SshServer::start();
    let app = TestApp::new(AppOptions::default());
    on_ssh_host(&app, &sshd, &sshd.known_hosts);
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&first.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded, "{d1:#?}\nsshd log:\n{}", sshd.log());
    (sshd, app, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn an_app_on_an_ssh_host_is_deployed_and_verified_over_openssh() {
    let (sshd, app, server) = deployed_over_ssh().await;
    assert_eq!(app.fetch().as_deref(), Some("v1"));

    app.push("v2", Behaviour::Serve);
    let second = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d2 = server.wait_end(&second.deploy_id).await;
    assert_eq!(d2.phase, Phase::Succeeded, "{d2:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v2"));
    assert_eq!(app.web_containers()[0].1, d2.images.values().next().unwrap().as_str());
    assert!(sshd.log().contains("Accepted publickey"), "the commands went through sshd");

    let rs = server.client.runtime_status(&app.name).await.unwrap();
    assert_eq!(rs.host, "loop");
    assert!(!rs.drift, "{rs:#?}");
    assert_eq!(rs.git_head, d2.commit.map(|c| c.to_string()));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_whose_key_is_not_the_known_one_is_refused_and_nothing_changes() {
    let sshd = SshServer::start();
    let app = TestApp::new(AppOptions::default());
    let wrong = app.dir.path().join("wrong_known_hosts");
    let other = tempfile::tempdir().unwrap();
    let key = other.path().join("k");
    crate::support::sh(other.path(), &["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", key.to_str().unwrap()]);
    let other_pub = std::fs::read_to_string(key.with_extension("pub")).unwrap();
    std::fs::write(&wrong, format!("[127.0.0.1]:{} {other_pub}", sshd.port)).unwrap();
    on_ssh_host(&app, &sshd, &wrong);
    let server = app.start();

    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed);
    assert_eq!(d.step(StepName::GitPull).unwrap().status, StepStatus::Failed);
    let error = d.error.unwrap_or_default();
    assert!(error.contains("cannot reach host loop over ssh"), "{error}");
    assert!(error.to_lowercase().contains("host key"), "{error}");
    assert!(app.web_containers().is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn every_command_of_two_deploys_and_a_runtime_status_shares_one_connection_to_the_host() {
    let (sshd, app, server) = deployed_over_ssh().await;
    app.push("v2", Behaviour::Serve);
    let second = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d2 = server.wait_end(&second.deploy_id).await;
    assert_eq!(d2.phase, Phase::Succeeded, "{d2:#?}");
    let rs = server.client.runtime_status(&app.name).await.unwrap();
    assert!(!rs.drift, "{rs:#?}");
    assert_eq!(sshd.connections(), 1, "sshd log:\n{}", sshd.log());

    // At stop the master ends and its private directory goes with it.
    let sockets = app.state.join("ssh");
    assert!(sockets.exists(), "no socket directory at {}", sockets.display());
    let mut server = server;
    server.terminate();
    assert!(!sockets.exists(), "{} outlived the server", sockets.display());
    let masters = std::process::Command::new("pgrep").args(["-f", &sockets.to_string_lossy()]).output().unwrap();
    assert!(masters.stdout.is_empty(), "a master outlived the server: {}", String::from_utf8_lossy(&masters.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_lost_mid_deploy_fails_the_deploy_naming_it_and_the_next_deploy_reconnects() {
    let mut sshd = SshServer::start();
    let app = TestApp::new(AppOptions::default());
    on_ssh_host(&app, &sshd, &sshd.known_hosts);
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d1 = server.wait_end(&first.deploy_id).await;
    assert_eq!(d1.phase, Phase::Succeeded, "{d1:#?}");

    // A number of its own, so no cached layer of another run skips the slow step.
    let secs = 600 + std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 10_000;
    app.push("v2", Behaviour::SlowBuild(secs as u32));
    let lost = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server
        .wait_for(&lost.deploy_id, std::time::Duration::from_secs(60), |d| {
            d.step(StepName::Build).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    // Inside the slow RUN by now.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    sshd.kill();
    let started = std::time::Instant::now();
    let d = server.wait_end(&lost.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "took {:?}", started.elapsed());
    let error = d.error.clone().unwrap_or_default();
    assert!(error.contains("cannot reach host loop"), "{error}");
    assert!(d.steps.iter().all(|s| s.status != StepStatus::Running), "nothing left running: {d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v1"), "the app keeps what it ran");

    sshd.listen();
    app.push("v3", Behaviour::Serve);
    let next = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d3 = server.wait_end(&next.deploy_id).await;
    assert_eq!(d3.phase, Phase::Succeeded, "{d3:#?}\nsshd log:\n{}", sshd.log());
    assert_eq!(app.fetch().as_deref(), Some("v3"));
    let after_loss = sshd.log().split("Server listening").nth(2).unwrap_or_default().to_owned();
    assert_eq!(
        after_loss.matches("Accepted publickey").count(),
        1,
        "one new connection for the whole deploy after the loss:\n{}",
        sshd.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_host_back_with_another_key_after_a_crash_is_refused() {
    let mut sshd = SshServer::start();
    let app = TestApp::new(AppOptions::default());
    on_ssh_host(&app, &sshd, &sshd.known_hosts);
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);

    sshd.kill();
    sshd.new_host_key();
    sshd.listen();
    app.push("v2", Behaviour::Serve);
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    let error = d.error.unwrap_or_default();
    assert!(error.contains("cannot reach host loop over ssh"), "{error}");
    assert!(error.to_lowercase().contains("host key"), "{error}");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

/// A `sleep` no other test runs: `sleep <n>` with `n` from a fresh uuid.
fn unique_sleep_secs() -> u32 {
    40_000 + u32::from_str_radix(&crate::support::uuid_hex()[..4], 16).unwrap()
}

/// The pids of processes whose whole command line is `sleep <secs>`.
fn sleeping(secs: u32) -> Vec<String> {
    let out = std::process::Command::new("pgrep")
        .args(["-f", &format!("^sleep {secs}$")])
        .output()
        .expect("run pgrep (apt-get install procps)");
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect()
}

/// Polls until no `sleep <secs>` is left, at most `limit`; the pids still there if some are.
async fn gone_within(secs: u32, limit: std::time::Duration) -> Vec<String> {
    let started = std::time::Instant::now();
    loop {
        let left = sleeping(secs);
        if left.is_empty() || started.elapsed() > limit {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A deploy started on the ssh host, of an app whose secrets command runs `sleep <secs>` as its
/// own child (not `exec`: killing the command's pid alone would leave the sleep running), within
/// `timeout_s`. Fields drop in order: the server before the app it deploys.
struct SlowSecrets {
    server: Server,
    deploy: DeployId,
    secs: u32,
    _app: TestApp,
    sshd: SshServer,
}

async fn deploy_with_slow_secrets(timeout_s: u64) -> SlowSecrets {
    let sshd = SshServer::start();
    let app = TestApp::new(AppOptions::default());
    on_ssh_host(&app, &sshd, &sshd.known_hosts);
    let secs = unique_sleep_secs();
    let vault = app.dir.path().join("slow-vault");
    std::fs::write(&vault, format!("#!/bin/sh\nsleep {secs}\necho DB_PASSWORD=never-printed\n")).unwrap();
    std::fs::set_permissions(&vault, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    app.edit_registry(|reg| {
        reg["apps"]["hello"]["secrets"] = json!({"command": [vault, "{app}"], "timeout_s": timeout_s});
    });
    let server = app.start();
    let deploy = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap().deploy_id;
    SlowSecrets { server, deploy, secs, _app: app, sshd }
}

/// Kills what a failed assertion left behind, so a failing run does not leave sleeps around.
fn kill_left(pids: &[String]) {
    for pid in pids {
        let _ = std::process::Command::new("kill").args(["-KILL", pid]).status();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cancelled_remote_command_leaves_no_process_on_the_host() {
    let SlowSecrets { server, deploy, secs, sshd, .. } = &deploy_with_slow_secrets(600).await;
    server
        .wait_for(deploy, std::time::Duration::from_secs(60), |d| {
            d.step(StepName::Secrets).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    let started = std::time::Instant::now();
    while sleeping(*secs).is_empty() {
        assert!(started.elapsed() < std::time::Duration::from_secs(20), "the remote sleep {secs} never started");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    server.client.cancel(deploy).await.unwrap();
    let d = server.wait_end(deploy).await;
    let left = gone_within(*secs, std::time::Duration::from_secs(5)).await;
    kill_left(&left);
    assert_eq!(d.phase, Phase::Cancelled, "{d:#?}");
    assert!(left.is_empty(), "the remote `sleep {secs}` still runs after the cancel: pids {left:?}");
    assert!(d.steps.iter().all(|s| s.status != StepStatus::Running), "{d:#?}");
    assert_eq!(sshd.connections(), 1, "the kill went through the host's master:\n{}", sshd.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_remote_command_past_its_timeout_leaves_no_process_on_the_host() {
    let SlowSecrets { server, deploy, secs, .. } = &deploy_with_slow_secrets(2).await;
    let d = server.wait_end(deploy).await;
    let left = gone_within(*secs, std::time::Duration::from_secs(5)).await;
    kill_left(&left);
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    let step = d.step(StepName::Secrets).unwrap();
    assert_eq!(step.status, StepStatus::Failed);
    assert!(step.detail.contains("did not finish within 2s"), "{}", step.detail);
    assert!(left.is_empty(), "the remote `sleep {secs}` still runs after the timeout: pids {left:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_master_killed_between_deploys_is_replaced_by_one_new_connection() {
    let (sshd, app, server) = deployed_over_ssh().await;
    assert_eq!(sshd.connections(), 1, "sshd log:\n{}", sshd.log());

    // Killed outright (as the OOM killer would), the master leaves its socket file behind.
    let sockets = app.state.join("ssh");
    let killed =
        std::process::Command::new("pkill").args(["-KILL", "-f", &sockets.to_string_lossy()]).status().unwrap();
    assert!(killed.success(), "no master process to kill");
    app.push("v2", Behaviour::Serve);
    let second = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d2 = server.wait_end(&second.deploy_id).await;
    assert_eq!(d2.phase, Phase::Succeeded, "{d2:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v2"));
    // One new master for all of the second deploy's commands, not a connection each.
    assert_eq!(sshd.connections(), 2, "sshd log:\n{}", sshd.log());
    let log = server.client.logs(&second.deploy_id, 0).await.unwrap();
    let text = format!("{log:?}");
    assert!(!text.contains("Control socket connect"), "the dead socket showed in the log: {text}");
}
