//! What tells people what happened: the metrics listener (its text checked by the real `promtool`,
//! its counters moving with a real deploy and a signed webhook delivery), the server's JSON log and
//! access log, and the command line's completions, man page, `--help`, `release --json` and
//! `check-config --json`.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::api::webhook::signature::sign;
use kua_deploy::model::{Deploy, Phase};
use serde_json::{json, Value};

use crate::support::{AppOptions, Server, TestApp, TOKEN, WEBHOOK_REPO, WEBHOOK_SECRET};

fn hook_app() -> TestApp {
    TestApp::new(AppOptions {
        webhook: Some(json!({"repository": WEBHOOK_REPO, "secret_file": "SECRET_FILE"})),
        ..AppOptions::default()
    })
}

/// Starts the app's server with `args` added; with `--metrics-listen`, also the scrape URL.
fn start(app: &TestApp, args: &[&str]) -> (Server, Option<String>) {
    let mut cmd = Server::command(&app.registry, &app.state);
    cmd.args(args);
    let mut server = Server::spawn(cmd);
    let metrics = args.contains(&"--metrics-listen").then(|| {
        let line = server.stdout_line();
        line.strip_prefix("kua-deploy metrics on ").unwrap_or_else(|| panic!("no metrics line: {line:?}")).to_owned()
    });
    (server, metrics)
}

async fn scrape(url: &str) -> String {
    let resp = reqwest::get(url).await.expect("scrape the metrics listener");
    assert!(resp.status().is_success(), "{}", resp.status());
    resp.text().await.unwrap()
}

/// `promtool check metrics` on `text`; fails the test when promtool is missing or refuses it.
fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run promtool ({e}): apt-get install prometheus (scripts/install-deps.sh)"));
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool refuses the metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample named exactly `series` (name and labels as printed), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Scrapes until `series` reaches `want` (the end hook counts a moment after the deploy ends).
async fn scrape_until(url: &str, series: &str, want: f64) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(url).await;
        if sample(&text, series) >= want {
            return text;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "{series} never reached {want}:\n{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn github_push(server: &Server, git_ref: &str, signature: Option<&str>) -> reqwest::StatusCode {
    let body = serde_json::to_vec(&json!({
        "ref": git_ref, "before": "a".repeat(40), "after": "b".repeat(40),
        "repository": {"full_name": WEBHOOK_REPO}
    }))
    .unwrap();
    let sig = signature.map(str::to_owned).unwrap_or_else(|| sign(WEBHOOK_SECRET.as_bytes(), &body));
    let resp = server
        .http()
        .post(format!("{}/webhook/github", server.url))
        .header("content-type", "application/json")
        .header("X-GitHub-Event", "push")
        .header("X-GitHub-Delivery", crate::support::uuid_hex())
        .header("X-Hub-Signature-256", format!("sha256={sig}"))
        .body(body)
        .send()
        .await
        .unwrap();
    resp.status()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metrics_listener_passes_promtool_and_its_counters_move_with_a_deploy_a_webhook_and_drift() {
    let app = hook_app();
    let (server, metrics) = start(&app, &["--metrics-listen", "127.0.0.1:0"]);
    let metrics = metrics.unwrap();
    let succeeded = r#"kua_deploys_total{app="hello",phase="succeeded"}"#;
    let git_pull_steps = r#"kua_deploy_step_duration_seconds_count{app="hello",step="git_pull"}"#;
    let ignored = r#"kua_webhook_deliveries_total{outcome="ignored",provider="github"}"#;
    let unauthorized = r#"kua_webhook_deliveries_total{outcome="unauthorized",provider="github"}"#;

    let before = scrape(&metrics).await;
    promtool_accepts(&before);
    assert!(before.contains(&format!("{succeeded} 0")), "the counter is there from the start:\n{before}");
    assert_eq!(sample(&before, git_pull_steps), 0.0);
    assert!(before.contains(r#"kua_build_info{commit="#), "{before}");
    // Only /metrics, and not on the API's port.
    let other = reqwest::get(metrics.replace("/metrics", "/healthz")).await.unwrap();
    assert_eq!(other.status(), reqwest::StatusCode::NOT_FOUND);
    let api = reqwest::get(format!("{}/metrics", server.url)).await.unwrap();
    assert_eq!(api.status(), reqwest::StatusCode::NOT_FOUND);

    let accepted = server.client.deploy(&app.name, &DeployRequest::default()).await.expect("deploy");
    let d = server.wait_end(&accepted.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    let after = scrape_until(&metrics, succeeded, 1.0).await;
    promtool_accepts(&after);
    assert_eq!(sample(&after, succeeded), 1.0, "{after}");
    assert_eq!(sample(&after, git_pull_steps), 1.0, "{after}");
    assert_eq!(sample(&after, r#"kua_deploy_duration_seconds_count{app="hello"}"#), 1.0, "{after}");
    assert_eq!(sample(&after, r#"kua_app_drift{app="hello"}"#), 0.0, "{after}");
    assert_eq!(sample(&after, r#"kua_deploy_queue_depth{phase="running"}"#), 0.0, "{after}");

    // A signed push to another branch is ignored; an unsigned one refused: each counted.
    assert_eq!(github_push(&server, "refs/heads/other", None).await, reqwest::StatusCode::ACCEPTED);
    assert_eq!(github_push(&server, "refs/heads/main", Some("00")).await, reqwest::StatusCode::UNAUTHORIZED);
    let hooks = scrape(&metrics).await;
    assert_eq!(sample(&hooks, ignored), 1.0, "{hooks}");
    assert_eq!(sample(&hooks, unauthorized), 1.0, "{hooks}");
    promtool_accepts(&hooks);

    // Drift as runtime-status last saw it: the app's container stopped by hand is drift.
    let web = app.web_containers();
    assert_eq!(web.len(), 1, "{web:?}");
    crate::support::sh(app.dir.path(), &["docker", "stop", "-t", "1", &web[0].0]);
    let status: Value = server
        .http()
        .get(format!("{}/api/v1/apps/hello/runtime-status", server.url))
        .header("authorization", server.auth())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["drift"], true, "{status}");
    let drifted = scrape(&metrics).await;
    assert_eq!(sample(&drifted, r#"kua_app_drift{app="hello"}"#), 1.0, "{drifted}");
    assert_eq!(sample(&drifted, "kua_apps_in_drift"), 1.0, "{drifted}");

    // Text logs through a pipe carry no colour codes.
    let log = server.log();
    assert!(log.contains("serving on"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a piped log:\n{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn json_logs_are_one_object_a_line_and_the_access_log_names_routes_never_tokens_or_queries() {
    let app = TestApp::new(AppOptions::default());
    let (server, _) = start(&app, &["--log-format", "json"]);
    let http = server.http();
    for path in ["/api/v1/apps", "/api/v1/apps/hello/deploys?limit=3", "/healthz", "/no/such/page?secret=x"] {
        let resp = http.get(format!("{}{path}", server.url)).header("authorization", server.auth()).send().await;
        resp.expect("request");
    }

    // A deploy through `release --json`: only the deploy object on stdout.
    let out = Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
        .args(["release", "hello", "--json", "--url", &server.url])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .current_dir(app.dir.path())
        .output()
        .expect("run kua-deploy release");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}{stderr}");
    let d: Deploy = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("stdout is not a deploy ({e}):\n{stdout}"));
    assert_eq!((d.app.as_str(), d.phase), ("hello", Phase::Succeeded));
    assert!(stderr.contains("git_pull"), "the progress goes to stderr: {stderr}");

    let log = server.log();
    let mut access = Vec::new();
    for line in log.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}"));
        if v["target"] == "kua_deploy::access" {
            access.push(v);
        }
    }
    assert!(!log.contains(TOKEN), "the token is in the log");
    assert!(!log.contains("limit=3") && !log.contains("secret=x"), "a query string is in the log:\n{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escape codes in a JSON log");
    let routes: Vec<&str> = access.iter().map(|v| v["route"].as_str().unwrap()).collect();
    for want in ["/api/v1/apps", "/api/v1/apps/{app}/deploys", "/healthz", "(unmatched)", "/api/v1/deploys/{id}"] {
        assert!(routes.contains(&want), "no access line for {want}: {routes:?}");
    }
    for v in &access {
        assert!(v["method"].is_string() && v["status"].is_u64() && v["duration_ms"].is_number(), "{v}");
    }
    let deploy_post = access.iter().find(|v| v["route"] == "/api/v1/apps/{app}/deploy").expect("the release's POST");
    assert_eq!((deploy_post["method"].as_str(), deploy_post["status"].as_u64()), (Some("POST"), Some(202)));
}

#[test]
fn completions_the_man_page_and_the_exit_statuses_in_help_come_from_the_command_line() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_kua-deploy")).args(args).output().expect("run kua-deploy");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let script = run(&["completions", shell]);
        assert!(script.contains("kua-deploy") && script.contains("release"), "{shell}: {script}");
        if shell == "bash" {
            let file = dir.path().join("kua-deploy.bash");
            std::fs::write(&file, &script).unwrap();
            crate::support::sh(dir.path(), &["bash", "-n", file.to_str().unwrap()]);
        }
    }
    let man = run(&["man"]);
    assert!(man.starts_with(".ie") || man.contains(".TH kua-deploy"), "not roff: {}", &man[..man.len().min(200)]);
    for section in [".SH \"KUA\\-DEPLOY CHECK\\-CONFIG\"", ".SH \"EXIT STATUS\"", "\\-\\-metrics\\-listen"] {
        assert!(man.contains(section), "{section} missing from the man page:\n{man}");
    }
    let help = run(&["--help"]);
    assert!(help.contains("Exit status:") && help.contains("5  release"), "{help}");
    let help = run(&["release", "--help"]);
    assert!(help.contains("3  the deploy awaits approval") && help.contains("--json"), "{help}");
}

#[test]
fn check_config_json_lists_each_problem_with_its_position_and_keeps_the_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let registry = dir.path().join("deploy-registry.json");
    let check = |path: &std::path::Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
            .args(["check-config", "--json", path.to_str().unwrap()])
            .output()
            .expect("run kua-deploy check-config");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)));
        (out.status.code(), v)
    };
    std::fs::write(
        &registry,
        "{\n  \"apps\": {\n    \"hello\": {\n      \"repo\": \"/srv/hello\",\n      \"colour\": 1\n    }\n  }\n}\n",
    )
    .unwrap();
    let (code, v) = check(&registry);
    assert_eq!(code, Some(1), "{v}");
    let problems = v.as_array().expect("a list");
    assert!(problems.len() >= 2, "an unknown key and the missing services: {v}");
    let colour = problems.iter().find(|p| p["key"].as_str().is_some_and(|k| k.ends_with("colour"))).expect("colour");
    assert_eq!((colour["line"].as_u64(), colour["app"].as_str()), (Some(5), Some("hello")), "{colour}");
    assert!(colour["column"].as_u64().is_some() && colour["message"].is_string(), "{colour}");
    assert_eq!(colour["file"].as_str(), registry.to_str());
    assert!(problems.iter().any(|p| p["key"].as_str().is_some_and(|k| k.ends_with("services"))), "{v}");

    std::fs::write(&registry, r#"{"apps": {"hello": {"repo": "/srv/hello", "services": ["web"]}}}"#).unwrap();
    assert_eq!(check(&registry), (Some(0), json!([])));
    let (code, v) = check(&dir.path().join("missing.json"));
    assert_eq!(code, Some(2), "{v}");
    assert!(v[0]["message"].as_str().unwrap().contains("cannot read"), "{v}");
}
