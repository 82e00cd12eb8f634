//! `kua-deploy demo`: the whole flow in one command. It makes a git remote and a checkout of a
//! tiny busybox web app, a registry naming it, starts the server in-process on a free port, and
//! releases the app through the same client `release-app` uses. Each run pushes a new version, so
//! a second run shows a redeploy. `--down` removes all of it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::net::TcpListener;

use super::client::Client;
use crate::api::types::DeployRequest;
use crate::app::{serve, Settings};
use crate::config::Registry;
use crate::model::{AppName, Phase, StepStatus};

const PROJECT: &str = "kua-demo";
const BUSYBOX: &str = "/bin/busybox";

#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Where the demo keeps its git remote, checkout, registry and state.
    #[arg(long, default_value = "./kua-demo")]
    pub dir: PathBuf,
    /// Remove the demo's containers, images and files instead.
    #[arg(long)]
    pub down: bool,
}

fn run_cmd(dir: &Path, argv: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .output()
        .with_context(|| format!("cannot run {}", argv[0]))?;
    if !out.status.success() {
        bail!("`{}` failed: {}", argv.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<String> {
    let mut argv = vec!["git", "-c", "user.name=kua-deploy demo", "-c", "user.email=demo@kua-deploy.invalid"];
    argv.extend_from_slice(args);
    run_cmd(dir, &argv)
}

/// Says plainly what is missing, and how to get it.
fn preflight() -> anyhow::Result<()> {
    match Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]).output() {
        Err(_) => {
            bail!("the docker CLI is not installed (or not on PATH); the demo deploys to the local Docker engine")
        }
        Ok(o) if !o.status.success() => bail!(
            "no Docker engine answers: {}\nstart it (e.g. `systemctl start docker`) or point DOCKER_HOST at one",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Ok(_) => {}
    }
    let compose = Command::new("docker").args(["compose", "version", "--short"]).output();
    if !compose.is_ok_and(|o| o.status.success()) {
        bail!("Docker Compose v2 (`docker compose`) is missing: run scripts/install-deps.sh");
    }
    if !Path::new(BUSYBOX).exists() {
        bail!("{BUSYBOX} is missing: the demo app is built FROM scratch with busybox (apt-get install busybox-static, or scripts/install-deps.sh)");
    }
    Ok(())
}

/// Creates the remote, pushes a new version of the app, and makes sure the checkout exists.
fn prepare(dir: &Path) -> anyhow::Result<(PathBuf, usize)> {
    let remote = dir.join("remote.git");
    let work = dir.join("work");
    let checkout = dir.join("checkout");
    if !remote.exists() {
        git(dir, &["init", "--quiet", "--bare", "--initial-branch=main", "remote.git"])?;
        git(dir, &["init", "--quiet", "--initial-branch=main", "work"])?;
        git(&work, &["remote", "add", "origin", remote.to_str().context("path is not UTF-8")?])?;
        std::fs::copy(BUSYBOX, work.join("busybox"))?;
        std::fs::write(
            work.join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY index.html /www/index.html\n\
             HEALTHCHECK --interval=1s --timeout=2s CMD [\"/bin/busybox\",\"wget\",\"-q\",\"-O\",\"/dev/null\",\"http://127.0.0.1/\"]\n\
             CMD [\"/bin/busybox\",\"httpd\",\"-f\",\"-p\",\"80\",\"-h\",\"/www\"]\n",
        )?;
        std::fs::write(
            work.join("docker-compose.yml"),
            "services:\n  web:\n    build: .\n    ports: [\"127.0.0.1::80\"]\n    stop_grace_period: 1s\n",
        )?;
    }
    let n = git(&work, &["rev-list", "--count", "--all"]).ok().and_then(|s| s.parse::<usize>().ok()).unwrap_or(0) + 1;
    std::fs::write(work.join("index.html"), format!("<h1>hello from kua-deploy</h1><p>release #{n}</p>\n"))?;
    git(&work, &["add", "-A"])?;
    git(&work, &["commit", "--quiet", "-m", &format!("release #{n}")])?;
    git(&work, &["push", "--quiet", "origin", "HEAD:refs/heads/main"])?;
    if !checkout.exists() {
        git(dir, &["clone", "--quiet", "--branch", "main", "remote.git", "checkout"])?;
    }
    let registry = dir.join("deploy-registry.json");
    let entry = serde_json::json!({"apps": {"hello": {
        "repo": checkout, "project": PROJECT, "services": ["web"], "verify": {"timeout_s": 60, "stable_s": 2}
    }}});
    std::fs::write(&registry, serde_json::to_string_pretty(&entry)? + "\n")?;
    Ok((registry, n))
}

fn down(dir: &Path) -> anyhow::Result<i32> {
    let checkout = dir.join("checkout");
    if checkout.exists() {
        let _ = run_cmd(&checkout, &["docker", "compose", "-p", PROJECT, "down", "--rmi", "all", "--timeout", "2"]);
    }
    // Earlier releases' images stay behind for rollback; they carry the project's label.
    let label = format!("label=com.docker.compose.project={PROJECT}");
    if let Ok(ids) = run_cmd(Path::new("/"), &["docker", "images", "-q", "--filter", &label]) {
        if !ids.is_empty() {
            let mut argv = vec!["docker", "rmi", "-f"];
            argv.extend(ids.split_whitespace());
            let _ = run_cmd(Path::new("/"), &argv);
        }
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    println!("removed the demo's containers, images and {}", dir.display());
    Ok(0)
}

pub async fn run(args: DemoArgs) -> anyhow::Result<i32> {
    if args.down {
        return down(&args.dir);
    }
    if let Err(e) = preflight() {
        eprintln!("kua-deploy demo: {e:#}");
        return Ok(2);
    }
    std::fs::create_dir_all(&args.dir).with_context(|| format!("cannot create {}", args.dir.display()))?;
    let dir = std::fs::canonicalize(&args.dir)?;
    let (registry_path, n) = prepare(&dir)?;
    let registry = Registry::load(&registry_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let state_dir = dir.join("state");
    let token = crate::app::resolve_admin_token(&state_dir, None)?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let settings = Settings {
        viewer_token: None,
        registry: Arc::new(registry),
        state_dir: state_dir.clone(),
        admin_token: token.clone(),
        handoff_ceiling: crate::selfupdate::HANDOFF_CEILING,
        runtime_check: Some(Duration::from_secs(60)),
        tls: None,
        metrics_listener: None,
    };
    let server = tokio::spawn(serve(settings, listener, async move {
        let _ = stop_rx.await;
    }));

    println!("kua-deploy demo: releasing app `hello` (release #{n}) from {}", dir.join("remote.git").display());
    println!("  server: {url} (in-process, for this run)");
    let client = Client::new(url, token);
    let app = AppName::parse("hello").expect("valid");
    let accepted =
        client.deploy(&app, &DeployRequest { reason: Some("kua-deploy demo".into()), ..Default::default() }).await?;
    let mut shown = 0;
    let deploy = loop {
        let d = client.deploy_status(&accepted.deploy_id).await?;
        for s in d.steps.iter().skip(shown) {
            if matches!(s.status, StepStatus::Pending | StepStatus::Running) {
                break;
            }
            println!("  {:<15} {:<9} {}", s.name.as_str(), s.status.as_str(), s.detail);
            shown += 1;
        }
        if d.phase.is_terminal() || d.phase == Phase::AwaitingApproval {
            break d;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = stop_tx.send(());
    let _ = server.await;

    println!("deploy {} ended: {}", deploy.deploy_id, deploy.phase);
    if deploy.phase != Phase::Succeeded {
        println!("  error: {}", deploy.error.unwrap_or_default());
        return Ok(1);
    }
    let port =
        run_cmd(&dir.join("checkout"), &["docker", "compose", "-p", PROJECT, "port", "web", "80"]).unwrap_or_default();
    println!();
    println!("The app runs image {} — see it:", deploy.images.values().next().map(|i| i.as_str()).unwrap_or("?"));
    println!("  curl http://{port}/");
    println!(
        "Run `kua-deploy demo` again to push and release the next version; `kua-deploy demo --down` removes it all."
    );
    println!("To keep the API up and release with the CLI:");
    println!("  kua-deploy serve --config {} --state-dir {}", registry_path.display(), state_dir.display());
    println!("  KUA_STATE_DIR={} kua-deploy release hello", state_dir.display());
    Ok(0)
}
