//! Commit statuses and notifications: a real HTTP receiver on 127.0.0.1, started by the test,
//! stands in for the forge's status API and for the webhook targets; it records every request
//! and answers as scripted (a status code per request, or never).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{parse_time, Deploy, DeployId, Phase, StepName};
use serde_json::{json, Value};

use crate::support::{AppOptions, Behaviour, Server, TestApp};

const FORGE_TOKEN: &str = "forge-token-7c1e9a-never-shown";
const HOOK_TOKEN: &str = "hook-token-3b8d2f-never-shown";

#[derive(Debug, Clone)]
struct Hit {
    path: String,
    query: String,
    headers: HeaderMap,
    body: Bytes,
}

impl Hit {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

#[derive(Default)]
struct Script {
    hits: Mutex<Vec<Hit>>,
    /// The status of each next answer; 200 once it is empty.
    answers: Mutex<VecDeque<u16>>,
    /// Accept, read, and never answer.
    hang: bool,
}

struct Receiver {
    url: String,
    script: Arc<Script>,
}

impl Receiver {
    async fn start(answers: &[u16], hang: bool) -> Receiver {
        let script =
            Arc::new(Script { hits: Mutex::default(), answers: Mutex::new(answers.iter().copied().collect()), hang });
        let app = axum::Router::new().fallback(record).with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, script }
    }

    fn hits(&self) -> Vec<Hit> {
        self.script.hits.lock().unwrap().clone()
    }

    /// Waits until `n` requests came whose path starts with `prefix`.
    async fn wait_hits(&self, prefix: &str, n: usize, within: Duration) -> Vec<Hit> {
        let start = Instant::now();
        loop {
            let hits: Vec<Hit> = self.hits().into_iter().filter(|h| h.path.starts_with(prefix)).collect();
            if hits.len() >= n {
                return hits;
            }
            assert!(start.elapsed() < within, "{n} requests to {prefix} expected within {within:?}; got {hits:#?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn record(State(s): State<Arc<Script>>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> StatusCode {
    assert_eq!(method, Method::POST);
    let hit = Hit { path: uri.path().to_owned(), query: uri.query().unwrap_or("").to_owned(), headers, body };
    s.hits.lock().unwrap().push(hit);
    if s.hang {
        std::future::pending::<()>().await;
    }
    let code = s.answers.lock().unwrap().pop_front().unwrap_or(200);
    StatusCode::from_u16(code).unwrap()
}

/// The app with a Forgejo status API and `notify` targets on `receiver`, and a public URL.
fn app_notifying(opts: AppOptions, receiver: &Receiver, notify: Value) -> TestApp {
    let app = TestApp::new(opts);
    let token_file = app.dir.path().join("forge-token");
    std::fs::write(&token_file, format!("{FORGE_TOKEN}\n")).unwrap();
    let api = format!("{}/api/v1", receiver.url);
    app.edit_registry(|r| {
        r["public_url"] = json!("https://deploy.example/");
        r["status"] = json!({"kind": "forgejo", "api": api, "token_file": token_file, "repository": "kua/hello"});
        r["apps"]["hello"]["notify"] = notify;
    });
    app
}

fn hook(receiver: &Receiver, format: &str, events: Option<Value>) -> Value {
    let mut t = json!({"kind": "webhook", "url": format!("{}/hook/{format}?token={HOOK_TOKEN}", receiver.url), "format": format});
    if let Some(e) = events {
        t["events"] = e;
    }
    t
}

async fn log_text(server: &Server, id: &DeployId) -> String {
    let page = server.client.logs(id, 0).await.unwrap();
    page.lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>().join("\n")
}

fn assert_no_secrets(what: &str, text: &str) {
    for secret in [FORGE_TOKEN, HOOK_TOKEN] {
        assert!(!text.contains(secret), "{what} shows a secret:\n{text}");
    }
}

async fn deploy(server: &Server, app: &TestApp) -> Deploy {
    let accepted = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_end(&accepted.deploy_id).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_successful_deploy_sets_pending_then_success_on_its_commit_and_posts_the_deploy_once() {
    let receiver = Receiver::start(&[], false).await;
    let app = app_notifying(AppOptions::default(), &receiver, json!([hook(&receiver, "json", None)]));
    let server = app.start();
    let d = deploy(&server, &app).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    let sha = d.commit.clone().unwrap();

    let statuses = receiver.wait_hits("/api/v1/", 2, Duration::from_secs(10)).await;
    let posted = receiver.wait_hits("/hook/", 1, Duration::from_secs(10)).await;
    let states: Vec<Value> = statuses.iter().map(|h| h.json()["state"].clone()).collect();
    assert_eq!(states, [json!("pending"), json!("success")], "{statuses:#?}");
    for h in &statuses {
        assert_eq!(h.path, format!("/api/v1/repos/kua/hello/statuses/{sha}"));
        assert_eq!(h.header("authorization"), format!("token {FORGE_TOKEN}"));
        assert_eq!(h.json()["context"], "kua-deploy/hello");
        assert_eq!(h.json()["target_url"], format!("https://deploy.example/api/v1/deploys/{}", d.deploy_id));
    }
    assert_eq!(statuses[1].json()["description"], "succeeded");
    assert_eq!(posted[0].query, format!("token={HOOK_TOKEN}"));
    let sent: Deploy = serde_json::from_slice(&posted[0].body).unwrap();
    assert_eq!((sent.deploy_id.clone(), sent.phase), (d.deploy_id.clone(), Phase::Succeeded));

    // Once: nothing more arrives.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.hits().len(), 3, "{:#?}", receiver.hits());
    let log = log_text(&server, &d.deploy_id).await;
    assert!(log.contains(&format!("notify succeeded {}/…: attempt 1 delivered (200)", receiver.url)), "{log}");
    assert!(log.contains("commit status Success on forgejo"), "{log}");
    assert_no_secrets("the deploy's log", &log);
    assert_no_secrets("the server's output", &server.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rolled_back_deploy_sets_failure_and_tells_the_slack_target() {
    let receiver = Receiver::start(&[], false).await;
    let app = app_notifying(AppOptions::default(), &receiver, json!([hook(&receiver, "slack", None)]));
    let server = app.start();
    assert_eq!(deploy(&server, &app).await.phase, Phase::Succeeded);
    receiver.wait_hits("/hook/", 1, Duration::from_secs(10)).await;

    app.push("v2", Behaviour::Crash);
    let d = deploy(&server, &app).await;
    assert_eq!(d.phase, Phase::RolledBack, "{d:#?}");
    let sha = d.commit.clone().unwrap();
    let texts = receiver.wait_hits("/hook/", 2, Duration::from_secs(10)).await;
    let text = texts[1].json()["text"].as_str().unwrap().to_owned();
    assert!(text.starts_with(&format!("hello: deploy {} was rolled back", d.deploy_id)), "{text}");
    let end = receiver.wait_hits(&format!("/api/v1/repos/kua/hello/statuses/{sha}"), 2, Duration::from_secs(10)).await;
    assert_eq!(end[1].json()["state"], "failure", "{end:#?}");
    let description = end[1].json()["description"].as_str().unwrap().to_owned();
    assert!(description.starts_with("rolled_back: "), "{description}");
    assert!(description.chars().count() <= 140);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_waiting_for_approval_is_announced_to_ntfy() {
    let receiver = Receiver::start(&[], false).await;
    let opts =
        AppOptions { migrations: Some(json!({"paths": ["migrations/"], "policy": "block"})), ..Default::default() };
    let ntfy = hook(&receiver, "ntfy", Some(json!(["awaiting_approval"])));
    let app = app_notifying(opts, &receiver, json!([ntfy]));
    let server = app.start();
    assert_eq!(deploy(&server, &app).await.phase, Phase::Succeeded);
    std::fs::write(app.work.join("migrations/0002_add.sql"), "alter table t add c int;\n").unwrap();
    app.push("v2", Behaviour::Serve);
    let d = deploy(&server, &app).await;
    assert_eq!(d.phase, Phase::AwaitingApproval, "{d:#?}");
    let hits = receiver.wait_hits("/hook/", 1, Duration::from_secs(10)).await;
    assert_eq!(hits.len(), 1, "only awaiting_approval was asked for: {hits:#?}");
    assert_eq!(hits[0].header("title"), "hello awaiting approval");
    assert_eq!(hits[0].header("priority"), "default");
    let body = String::from_utf8_lossy(&hits[0].body).into_owned();
    assert!(body.contains("awaits approval") && body.contains("0002_add.sql"), "{body}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_answering_500_twice_gets_three_attempts_shown_in_the_deploys_log() {
    let receiver = Receiver::start(&[500, 500], false).await;
    let app = app_notifying(AppOptions::default(), &receiver, json!([hook(&receiver, "json", None)]));
    // Only the webhook: the forge would take the scripted answers too.
    app.edit_registry(|r| r["status"] = Value::Null);
    let server = app.start();
    let d = deploy(&server, &app).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    receiver.wait_hits("/hook/", 3, Duration::from_secs(15)).await;
    let shown = format!("notify succeeded {}/…", receiver.url);
    let start = Instant::now();
    let log = loop {
        let log = log_text(&server, &d.deploy_id).await;
        if log.contains("attempt 3") || start.elapsed() > Duration::from_secs(5) {
            break log;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(log.contains(&format!("{shown}: attempt 1 answered 500; retrying in 1s")), "{log}");
    assert!(log.contains(&format!("{shown}: attempt 2 answered 500; retrying in 4s")), "{log}");
    assert!(log.contains(&format!("{shown}: attempt 3 delivered (200)")), "{log}");
    assert_no_secrets("the deploy's log", &log);
    assert_eq!(server.client.deploy_status(&d.deploy_id).await.unwrap().phase, Phase::Succeeded);
}

/// How long after its verify step ended the deploy was recorded ended, and how long it took.
fn end_gap_and_duration(d: &Deploy) -> (Duration, Duration) {
    let verify_end = parse_time(d.step(StepName::Verify).unwrap().finished_at.as_deref().unwrap()).unwrap();
    let finished = parse_time(d.finished_at.as_deref().unwrap()).unwrap();
    let started = parse_time(d.started_at.as_deref().unwrap()).unwrap();
    ((finished - verify_end).to_std().unwrap_or_default(), (finished - started).to_std().unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_target_that_never_answers_does_not_delay_the_deploys_end() {
    let receiver = Receiver::start(&[], true).await;
    let app = app_notifying(AppOptions::default(), &receiver, json!([hook(&receiver, "json", None)]));
    let mut server = app.start();
    let first = deploy(&server, &app).await;
    assert_eq!(first.phase, Phase::Succeeded);
    app.push("v2", Behaviour::Serve);
    let asked = Instant::now();
    let d = deploy(&server, &app).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    let (gap, with_hanging) = end_gap_and_duration(&d);
    assert!(gap < Duration::from_secs(1), "the end was recorded {gap:?} after verify: {d:#?}");
    // The API answers promptly while the targets hang (both statuses and the webhook).
    let t = Instant::now();
    assert_eq!(server.client.deploy_status(&d.deploy_id).await.unwrap().phase, Phase::Succeeded);
    assert!(t.elapsed() < Duration::from_secs(1));
    let seen = asked.elapsed();

    // The same deploy with nobody to tell, for comparison.
    server.terminate();
    let shutdown_log = server.log();
    app.edit_registry(|r| {
        r["status"] = Value::Null;
        r["apps"]["hello"]["notify"] = Value::Null;
    });
    let server = app.start();
    app.push("v3", Behaviour::Serve);
    let plain = deploy(&server, &app).await;
    assert_eq!(plain.phase, Phase::Succeeded);
    let (plain_gap, without) = end_gap_and_duration(&plain);
    eprintln!(
        "measure: deploy with a hanging notify target and forge {with_hanging:?} (end {gap:?} after verify, seen by the client after {seen:?}); \
         without notifications {without:?} (end {plain_gap:?} after verify)"
    );
    assert!(shutdown_log.contains("dropping them"), "{shutdown_log}");
    assert_no_secrets("the server's output", &shutdown_log);
    let log = log_text(&server, &d.deploy_id).await;
    assert!(log.contains("the server is stopping"), "{log}");
    assert_no_secrets("the deploy's log", &log);
}
