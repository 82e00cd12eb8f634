//! kua-deploy deploying itself: the real binary runs in a container of the self app (with the
//! docker CLI, Compose and git copied in), and a release of a new version must end, through the
//! handoff to a transient container and the restart, in `succeeded` — or, for an image that
//! cannot start, back on the previous image with the deploy `rolled_back`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::cli::client::Client;
use kua_deploy::model::{AppName, Deploy, DeployId, Phase};

use crate::support::{git, preflight, sh, uuid_hex, BUSYBOX, TEST_LABEL, TOKEN};

/// Copies `bin` and the shared libraries `ldd` names into `root`, at their own paths.
fn copy_with_libs(bin: &Path, root: &Path, dest: &str) {
    let target = root.join(dest.trim_start_matches('/'));
    std::fs::create_dir_all(target.parent().unwrap()).unwrap();
    std::fs::copy(bin, &target).unwrap_or_else(|e| panic!("copy {}: {e}", bin.display()));
    // `ldd` fails on a static binary: then there is nothing more to copy.
    let ldd = std::process::Command::new("ldd").arg(bin).output().expect("ldd");
    for line in String::from_utf8_lossy(&ldd.stdout).lines().filter(|_| ldd.status.success()) {
        let path = line.split("=>").last().unwrap().split_whitespace().next().unwrap_or("");
        if path.starts_with('/') {
            let to = root.join(path.trim_start_matches('/'));
            std::fs::create_dir_all(to.parent().unwrap()).unwrap();
            std::fs::copy(path, to).unwrap();
        }
    }
}

/// The base every version of the self app builds on: kua-deploy, docker, Compose, git, busybox.
fn build_base_image(tag: &str) {
    let ctx = tempfile::tempdir().unwrap();
    let root = ctx.path().join("root");
    copy_with_libs(Path::new(env!("CARGO_BIN_EXE_kua-deploy")), &root, "/usr/local/bin/kua-deploy");
    let git_bin = PathBuf::from("/usr/bin/git");
    copy_with_libs(&git_bin, &root, "/usr/bin/git");
    // git runs `git-upload-pack` to fetch from a path; the same binary answers to both names.
    copy_with_libs(&git_bin, &root, "/usr/lib/git-core/git-upload-pack");
    copy_with_libs(Path::new("/usr/local/bin/docker"), &root, "/usr/local/bin/docker");
    let compose = sh(
        Path::new("/"),
        &[
            "docker",
            "info",
            "--format",
            "{{range .ClientInfo.Plugins}}{{if eq .Name \"compose\"}}{{.Path}}{{end}}{{end}}",
        ],
    );
    copy_with_libs(Path::new(&compose), &root, "/root/.docker/cli-plugins/docker-compose");
    copy_with_libs(Path::new(BUSYBOX), &root, "/bin/busybox");
    // git starts `git-upload-pack` through /bin/sh; busybox answers to that name too.
    copy_with_libs(Path::new(BUSYBOX), &root, "/bin/sh");
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        format!("FROM scratch\nLABEL {TEST_LABEL}=1\nCOPY root/ /\nENV HOME=/root PATH=/usr/local/bin:/usr/bin:/bin\n"),
    )
    .unwrap();
    sh(ctx.path(), &["docker", "build", "-q", "-t", tag, "."]);
}

struct SelfApp {
    dir: tempfile::TempDir,
    project: String,
    base: String,
    work: PathBuf,
    checkout: PathBuf,
    port: u16,
}

impl SelfApp {
    fn new() -> SelfApp {
        preflight();
        let dir = tempfile::tempdir().unwrap();
        let project = format!("kself{}", &uuid_hex()[..8]);
        let base = format!("kua-test-selfbase:{project}");
        build_base_image(&base);
        let (remote, work, checkout, state) = (
            dir.path().join("remote.git"),
            dir.path().join("work"),
            dir.path().join("checkout"),
            dir.path().join("state"),
        );
        std::fs::create_dir_all(&state).unwrap();
        git(dir.path(), &["init", "--quiet", "--bare", remote.to_str().unwrap()]);
        git(dir.path(), &["init", "--quiet", work.to_str().unwrap()]);
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mount = |p: &Path| format!("      - {0}:{0}\n", p.display());
        std::fs::write(
            work.join("docker-compose.yml"),
            format!(
                "services:\n  kua:\n    build: .\n    ports: [\"127.0.0.1:{port}:8790\"]\n    stop_grace_period: 2s\n    \
                 labels: [\"{TEST_LABEL}=1\"]\n    environment:\n      KUA_ADMIN_TOKEN: {TOKEN}\n      \
                 KUA_CONFIG: {state}/deploy-registry.json\n      KUA_STATE_DIR: {state}/kua-state\n      KUA_LISTEN: 0.0.0.0:8790\n    \
                 volumes:\n      - /var/run/docker.sock:/var/run/docker.sock\n{}{}{}\
                 networks:\n  default:\n    labels: [\"{TEST_LABEL}=1\"]\n",
                mount(&checkout),
                mount(&remote),
                mount(&state),
                state = state.display(),
            ),
        )
        .unwrap();
        let registry = serde_json::json!({"self": "kua", "apps": {"kua": {
            "repo": checkout, "project": project, "services": ["kua"], "verify": {"timeout_s": 30, "stable_s": 2}
        }}});
        std::fs::write(state.join("deploy-registry.json"), registry.to_string()).unwrap();
        let app = SelfApp { dir, project, base, work, checkout, port };
        app.commit("v1", true);
        git(&app.work, &["remote", "add", "origin", remote.to_str().unwrap()]);
        git(&app.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        git(
            app.dir.path(),
            &["clone", "--quiet", "--branch", "main", remote.to_str().unwrap(), app.checkout.to_str().unwrap()],
        );
        // Installed the way a user would: Compose builds and starts the first version.
        sh(&app.checkout, &["docker", "compose", "-p", &app.project, "up", "-d", "--build", "--quiet-pull"]);
        app
    }

    /// Commits a version; `starts` false gives an image whose kua-deploy cannot start.
    fn commit(&self, version: &str, starts: bool) -> String {
        let cmd = if starts { r#"["serve"]"# } else { r#"["no-such-command"]"# };
        std::fs::write(
            self.work.join("Dockerfile"),
            format!(
                "FROM {}\nCOPY VERSION /VERSION\n\
                 HEALTHCHECK --interval=1s --timeout=2s CMD [\"/bin/busybox\",\"wget\",\"-q\",\"-O\",\"/dev/null\",\"http://127.0.0.1:8790/healthz\"]\n\
                 ENTRYPOINT [\"/usr/local/bin/kua-deploy\"]\nCMD {cmd}\n",
                self.base
            ),
        )
        .unwrap();
        std::fs::write(self.work.join("VERSION"), format!("{version}\n")).unwrap();
        git(&self.work, &["add", "-A"]);
        git(&self.work, &["commit", "--quiet", "-m", version]);
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn push(&self, version: &str, starts: bool) -> String {
        let sha = self.commit(version, starts);
        git(&self.work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"]);
        sha
    }

    fn client(&self) -> Client {
        Client::new(format!("http://127.0.0.1:{}", self.port), TOKEN)
    }

    /// The image the self app's Compose container runs, if one runs.
    fn running_image(&self) -> Option<String> {
        let id = sh(
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
        (!id.is_empty())
            .then(|| sh(Path::new("/"), &["docker", "inspect", "-f", "{{.Image}}", id.lines().next().unwrap()]))
    }

    /// Polls the deploy through the restart (refused connections and 5xx are expected) until it ends.
    async fn wait_end(&self, id: &DeployId) -> Deploy {
        let client = self.client();
        let start = Instant::now();
        loop {
            match client.deploy_status(id).await {
                Ok(d) if d.phase.is_terminal() => return d,
                Ok(_) => {}
                Err(e) => assert!(e.is_retryable(), "{e}"),
            }
            assert!(start.elapsed() < Duration::from_secs(180), "deploy {id} did not end; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn wait_healthy(&self) {
        let start = Instant::now();
        while self.client().health().await.is_err() {
            assert!(start.elapsed() < Duration::from_secs(60), "kua-deploy did not come up; logs:\n{}", self.logs());
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn logs(&self) -> String {
        let out = std::process::Command::new("docker")
            .args(["compose", "-p", &self.project, "logs", "--tail", "60"])
            .current_dir(&self.checkout)
            .output();
        out.map(|o| format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
            .unwrap_or_default()
    }
}

impl Drop for SelfApp {
    fn drop(&mut self) {
        let label = format!("label=com.docker.compose.project={}", self.project);
        for (list, remove) in [(["ps", "-aq"], "rm"), (["images", "-q"], "rmi")] {
            let ids = sh(Path::new("/"), &["docker", list[0], list[1], "--filter", &label]);
            if !ids.is_empty() {
                let mut argv = vec!["docker", remove, "-f"];
                argv.extend(ids.split_whitespace());
                let _ = std::process::Command::new(argv[0]).args(&argv[1..]).output();
            }
        }
        let _ =
            std::process::Command::new("docker").args(["network", "rm", &format!("{}_default", self.project)]).output();
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &self.base]).output();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn kua_deploy_releases_itself_through_the_handoff_and_reports_the_outcome_after_the_restart() {
    let app = SelfApp::new();
    app.wait_healthy().await;
    let kua = AppName::parse("kua").unwrap();
    let before = app.running_image().expect("the first version runs");

    // A new version that starts, released with `release-app` as a user would: it rides through the
    // restart and exits 0; the new process reported the end, and runs the built image.
    let v2 = app.push("v2", true);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_release-app"))
        .args(["kua", "--url", &format!("http://127.0.0.1:{}", app.port), "--timeout", "3m"])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{text}\n{}", app.logs());
    let acc = app.client().progress(&kua).await.unwrap();
    let d = app.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}\n{}", app.logs());
    assert_eq!(d.commit.as_ref().map(|c| c.as_str()), Some(v2.as_str()));
    let built = d.images.values().next().unwrap().as_str().to_owned();
    assert_ne!(built, before);
    assert_eq!(app.running_image().as_deref(), Some(built.as_str()));
    let verify = d.verify.as_ref().expect("verify object");
    assert!(verify.ok);
    assert_eq!(verify.services[0].running_image.as_deref(), Some(built.as_str()));
    let transient = sh(Path::new("/"), &["docker", "ps", "-aq", "--filter", "name=kua-self-recreate-"]);
    assert!(transient.is_empty(), "the transient container is removed once its report is read");
    let log = app.client().logs(&acc.deploy_id, 0).await.unwrap();
    assert!(log.lines.iter().any(|l| l.line.contains("[transient] verified")), "{:?}", log.lines);

    // A new version that cannot start: the transient container brings v2 back, and the process
    // that comes back says so.
    app.push("v3-broken", false);
    let acc = app.client().deploy(&kua, &DeployRequest::default()).await.unwrap();
    let d = app.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}\n{}", app.logs());
    app.wait_healthy().await;
    assert_eq!(app.running_image().as_deref(), Some(built.as_str()));

    // A second start changes nothing: the deploy keeps its end.
    sh(&app.checkout, &["docker", "compose", "-p", &app.project, "restart"]);
    app.wait_healthy().await;
    assert_eq!(app.client().deploy_status(&acc.deploy_id).await.unwrap().phase, Phase::RolledBack);
}
