//! kua-deploy as the fleet runs it: the shipped `Dockerfile` and `docker-compose.yml`, built from a
//! copy of this repository on base images made by `scripts/base-images.sh`, with only a test
//! override (a published port, HTTPS with a certificate the test's CA signed, a short healthcheck
//! interval, labels) and a `.env` for the host's paths. It starts healthy (its healthcheck is
//! `kua-deploy health`, over HTTPS), as a non-root user, on the fleet's two networks, with the
//! registry read-only, and releases itself with `release-app` run in its checkout, which finds the
//! server `bruno` that the repository's `kua.json` names in a `servers.json`: a commit that changes
//! its code is built from source and ends `succeeded`, one whose image cannot start comes back
//! `rolled_back`, a second start changes nothing, and a transient container that never replaces it
//! ends the deploy `failed` at the handoff ceiling — never `running`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::cli::client::Client;
use kua_deploy::cli::tls::Trust;
use kua_deploy::model::{AppName, Deploy, DeployId, Phase};

use crate::support::{preflight, sh, uuid_hex, Pki, TEST_LABEL, TOKEN};

/// The uid:gid the image runs kua-deploy as.
const KUA_USER: &str = "10001:10001";
/// What the vault stand-in gives kua-deploy's own service.
const SECRET: &str = "kua-own-secret-5a1b9c";
/// Short, so the ceiling case takes seconds; long enough for a handoff on a busy machine.
const CEILING_S: u64 = 20;

/// git as root on files owned by kua-deploy's user: git would refuse them as "dubious" (and a
/// `-c safe.directory` does not reach the `git-receive-pack` a local push starts), so this git
/// reads a global config that trusts every directory.
fn git(dir: &Path, args: &[&str]) -> String {
    let config = std::env::temp_dir().join("kua-test-safe-directory.gitconfig");
    std::fs::write(&config, "[safe]\n\tdirectory = *\n").unwrap();
    let out = Command::new("git")
        .args(["-c", "user.name=Test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_GLOBAL", &config)
        .output()
        .expect("git is installed");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

struct Shipped {
    _dir: tempfile::TempDir,
    pki: Pki,
    /// The `servers.json` naming `bruno`, its token and its CA.
    servers: PathBuf,
    project: String,
    work: PathBuf,
    checkout: PathBuf,
    port: u16,
    networks: [String; 2],
}

impl Shipped {
    fn new() -> Shipped {
        preflight();
        let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
        sh(repo, &["scripts/base-images.sh"]);
        let dir = tempfile::tempdir().unwrap();
        let apps = dir.path().join("apps");
        let (remote, work, checkout) = (apps.join("kua-deploy.git"), apps.join("work"), apps.join("kua-deploy"));
        let project = format!("kship{}", &uuid_hex()[..8]);
        let networks = [format!("{project}-services"), format!("{project}-proxy")];
        for net in &networks {
            sh(Path::new("/"), &["docker", "network", "create", "--label", &format!("{TEST_LABEL}=1"), net]);
        }
        // This repository as it is (committed or not), without what git ignores.
        let files = sh(repo, &["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]);
        for f in files.split('\0').filter(|f| !f.is_empty() && repo.join(f).is_file()) {
            let to = work.join(f);
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(repo.join(f), to).unwrap();
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        // HTTPS as the shipped file's commented lines say, with the test CA's certificate.
        let pki = Pki::new();
        // The vault client at the mount point the shipped file documents: a stand-in.
        let vault = dir.path().join("kua-vault");
        std::fs::write(
            &vault,
            format!("#!/bin/sh\n[ \"$2\" = kua-deploy ] || exit 2\necho KUA_TEST_SECRET={SECRET}\n"),
        )
        .unwrap();
        std::fs::set_permissions(&vault, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        std::fs::write(
            work.join("docker-compose.override.yml"),
            format!(
                "services:\n  kua-deploy:\n    build:\n      labels: [\"{TEST_LABEL}=1\"]\n    \
                 labels: [\"{TEST_LABEL}=1\"]\n    ports: [\"127.0.0.1:{port}:8790\"]\n    \
                 environment:\n      KUA_TLS_CERT: /app/tls/server.pem\n      KUA_TLS_KEY: /app/tls/server.key\n      \
                 KUA_TEST_SECRET: ${{KUA_TEST_SECRET}}\n    \
                 volumes: [\"{}:/app/tls:ro\", \"{}:/usr/local/bin/kua-vault:ro\"]\n    \
                 healthcheck:\n      interval: 1s\n      timeout: 5s\n      start_period: 30s\n",
                pki.dir.path().display(),
                vault.display()
            ),
        )
        .unwrap();
        let servers = dir.path().join("servers.json");
        std::fs::write(dir.path().join("bruno.token"), format!("{TOKEN}\n")).unwrap();
        let bruno = serde_json::json!({"url": format!("https://localhost:{port}"), "token_file": "bruno.token",
            "ca_file": pki.ca});
        std::fs::write(&servers, serde_json::json!({"servers": {"bruno": bruno}}).to_string()).unwrap();
        git(dir.path(), &["init", "--quiet", "--bare", remote.to_str().unwrap()]);
        git(&work, &["init", "--quiet"]);
        git(&work, &["add", "-A"]);
        git(&work, &["commit", "--quiet", "-m", "v1"]);
        git(&work, &["remote", "add", "origin", remote.to_str().unwrap()]);
        git(&work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        git(
            dir.path(),
            &["clone", "--quiet", "--branch", "main", remote.to_str().unwrap(), checkout.to_str().unwrap()],
        );
        // What an operator writes next to the compose file (all ignored by git).
        let socket_gid = sh(Path::new("/"), &["stat", "-c", "%g", "/var/run/docker.sock"]);
        std::fs::write(
            checkout.join(".env"),
            format!(
                "KUA_APPS_DIR={}\nDOCKER_GID={socket_gid}\nKUA_SERVICES_NETWORK={}\nKUA_PROXY_NETWORK={}\n\
                 KUA_HANDOFF_CEILING_S={CEILING_S}\n",
                apps.display(),
                networks[0],
                networks[1]
            ),
        )
        .unwrap();
        std::fs::write(checkout.join("admin-token"), format!("{TOKEN}\n")).unwrap();
        let registry = serde_json::json!({"self": "kua-deploy", "apps": {"kua-deploy": {
            "repo": checkout, "project": project, "services": ["kua-deploy"],
            "verify": {"timeout_s": 90, "stable_s": 2},
            "secrets": {"command": ["kua-vault", "export", "{app}"]}
        }}});
        std::fs::write(checkout.join("deploy-registry.json"), registry.to_string()).unwrap();
        // kua-deploy runs as its own user: the checkouts are that user's.
        let owned = [apps.to_str().unwrap(), pki.dir.path().to_str().unwrap(), vault.to_str().unwrap()];
        sh(Path::new("/"), &[&["chown", "-R", KUA_USER][..], &owned[..]].concat());
        let app = Shipped { _dir: dir, pki, servers, project, work, checkout, port, networks };
        // Installed as the README says: `docker compose up -d` in the checkout.
        sh(&app.checkout, &["docker", "compose", "-p", &app.project, "up", "-d", "--build", "--quiet-pull"]);
        app
    }

    /// Appends `lines` to `file` (the Dockerfile's last stage, a source file), commits and pushes.
    fn push_change(&self, version: &str, file: &str, lines: &str) -> String {
        let path = self.work.join(file);
        let mut text = std::fs::read_to_string(&path).unwrap();
        text.push_str(lines);
        std::fs::write(&path, text).unwrap();
        git(&self.work, &["commit", "--quiet", "-am", version]);
        git(&self.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn client(&self) -> Client {
        let trust = Trust::Roots { ca_file: Some(self.pki.ca.clone()) };
        Client::with_trust(format!("https://localhost:{}", self.port), TOKEN, &trust).unwrap()
    }

    fn container(&self) -> Option<String> {
        let ids = sh(
            Path::new("/"),
            &[
                "docker",
                "ps",
                "-q",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                "label=com.docker.compose.oneoff=False",
            ],
        );
        ids.lines().next().map(str::to_owned)
    }

    fn inspect(&self, format: &str) -> String {
        let id = self.container().unwrap_or_else(|| panic!("no kua-deploy container runs\n{}", self.logs()));
        sh(Path::new("/"), &["docker", "inspect", "-f", format, &id])
    }

    fn running_image(&self) -> Option<String> {
        self.container().map(|_| self.inspect("{{.Image}}"))
    }

    /// Waits until the engine's healthcheck (`kua-deploy health`) says healthy.
    async fn wait_healthy(&self) {
        let start = Instant::now();
        loop {
            if self.container().is_some() && self.inspect("{{.State.Health.Status}}") == "healthy" {
                return;
            }
            assert!(start.elapsed() < Duration::from_secs(120), "kua-deploy did not become healthy\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Follows the deploy through the restart (refused connections are expected) until it ends.
    async fn wait_end(&self, id: &DeployId) -> Deploy {
        let start = Instant::now();
        loop {
            match self.client().deploy_status(id).await {
                Ok(d) if d.phase.is_terminal() => return d,
                Ok(_) => {}
                Err(e) => assert!(e.is_retryable(), "{e}"),
            }
            assert!(start.elapsed() < Duration::from_secs(240), "deploy {id} did not end\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    fn logs(&self) -> String {
        let out = Command::new("docker")
            .args(["compose", "-p", &self.project, "logs", "--tail", "60"])
            .current_dir(&self.checkout)
            .output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }
}

/// The transient container a self-deploy starts (named after the deploy).
fn transient_name(d: &Deploy) -> String {
    kua_deploy::selfupdate::transient_name(&d.deploy_id)
}

impl Drop for Shipped {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["compose", "-p", &self.project, "down", "--volumes", "--rmi", "all", "--timeout", "2"])
            .current_dir(&self.checkout)
            .output();
        // The images earlier releases built (no longer tagged) carry the override's build label.
        let images = Command::new("docker")
            .args(["images", "-q", "--filter", &format!("label={TEST_LABEL}=1")])
            .args(["--filter", &format!("label=com.docker.compose.project={}", self.project)])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        if !images.is_empty() {
            let _ = Command::new("docker").args(["rmi", "-f"]).args(&images).output();
        }
        for net in &self.networks {
            let _ = Command::new("docker").args(["network", "rm", net]).output();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shipped_image_runs_on_the_fleet_networks_and_releases_itself_through_the_handoff() {
    let app = Shipped::new();
    app.wait_healthy().await;
    // As the fleet runs it: non-root, on both networks, the registry read-only.
    assert_eq!(app.inspect("{{.Config.User}}"), KUA_USER);
    let nets = app.inspect("{{range $k, $v := .NetworkSettings.Networks}}{{$k}} {{end}}");
    for net in &app.networks {
        assert!(nets.split_whitespace().any(|n| n == net), "{net} not in {nets}");
    }
    let registry_rw =
        app.inspect("{{range .Mounts}}{{if eq .Destination \"/app/deploy-registry.json\"}}{{.RW}}{{end}}{{end}}");
    assert_eq!(registry_rw, "false", "the registry is mounted read-only");
    let kua = AppName::parse("kua-deploy").unwrap();
    let v1_image = app.running_image().unwrap();

    // A release that changes kua-deploy's code (built from source in the build step), with
    // `release-app kua-deploy` run in the checkout as a user runs it: kua.json names `bruno`,
    // servers.json says where bruno is, its token and its CA. It rides through the restart.
    app.push_change("v2", "src/lib.rs", "\n// v2\n");
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_release-app"))
        .args(["kua-deploy", "--timeout", "6m"])
        .env("KUA_SERVERS", &app.servers)
        .env_remove("KUA_DEPLOY_URL")
        .env_remove("KUA_ADMIN_TOKEN")
        .current_dir(&app.checkout)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", app.logs());
    eprintln!("self-deploy through the shipped image took {:.1}s", started.elapsed().as_secs_f64());
    let d = app.wait_end(&app.client().progress(&kua).await.unwrap().deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}\n{}", app.logs());
    let v2_image = d.images.values().next().unwrap().to_string();
    assert_ne!(v2_image, v1_image);
    assert_eq!(app.running_image().as_deref(), Some(v2_image.as_str()));
    let verify = d.verify.as_ref().expect("the verify object");
    assert!(verify.ok && verify.services[0].running_image.as_deref() == Some(v2_image.as_str()), "{verify:?}");
    let log = app.client().logs(&d.deploy_id, 0).await.unwrap();
    assert!(log.lines.iter().any(|l| l.line.contains("[transient] verified")), "{:?}", log.lines);
    // Its secrets the same way: fetched by the transient container too, never handed over.
    assert!(log.lines.iter().any(|l| l.line.contains("[transient] fetched the secrets: KUA_TEST_SECRET")));
    assert!(!log.lines.iter().any(|l| l.line.contains(SECRET)));
    let id = app.container().unwrap();
    assert_eq!(sh(Path::new("/"), &["docker", "exec", &id, "sh", "-c", "echo $KUA_TEST_SECRET"]), SECRET);
    app.wait_healthy().await;

    // An image that cannot start: the transient container brings v2 back.
    app.push_change("v3-broken", "Dockerfile", "CMD [\"no-such-command\"]\n");
    let acc = app.client().deploy(&kua, &DeployRequest::default()).await.unwrap();
    let d = app.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}\n{}", app.logs());
    let transient = sh(Path::new("/"), &["docker", "ps", "-aq", "--filter", &format!("name={}", transient_name(&d))]);
    assert!(transient.is_empty(), "the transient container is removed once its verdict is read");
    app.wait_healthy().await;
    assert_eq!(app.running_image().as_deref(), Some(v2_image.as_str()));

    // A second start changes nothing: the same deploys, ended as they were, v2 still runs.
    let before = app.client().history(&kua, 50).await.unwrap();
    sh(&app.checkout, &["docker", "compose", "-p", &app.project, "restart"]);
    app.wait_healthy().await;
    let after = app.client().history(&kua, 50).await.unwrap();
    assert_eq!(format!("{after:?}"), format!("{before:?}"), "a second start rewrote the history");
    assert_eq!(app.client().deploy_status(&acc.deploy_id).await.unwrap().phase, Phase::RolledBack);
    assert_eq!(app.running_image().as_deref(), Some(v2_image.as_str()));

    // A transient container that never replaces kua-deploy (its binary does nothing in the new
    // image): at the ceiling the deploy ends failed, and v2 still runs.
    app.push_change("v4-inert", "Dockerfile", "USER root\nRUN ln -sf /bin/true /usr/local/bin/kua-deploy\nUSER kua\n");
    let acc = app.client().deploy(&kua, &DeployRequest::default()).await.unwrap();
    let d = app.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}\n{}", app.logs());
    let error = d.error.clone().unwrap_or_default();
    assert!(error.contains(&format!("still running {CEILING_S}s after the handoff")), "{error}");
    assert_eq!(app.running_image().as_deref(), Some(v2_image.as_str()));
    let transient = sh(Path::new("/"), &["docker", "ps", "-aq", "--filter", &format!("name={}", transient_name(&d))]);
    assert!(transient.is_empty(), "the transient container is removed at the ceiling");
}
