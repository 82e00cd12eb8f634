//! The admin API's answers to bad input: status codes and the JSON error shape.

use kua_deploy::api::types::{DeployRequest, ErrorBody};
use kua_deploy::model::Phase;
use reqwest::StatusCode;
use serde_json::json;

use crate::support::{AppOptions, TestApp, TOKEN};

async fn post(server: &crate::support::Server, path: &str, auth: Option<&str>, body: &str) -> (StatusCode, String) {
    let mut req = server.http().post(format!("{}{path}", server.url)).body(body.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

async fn get(server: &crate::support::Server, path: &str) -> (StatusCode, String) {
    let resp =
        server.http().get(format!("{}{path}", server.url)).header("authorization", server.auth()).send().await.unwrap();
    (resp.status(), resp.text().await.unwrap())
}

fn code(body: &str) -> String {
    serde_json::from_str::<ErrorBody>(body).unwrap_or_else(|e| panic!("not the error shape ({e}): {body}")).error.code
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_requests_get_clear_json_errors_and_queue_nothing() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let auth = server.auth();
    let deploy = "/api/v1/apps/hello/deploy";

    let (s, b) = post(&server, deploy, None, "").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, _) = post(&server, deploy, Some("Bearer wrong-token-wrong-token"), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, _) = post(&server, deploy, Some(TOKEN), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a token without the Bearer scheme is refused");
    // The auth scheme is case-insensitive: past auth, the unknown app is what answers.
    for scheme in ["bearer", "BEARER"] {
        let (s, b) = post(&server, "/api/v1/apps/nope/deploy", Some(&format!("{scheme} {TOKEN}")), "").await;
        assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "unknown_app"), "{scheme}: {b}");
    }
    let (s, _) = post(&server, "/api/v1/apps/nope/deploy", Some(&format!("bearer {TOKEN}x")), "").await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "a wrong token in lower case is still wrong");

    let (s, b) = post(&server, "/api/v1/apps/nope/deploy", Some(&auth), "").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "unknown_app"));
    let (s, b) = post(&server, "/api/v1/apps/..%2F..%2Fetc/deploy", Some(&auth), "").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::BAD_REQUEST, "invalid_app_name"));

    let (s, b) = post(&server, deploy, Some(&auth), "{not json").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    let (s, b) = post(&server, deploy, Some(&auth), r#"{"comit": "abc"}"#).await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::BAD_REQUEST, "bad_request"));
    assert!(b.contains("comit"), "{b}");
    for bad in ["abc123", "--upload-pack=touch /tmp/pwned", &"A".repeat(40)] {
        let (s, b) = post(&server, deploy, Some(&auth), &json!({"commit": bad}).to_string()).await;
        assert_eq!((s, code(&b).as_str()), (StatusCode::BAD_REQUEST, "invalid_commit"), "{bad}: {b}");
    }
    let (s, b) = get(&server, "/api/v1/deploys/not-a-uuid").await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = get(&server, "/api/v1/deploys/0190a0b0-0000-7000-8000-000000000000").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, b) = get(&server, "/api/v1/apps/hello/progress").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "no_deploys"));
    let (s, b) = get(&server, "/api/v1/apps/hello/deploys?limit=0").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::BAD_REQUEST, "bad_request"));

    // Answers axum makes itself have the same JSON shape.
    let resp =
        server.http().get(format!("{}{deploy}", server.url)).header("authorization", &auth).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(code(&resp.text().await.unwrap()), "method_not_allowed");
    let (s, b) = get(&server, "/api/v1/apps/%FF%FE/progress").await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::BAD_REQUEST, "bad_request"));

    // Without a token, every /api/v1 path answers 401, known or not.
    let resp = server.http().get(format!("{}/api/v1/no/such/thing", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // None of that queued anything.
    assert!(server.client.history(&app.name, 10).await.unwrap().deploys.is_empty());

    // Health needs no token.
    let resp = server.http().get(format!("{}/healthz", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(h["status"], "ok");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_log_follow_stream_ends_with_the_deploys_phase() {
    use futures::StreamExt;
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let mut stream = Box::pin(server.client.follow_logs(&acc.deploy_id, 0));
    let mut lines = 0;
    let mut end = None;
    while let Some(item) = stream.next().await {
        match item.unwrap() {
            kua_deploy::api::types::FollowItem::Line(_) => lines += 1,
            kua_deploy::api::types::FollowItem::End { phase, .. } => end = Some(phase),
        }
    }
    assert_eq!(end, Some(Phase::Succeeded));
    assert!(lines > 5, "only {lines} lines");
}

#[tokio::test(flavor = "multi_thread")]
async fn check_config_reports_every_problem_and_exits_non_zero() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("deploy-registry.json");
    std::fs::write(&path, r#"{"apps": {"hello": {"repo": "relative/path", "servces": ["web"]}}}"#).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
        .args(["check-config", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("servces"), "{text}");
    assert!(text.contains("repo"), "{text}");
    assert!(text.contains("services"), "{text}");
    assert!(text.contains(":1:"), "positions are given: {text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_secret_in_a_deploys_reason_never_comes_back_in_an_answer() {
    use crate::support::WEBHOOK_SECRET;
    let app = TestApp::new(AppOptions {
        webhook: Some(json!({"repository": crate::support::WEBHOOK_REPO, "secret_file": "SECRET_FILE"})),
        ..AppOptions::default()
    });
    let server = app.start();
    // A commit the remote does not have: the deploy ends at git_pull, in a second.
    let body = json!({"commit": "1".repeat(40), "reason": format!("pasted {TOKEN} and {WEBHOOK_SECRET} by mistake")});
    let (s, b) = post(&server, "/api/v1/apps/hello/deploy", Some(&server.auth()), &body.to_string()).await;
    assert_eq!(s, StatusCode::ACCEPTED, "{b}");
    assert!(!b.contains(TOKEN) && !b.contains(WEBHOOK_SECRET), "{b}");
    let id = serde_json::from_str::<kua_deploy::api::types::DeployAccepted>(&b).unwrap().deploy_id;
    let d = server.wait_end(&id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    assert_eq!(d.reason.as_deref(), Some("pasted [REDACTED] and [REDACTED] by mistake"));

    for path in [
        format!("/api/v1/deploys/{id}"),
        "/api/v1/apps/hello/progress".to_owned(),
        "/api/v1/apps/hello/deploys".to_owned(),
        format!("/api/v1/deploys/{id}/logs"),
    ] {
        let (s, b) = get(&server, &path).await;
        assert_eq!(s, StatusCode::OK, "{path}: {b}");
        assert!(!b.contains(TOKEN) && !b.contains(WEBHOOK_SECRET), "{path}: {b}");
    }
    let (_, b) = get(&server, "/api/v1/apps/hello/deploys").await;
    assert!(b.contains("pasted [REDACTED] and [REDACTED] by mistake"), "{b}");
}
