//! Webhook intake under a burst: 10,000 signed Forgejo push deliveries (each a new commit) for one
//! app while a deploy of it runs. Prints deliveries per second, answer latency (p50/p99/max), the
//! most deploys ever queued behind the running one, and the server's resident memory before,
//! during and after. Run: `cargo bench --bench webhook_intake` (needs Docker, Compose v2, git and
//! /bin/busybox, as the tests do). `KUA_BENCH_DELIVERIES` and `KUA_BENCH_CONCURRENCY` change the
//! burst.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::api::webhook::signature::sign;
use kua_deploy::cli::client::Client;
use kua_deploy::model::{AppName, Phase};

const TOKEN: &str = "bench-admin-token-0123456789abcdef";
const SECRET: &str = "bench-webhook-secret";
const REPO: &str = "kua/bench";

fn run(dir: &Path, argv: &[&str]) -> String {
    let out = Command::new(argv[0]).args(&argv[1..]).current_dir(dir).output().expect("run");
    assert!(out.status.success(), "{argv:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn git(dir: &Path, args: &[&str]) -> String {
    let mut argv = vec!["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid"];
    argv.extend_from_slice(args);
    run(dir, &argv)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).map(|l| l.to_owned()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let deliveries: usize = std::env::var("KUA_BENCH_DELIVERIES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let concurrency: usize = std::env::var("KUA_BENCH_CONCURRENCY").ok().and_then(|v| v.parse().ok()).unwrap_or(16);
    let dir = tempfile::tempdir().unwrap();
    let project = format!("kb{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);

    // The app: a build that sleeps long enough for the whole burst to arrive while it runs.
    let remote = dir.path().join("remote.git");
    let work = dir.path().join("work");
    git(dir.path(), &["init", "-q", "--bare", "--initial-branch=main", "remote.git"]);
    git(dir.path(), &["init", "-q", "--initial-branch=main", "work"]);
    std::fs::copy("/bin/busybox", work.join("busybox")).expect("/bin/busybox (apt-get install busybox-static)");
    std::fs::write(
        work.join("Dockerfile"),
        "FROM scratch\nLABEL kua-deploy.bench=1\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\",\"sleep\",\"600\"]\nCMD [\"/bin/busybox\",\"sleep\",\"1\"]\n",
    )
    .unwrap();
    std::fs::write(work.join("docker-compose.yml"), "services:\n  web:\n    build: .\n    stop_grace_period: 1s\n")
        .unwrap();
    git(&work, &["add", "-A"]);
    git(&work, &["commit", "-qm", "slow"]);
    git(&work, &["push", "-q", remote.to_str().unwrap(), "HEAD:refs/heads/main"]);
    git(dir.path(), &["clone", "-q", "--branch", "main", "remote.git", "checkout"]);
    let secret_file = dir.path().join("secret");
    std::fs::write(&secret_file, SECRET).unwrap();
    let registry = dir.path().join("deploy-registry.json");
    let reg = serde_json::json!({"apps": {"bench": {
        "repo": dir.path().join("checkout"), "project": project, "services": ["web"],
        "webhook": {"repository": REPO, "secret_file": secret_file}
    }}});
    std::fs::write(&registry, reg.to_string()).unwrap();

    let mut server = Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
        .args([
            "serve",
            "--config",
            registry.to_str().unwrap(),
            "--state-dir",
            dir.path().join("state").to_str().unwrap(),
        ])
        .args(["--listen", "127.0.0.1:0"])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("start kua-deploy");
    let mut line = String::new();
    BufReader::new(server.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.trim().trim_start_matches("kua-deploy listening on ").to_owned();
    let pid = server.id();

    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(url.clone(), TOKEN);
        let app = AppName::parse("bench").unwrap();
        let running = client.deploy(&app, &DeployRequest::default()).await.expect("first deploy").deploy_id;
        loop {
            let d = client.deploy_status(&running).await.unwrap();
            if d.step(kua_deploy::model::StepName::Build).is_some_and(|s| s.status == kua_deploy::model::StepStatus::Running) {
                break;
            }
            assert!(!d.phase.is_terminal(), "the slow deploy ended early: {d:#?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
        let rss_before = rss_kib(pid);

        // Every delivery a distinct commit id, signed over the exact bytes sent.
        let template: serde_json::Value = serde_json::from_slice(&std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/webhooks/forgejo-push-branch-3-commits.json"
        )).unwrap())
        .unwrap();
        let bodies: Vec<(String, Vec<u8>)> = (0..deliveries)
            .map(|i| {
                let mut v = template.clone();
                v["repository"]["full_name"] = serde_json::json!(REPO);
                v["ref"] = serde_json::json!("refs/heads/main");
                v["after"] = serde_json::json!(format!("{:040x}", i + 1));
                let body = serde_json::to_vec(&v).unwrap();
                (sign(SECRET.as_bytes(), &body), body)
            })
            .collect();
        let bodies = Arc::new(bodies);
        let next = Arc::new(AtomicUsize::new(0));
        let http = reqwest::Client::new();
        let max_queued = Arc::new(AtomicUsize::new(0));
        let rss_mid = Arc::new(AtomicUsize::new(0));

        // A watcher samples how many deploys wait behind the running one (queued ones are always
        // the newest, so the last five tell), and memory.
        let watcher = {
            let client = client.clone();
            let app = app.clone();
            let max_queued = max_queued.clone();
            let rss_mid = rss_mid.clone();
            let next = next.clone();
            tokio::spawn(async move {
                while next.load(Ordering::Relaxed) < deliveries {
                    if let Ok(h) = client.history(&app, 5).await {
                        let q = h.deploys.iter().filter(|d| d.phase == Phase::Queued).count();
                        max_queued.fetch_max(q, Ordering::Relaxed);
                    }
                    rss_mid.fetch_max(rss_kib(pid) as usize, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };

        let started = Instant::now();
        let workers: Vec<_> = (0..concurrency)
            .map(|_| {
                let (bodies, next, http, url) = (bodies.clone(), next.clone(), http.clone(), url.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= bodies.len() {
                            return latencies;
                        }
                        let (sig, body) = &bodies[i];
                        let t = Instant::now();
                        let resp = http
                            .post(format!("{url}/webhook/forgejo"))
                            .header("content-type", "application/json")
                            .header("X-Forgejo-Event", "push")
                            .header("X-Forgejo-Delivery", format!("bench-{i}"))
                            .header("X-Forgejo-Signature", sig)
                            .body(body.clone())
                            .send()
                            .await
                            .expect("send");
                        assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap_or_default());
                        let _ = resp.bytes().await;
                        latencies.push(t.elapsed());
                    }
                })
            })
            .collect();
        let mut latencies = Vec::new();
        for w in workers {
            latencies.extend(w.await.unwrap());
        }
        let elapsed = started.elapsed();
        watcher.await.unwrap();
        latencies.sort();
        let history = client.history(&app, 500).await.unwrap();
        let queued_now = history.deploys.iter().filter(|d| d.phase == Phase::Queued).count();
        max_queued.fetch_max(queued_now, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_after = rss_kib(pid);
        let _ = client.cancel(&running).await;

        let rate = deliveries as f64 / elapsed.as_secs_f64();
        let p99 = percentile(&latencies, 0.99);
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!("webhook intake: {deliveries} signed Forgejo pushes for one app during a running deploy, {concurrency} concurrent senders");
        println!("  {:<34} {:>10}   target", "", "measured");
        println!("  {:<34} {:>10.0}   > 2000", "deliveries per second", rate);
        println!("  {:<34} {:>10.2}   < 20", "p99 answer latency (ms)", ms(p99));
        println!("  {:<34} {:>10.2}", "p50 answer latency (ms)", ms(percentile(&latencies, 0.5)));
        println!("  {:<34} {:>10.2}", "max answer latency (ms)", ms(*latencies.last().unwrap()));
        println!("  {:<34} {:>10}   <= 1", "most deploys queued at once", max_queued.load(Ordering::Relaxed));
        println!(
            "  {:<34} {:>10}   flat",
            "server RSS MiB before/peak/after",
            format!(
                "{:.1}/{:.1}/{:.1}",
                rss_before as f64 / 1024.0,
                rss_mid.load(Ordering::Relaxed) as f64 / 1024.0,
                rss_after as f64 / 1024.0
            )
        );
        println!("  ratio measured/target: rate {:.2}x, p99 {:.2}x", rate / 2000.0, ms(p99) / 20.0);
    });

    unsafe {
        libc::kill(pid as i32, libc::SIGTERM);
    }
    let _ = server.wait();
    // Remove what the build left: its containers and images carry the project's label.
    for kind in [["ps", "-aq"], ["images", "-q"]] {
        let ids = run(
            Path::new("/"),
            &["docker", kind[0], kind[1], "--filter", &format!("label=com.docker.compose.project={project}")],
        );
        if !ids.is_empty() {
            let mut argv = vec!["docker", if kind[0] == "ps" { "rm" } else { "rmi" }, "-f"];
            argv.extend(ids.split_whitespace());
            let _ = Command::new(argv[0]).args(&argv[1..]).output();
        }
    }
}
