//! Secrets at deploy time: a real command stands in for the vault; the app's Compose file takes
//! `${DB_PASSWORD}` in `environment:` and as a build arg. The value must reach the container and
//! the build, and be nowhere else: not in the state dir (database, WAL, every file), the checkout,
//! the server's output, any API answer about the deploy or its log, or the command line of any
//! command kua-deploy ran (recorded by wrappers of `docker`, `git` and `ssh` on its PATH). Also
//! over an SSH host, where the vault command runs and the values travel on stdin.

use std::path::{Path, PathBuf};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{Phase, StepName, StepStatus};
use serde_json::json;

use crate::support::{git, sh, uuid_hex, AppOptions, Server, SshServer, TestApp};

/// The app, its vault stand-in printing `DB_PASSWORD=<value>`, and its Compose file and
/// Dockerfile using the variable in `environment:` and as a build arg.
fn app_with_vault(value: &str, vault_body: Option<&str>) -> (TestApp, PathBuf) {
    let app = TestApp::new(AppOptions::default());
    let vault = app.dir.path().join("kua-vault");
    let body = vault_body.map(str::to_owned).unwrap_or_else(|| format!("printf 'DB_PASSWORD=%s\\n' '{value}'"));
    std::fs::write(
        &vault,
        format!("#!/bin/sh\n# kua-vault stand-in: export APP\n[ \"$1\" = export ] || exit 2\n{body}\n"),
    )
    .unwrap();
    std::fs::set_permissions(&vault, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let compose = std::fs::read_to_string(app.work.join("docker-compose.yml")).unwrap().replace(
        "    build: .\n",
        "    build:\n      context: .\n      args:\n        DB_PASSWORD: ${DB_PASSWORD}\n    \
         environment:\n      DB_PASSWORD: ${DB_PASSWORD}\n",
    );
    std::fs::write(app.work.join("docker-compose.yml"), compose).unwrap();
    // The build proves it had the value by serving its hash, never the value itself.
    let dockerfile = std::fs::read_to_string(app.work.join("Dockerfile")).unwrap().replace(
        "COPY index.html /www/index.html\n",
        "COPY index.html /www/index.html\nARG DB_PASSWORD\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"printf %s \\\"$DB_PASSWORD\\\" | /bin/busybox sha256sum | /bin/busybox cut -c1-64 > /www/pw.sha\"]\n",
    );
    std::fs::write(app.work.join("Dockerfile"), dockerfile).unwrap();
    git(&app.work, &["commit", "--quiet", "-am", "take DB_PASSWORD from the vault"]);
    git(&app.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
    app.edit_registry(|reg| {
        reg["apps"]["hello"]["secrets"] = json!({"command": [vault, "export", "{app}"], "timeout_s": 10});
    });
    (app, vault)
}

/// A directory of `docker`, `git` and `ssh` wrappers that append their argv to `argv.log`.
fn argv_recorders(dir: &Path) -> (PathBuf, PathBuf) {
    let bin = dir.join("recorders");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.join("argv.log");
    for program in ["docker", "git", "ssh"] {
        let real = sh(Path::new("/"), &["sh", "-c", &format!("command -v {program}")]);
        let script = format!("#!/bin/sh\nprintf '%s\\n' \"$0 $*\" >> '{}'\nexec '{real}' \"$@\"\n", log.display());
        std::fs::write(bin.join(program), script).unwrap();
        std::fs::set_permissions(bin.join(program), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    (bin, log)
}

/// The server with the recorders first on its PATH.
fn start_recorded(app: &TestApp) -> (Server, PathBuf) {
    let (bin, log) = argv_recorders(app.dir.path());
    let mut cmd = Server::command(&app.registry, &app.state);
    cmd.env("PATH", format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default()));
    (Server::spawn(cmd), log)
}

/// Every file under `dir` whose bytes hold `needle`.
fn files_holding(dir: &Path, needle: &str) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() && !path.is_symlink() {
            found.extend(files_holding(&path, needle));
        } else if std::fs::read(&path).is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle.as_bytes())) {
            found.push(path);
        }
    }
    found
}

fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

/// Deploys, then checks the value reached the container and the build, and nothing else.
async fn deploy_and_search(app: &TestApp, server: &Server, argv_log: &Path, value: &str) {
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}\n{}", server.log());
    let step = d.step(StepName::Secrets).expect("a secrets step");
    assert_eq!((step.status, step.detail.as_str()), (StepStatus::Succeeded, "provided DB_PASSWORD"));
    if let (Some(a), Some(b)) = (step.started_at.as_deref(), step.finished_at.as_deref()) {
        eprintln!("secrets step: {a} → {b}");
    }
    // It reached the container's environment and the build.
    let (container, _) = app.web_containers().into_iter().next().expect("web runs");
    assert_eq!(
        sh(Path::new("/"), &["docker", "exec", &container, "/bin/busybox", "sh", "-c", "echo \"$DB_PASSWORD\""]),
        value
    );
    let served_hash = sh(Path::new("/"), &["docker", "exec", &container, "/bin/busybox", "cat", "/www/pw.sha"]);
    assert_eq!(served_hash, sha256_hex(value), "the build arg had the value");

    // And nowhere else.
    assert_eq!(files_holding(&app.state, value), Vec::<PathBuf>::new(), "in the state dir");
    assert_eq!(files_holding(&app.checkout, value), Vec::<PathBuf>::new(), "in the checkout");
    assert!(!server.log().contains(value), "in the server's output");
    let recorded = std::fs::read_to_string(argv_log).unwrap();
    assert!(recorded.contains("compose"), "the recorders saw the commands: {recorded}");
    assert!(!recorded.contains(value), "in a command line");
    let http = server.http();
    for path in [
        format!("/api/v1/deploys/{}", d.deploy_id),
        format!("/api/v1/deploys/{}/logs?limit=10000", d.deploy_id),
        format!("/api/v1/apps/{}/progress", app.name),
        format!("/api/v1/apps/{}/deploys", app.name),
        format!("/api/v1/apps/{}/runtime-status", app.name),
    ] {
        let body = http.get(format!("{}{path}", server.url)).header("authorization", server.auth()).send().await;
        let body = body.unwrap().text().await.unwrap();
        assert!(!body.contains(value), "in {path}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vaults_value_reaches_the_container_and_the_build_and_is_nowhere_else() {
    let value = format!("pw-{}", uuid_hex());
    let (app, _vault) = app_with_vault(&value, None);
    let (server, argv_log) = start_recorded(&app);
    deploy_and_search(&app, &server, &argv_log, &value).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vault_that_refuses_fails_the_deploy_before_build_and_the_app_keeps_running() {
    let value = format!("pw-{}", uuid_hex());
    let (app, vault) = app_with_vault(&value, None);
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    let running = app.web_containers();

    std::fs::write(&vault, "#!/bin/sh\necho 'permission denied: the vault is sealed' >&2\nexit 1\n").unwrap();
    app.push("v2", crate::support::Behaviour::Serve);
    let second = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&second.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    let error = d.error.clone().unwrap_or_default();
    assert!(error.contains("exited with status 1: permission denied: the vault is sealed"), "{error}");
    assert_eq!(d.step(StepName::Build).unwrap().status, StepStatus::Skipped, "the build never ran");
    assert_eq!(app.web_containers(), running, "the app keeps running what it ran");
    assert_eq!(app.fetch().as_deref(), Some("v1"));
}

#[tokio::test(flavor = "multi_thread")]
async fn over_ssh_the_vault_runs_on_the_host_and_its_value_travels_on_stdin_only() {
    let sshd = SshServer::start();
    let value = format!("pw-{}", uuid_hex());
    let (app, _vault) = app_with_vault(&value, None);
    app.edit_registry(|reg| {
        reg["hosts"] = json!({"loop": {
            "ssh": format!("root@127.0.0.1:{}", sshd.port),
            "identity_file": sshd.identity,
            "known_hosts_file": sshd.known_hosts,
        }});
        reg["apps"]["hello"]["host"] = json!("loop");
    });
    let (server, argv_log) = start_recorded(&app);
    deploy_and_search(&app, &server, &argv_log, &value).await;
    let recorded = std::fs::read_to_string(&argv_log).unwrap();
    assert!(recorded.contains(". /dev/stdin && exec docker compose"), "{recorded}");
    assert!(sshd.log().contains("Accepted publickey"));
}
