//! Push webhooks end to end: the recorded Forgejo, Gitea and GitHub bodies (edited where a test
//! needs its own repository, ref or commit, then signed over the exact bytes sent) and GitLab's
//! documented ones, with the headers a real delivery carries, against the running server, a real
//! git remote and the engine.

use std::time::{Duration, Instant};

use kua_deploy::api::types::{DeployRequest, WebhookAnswer};
use kua_deploy::api::webhook::signature::sign;
use kua_deploy::model::Phase;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{git, uuid_hex, AppOptions, Behaviour, Server, TestApp, WEBHOOK_REPO, WEBHOOK_SECRET};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/tests/fixtures/webhooks/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A recorded push body, pointed at this test's repository, ref and commit.
pub(crate) fn push_body(fixture_name: &str, git_ref: &str, after: &str) -> Vec<u8> {
    let mut v: Value = serde_json::from_slice(&fixture(fixture_name)).unwrap();
    v["repository"]["full_name"] = json!(WEBHOOK_REPO);
    v["ref"] = json!(git_ref);
    v["after"] = json!(after);
    serde_json::to_vec_pretty(&v).unwrap()
}

fn hook_app() -> TestApp {
    TestApp::new(AppOptions {
        webhook: Some(json!({"repository": WEBHOOK_REPO, "secret_file": "SECRET_FILE"})),
        ..AppOptions::default()
    })
}

#[derive(Clone, Copy)]
pub(crate) enum Provider {
    Forgejo,
    Gitea,
    GitHub,
    GitLab,
}

/// The headers a real delivery of `provider` carries (see the fixtures' README). Forgejo sends
/// every family at once. GitLab's `signature` is its secret token, sent as is.
fn headers(provider: Provider, event: &str, delivery: &str, signature: &str) -> Vec<(String, String)> {
    let h = |k: &str, v: &str| (k.to_owned(), v.to_owned());
    match provider {
        Provider::Forgejo => vec![
            h("X-Forgejo-Delivery", delivery),
            h("X-Forgejo-Event", event),
            h("X-Forgejo-Event-Type", event),
            h("X-Forgejo-Signature", signature),
            h("X-Gitea-Delivery", delivery),
            h("X-Gitea-Event", event),
            h("X-Gitea-Event-Type", event),
            h("X-Gitea-Signature", signature),
            h("X-Gogs-Delivery", delivery),
            h("X-Gogs-Event", event),
            h("X-Gogs-Signature", signature),
            h("X-GitHub-Delivery", delivery),
            h("X-GitHub-Event", event),
            h("X-Hub-Signature-256", &format!("sha256={signature}")),
        ],
        Provider::Gitea => vec![
            h("X-Gitea-Delivery", delivery),
            h("X-Gitea-Event", event),
            h("X-Gitea-Event-Type", event),
            h("X-Gitea-Signature", signature),
            h("X-Gogs-Delivery", delivery),
            h("X-Gogs-Event", event),
            h("X-Gogs-Signature", signature),
        ],
        Provider::GitHub => vec![
            h("X-GitHub-Delivery", delivery),
            h("X-GitHub-Event", event),
            h("X-GitHub-Hook-ID", "4242"),
            h("X-Hub-Signature-256", &format!("sha256={signature}")),
            h("User-Agent", "GitHub-Hookshot/abc123"),
        ],
        Provider::GitLab => vec![
            h("User-Agent", "GitLab/17.6.1"),
            h("X-Gitlab-Event", event),
            h("X-Gitlab-Event-UUID", delivery),
            h("X-Gitlab-Webhook-UUID", "02affd2d-2cba-4033-917d-ec22d5dc4b38"),
            h("X-Gitlab-Instance", "https://gitlab.example.com"),
            h("X-Gitlab-Token", signature),
        ],
    }
}

async fn send(
    server: &Server,
    provider: Provider,
    headers: Vec<(String, String)>,
    content_type: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let path = match provider {
        Provider::GitHub => "/webhook/github",
        Provider::GitLab => "/webhook/gitlab",
        _ => "/webhook/forgejo",
    };
    let mut req = server.http().post(format!("{}{path}", server.url)).header("content-type", content_type).body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status();
    let text = resp.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or_else(|_| json!({ "raw": text })))
}

/// A JSON push signed with the app's secret over the exact bytes sent.
pub(crate) async fn deliver_push(
    server: &Server,
    provider: Provider,
    delivery: &str,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let sig = sign(WEBHOOK_SECRET.as_bytes(), &body);
    send(server, provider, headers(provider, "push", delivery, &sig), "application/json", body).await
}

/// Sends only the headers of a delivery that announces 5 MiB + 1 of body, and reads the answer.
async fn oversize_answer(url: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /webhook/forgejo HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nX-Forgejo-Event: push\r\nX-Forgejo-Signature: 00\r\nContent-Length: {}\r\n\r\n",
        5 * 1024 * 1024 + 1
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("an answer without the body")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).into_owned()
}

fn answer(v: &Value) -> WebhookAnswer {
    serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("not a webhook answer ({e}): {v}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_forgejo_push_deploys_exactly_its_after_commit_not_the_branch_tip() {
    let app = hook_app();
    let server = app.start();
    let v2 = app.push("v2", Behaviour::Serve);
    app.push("v3", Behaviour::Serve);

    let body = push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &v2);
    let started = Instant::now();
    let (status, v) = deliver_push(&server, Provider::Forgejo, &uuid_hex(), body).await;
    assert!(started.elapsed() < Duration::from_secs(2), "the answer must come at once");
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let a = answer(&v);
    assert_eq!(a.provider, "forgejo");
    assert_eq!(a.results[0].outcome, "queued", "{v}");
    let id = a.results[0].deploy_id.clone().unwrap();

    let d = server.wait_end(&id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.commit.as_ref().map(|c| c.as_str()), Some(v2.as_str()));
    assert_eq!(d.trigger.source, kua_deploy::model::TriggerSource::Webhook);
    assert_eq!(app.fetch().as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gitea_and_github_deliveries_deploy_with_json_and_form_bodies() {
    let app = hook_app();
    let server = app.start();

    // Gitea, form body: the signature is over the JSON inside the `payload` field.
    let v2 = app.push("v2", Behaviour::Serve);
    let json_text = push_body("gitea-push-first-push-signed.json", "refs/heads/main", &v2);
    let sig = sign(WEBHOOK_SECRET.as_bytes(), &json_text);
    let form: String = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json_text).unwrap())
        .finish();
    let (status, v) = send(
        &server,
        Provider::Gitea,
        headers(Provider::Gitea, "push", &uuid_hex(), &sig),
        "application/x-www-form-urlencoded",
        form.into_bytes(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let a = answer(&v);
    assert_eq!(a.provider, "gitea");
    let d = server.wait_end(a.results[0].deploy_id.as_ref().unwrap()).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v2"));

    // GitHub, JSON body.
    let v3 = app.push("v3", Behaviour::Serve);
    let (status, v) = deliver_push(
        &server,
        Provider::GitHub,
        &uuid_hex(),
        push_body("github-push-branch.json", "refs/heads/main", &v3),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let d = server.wait_end(answer(&v).results[0].deploy_id.as_ref().unwrap()).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v3"));

    // GitHub, form body: GitHub signs the body as sent.
    let v4 = app.push("v4", Behaviour::Serve);
    let json_text = push_body("github-push-branch.json", "refs/heads/main", &v4);
    let form = form_urlencoded::Serializer::new(String::new())
        .append_pair("payload", std::str::from_utf8(&json_text).unwrap())
        .finish()
        .into_bytes();
    let sig = sign(WEBHOOK_SECRET.as_bytes(), &form);
    let (status, v) = send(
        &server,
        Provider::GitHub,
        headers(Provider::GitHub, "push", &uuid_hex(), &sig),
        "application/x-www-form-urlencoded",
        form,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let d = server.wait_end(answer(&v).results[0].deploy_id.as_ref().unwrap()).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(app.fetch().as_deref(), Some("v4"));

    let deliveries = server.client.deliveries(&app.name, 10).await.unwrap().deliveries;
    assert_eq!(deliveries.len(), 3);
    assert_eq!(deliveries[0].provider, "github");
    assert_eq!(deliveries[2].provider, "gitea");
    assert!(deliveries.iter().all(|d| d.outcome == "queued" && d.deploy_id.is_some()));
}

#[tokio::test(flavor = "multi_thread")]
async fn unsigned_wrongly_signed_or_malformed_deliveries_are_refused_and_queue_nothing() {
    let app = hook_app();
    // A second app on the same repository whose secret variable is not set: no secret configured.
    let mut reg: Value = serde_json::from_str(&std::fs::read_to_string(&app.registry).unwrap()).unwrap();
    let mut other = reg["apps"]["hello"].clone();
    other["project"] = json!(format!("{}-x", app.project));
    other["webhook"] = json!({"repository": "kua/nosecret", "secret_env": "KUA_TEST_UNSET_SECRET"});
    reg["apps"]["nosecret"] = other;
    std::fs::write(&app.registry, reg.to_string()).unwrap();
    let server = app.start();
    let head = git(&app.work, &["rev-parse", "HEAD"]);
    let body = push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &head);
    let good_sig = sign(WEBHOOK_SECRET.as_bytes(), &body);

    type Case<'a> = (&'a str, Vec<(String, String)>, Vec<u8>);
    let cases: Vec<Case> = vec![
        (
            "missing signature",
            headers(Provider::Forgejo, "push", "d1", "")
                .into_iter()
                .filter(|(k, _)| !k.contains("Signature"))
                .collect(),
            body.clone(),
        ),
        ("empty signature", headers(Provider::Forgejo, "push", "d2", ""), body.clone()),
        ("wrong secret", headers(Provider::Forgejo, "push", "d3", &sign(b"not-the-secret", &body)), body.clone()),
        ("signature of other bytes", headers(Provider::Forgejo, "push", "d4", &good_sig), {
            let v: Value = serde_json::from_slice(&body).unwrap();
            serde_json::to_vec(&v).unwrap() // the same JSON, re-serialized: not the bytes signed
        }),
        (
            "github without sha256= prefix",
            headers(Provider::GitHub, "push", "d5", &good_sig)
                .into_iter()
                .map(|(k, v)| if k == "X-Hub-Signature-256" { (k, good_sig.clone()) } else { (k, v) })
                .collect(),
            body.clone(),
        ),
    ];
    for (what, h, b) in cases {
        let provider =
            if h.iter().any(|(k, _)| k == "X-GitHub-Hook-ID") { Provider::GitHub } else { Provider::Forgejo };
        let (status, v) = send(&server, provider, h, "application/json", b).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized", "{what}");
        assert!(!v.to_string().contains(WEBHOOK_SECRET));
    }
    // An app whose secret is not set refuses everything, even a delivery signed with no key.
    let mut ns: Value = serde_json::from_slice(&body).unwrap();
    ns["repository"]["full_name"] = json!("kua/nosecret");
    let ns = serde_json::to_vec(&ns).unwrap();
    let (status, v) = send(
        &server,
        Provider::Forgejo,
        headers(Provider::Forgejo, "push", "d6", &sign(b"", &ns)),
        "application/json",
        ns,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no app with a webhook secret"), "{v}");

    // Malformed and oversized bodies.
    let (status, _) = deliver_push(&server, Provider::Forgejo, "d7", b"{\"ref\": ".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Over 5 MiB: refused from the Content-Length alone, before any of the body is sent.
    let answer_413 = oversize_answer(&server.url).await;
    assert!(answer_413.starts_with("HTTP/1.1 413"), "{answer_413}");
    assert!(answer_413.contains("payload_too_large"), "{answer_413}");
    for (field, value) in [
        ("after", json!("not-hex")),
        ("after", json!("--upload-pack=touch /tmp/pwned")),
        ("ref", json!("refs/heads/--upload-pack=x")),
    ] {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v[field] = value.clone();
        let (status, answer) = deliver_push(&server, Provider::Forgejo, "d9", serde_json::to_vec(&v).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{field}={value}: {answer}");
    }
    for field in ["ref", "after"] {
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        v.as_object_mut().unwrap().remove(field);
        let (status, answer) = deliver_push(&server, Provider::Forgejo, "d10", serde_json::to_vec(&v).unwrap()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "without {field}: {answer}");
        assert!(answer["error"]["message"].as_str().unwrap().contains(field));
    }

    // None of it queued anything or reached a deploy.
    assert!(server.client.history(&app.name, 10).await.unwrap().deploys.is_empty());
    assert!(server.client.deliveries(&app.name, 10).await.unwrap().deliveries.is_empty());
    assert!(server.log().contains("webhook refused"), "rejections are logged");
    assert!(!server.log().contains(WEBHOOK_SECRET), "the secret is never logged");
}

#[tokio::test(flavor = "multi_thread")]
async fn tags_other_branches_deletions_and_other_events_are_answered_202_and_deploy_nothing() {
    let app = hook_app();
    let server = app.start();
    let head = git(&app.work, &["rev-parse", "HEAD"]);
    let zeros = "0".repeat(40);
    // A deletion moves the branch from a commit (`before`) to nothing; the new-branch push has
    // `before` all zeros, so it cannot stand for one (both zeros is a test delivery).
    let cases = [
        ("forgejo-push-new-branch-codeberg.json", "refs/tags/v1.0", head.as_str(), "tag"),
        ("forgejo-push-new-branch-codeberg.json", "refs/heads/feature", head.as_str(), "not the app's branch"),
        ("forgejo-push-branch-3-commits.json", "refs/heads/main", zeros.as_str(), "deleted"),
    ];
    for (i, (fixture_name, git_ref, after, why)) in cases.iter().enumerate() {
        let (status, v) =
            deliver_push(&server, Provider::Forgejo, &format!("i{i}"), push_body(fixture_name, git_ref, after)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let a = answer(&v);
        assert_eq!(a.results[0].outcome, "ignored", "{git_ref}: {v}");
        assert!(a.results[0].reason.contains(why), "{git_ref}: {v}");
    }
    // GitHub's recorded tag deletion, and Gitea's `delete` event for a branch.
    let mut tag_del: Value = serde_json::from_slice(&fixture("github-push-tag-delete.json")).unwrap();
    tag_del["repository"]["full_name"] = json!(WEBHOOK_REPO);
    let (status, v) = deliver_push(&server, Provider::GitHub, "i3", serde_json::to_vec(&tag_del).unwrap()).await;
    assert_eq!((status, answer(&v).results[0].outcome.as_str()), (StatusCode::ACCEPTED, "ignored"));
    let mut del: Value = serde_json::from_slice(&fixture("gitea-delete-branch.json")).unwrap();
    del["repository"]["full_name"] = json!(WEBHOOK_REPO);
    let del = serde_json::to_vec(&del).unwrap();
    let sig = sign(WEBHOOK_SECRET.as_bytes(), &del);
    let (status, v) =
        send(&server, Provider::Gitea, headers(Provider::Gitea, "delete", "i4", &sig), "application/json", del).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert!(answer(&v).results[0].reason.contains("delete"), "{v}");

    assert!(server.client.history(&app.name, 10).await.unwrap().deploys.is_empty());
    let deliveries = server.client.deliveries(&app.name, 10).await.unwrap().deliveries;
    assert_eq!(deliveries.len(), 5);
    assert!(deliveries.iter().all(|d| d.outcome == "ignored" && d.deploy_id.is_none()));
    assert_eq!(deliveries[0].event, "delete");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_test_delivery_from_an_empty_or_a_full_repository_is_ignored_as_a_test_not_a_deletion() {
    let app = hook_app();
    let server = app.start();
    // Gitea's "Test Delivery" (routers/web/repo/setting/webhook.go, TestWebhook) on a repository
    // without commits: a push to the default branch whose before, after and only commit are a
    // made-up commit with the zero id, by the ghost user. Built on the recorded Gitea push.
    let zero = "0".repeat(40);
    let mut v: Value = serde_json::from_slice(&fixture("gitea-push-first-push-signed.json")).unwrap();
    let fake = json!({
        "id": zero,
        "message": "This is a fake commit",
        "url": format!("http://localhost:3000/{WEBHOOK_REPO}/commit/{zero}"),
        "author": {"name": "Ghost", "email": "", "username": ""},
        "committer": {"name": "Ghost", "email": "", "username": ""},
        "verification": null,
        "timestamp": "0001-01-01T00:00:00Z",
        "added": null,
        "removed": null,
        "modified": null
    });
    v["repository"]["full_name"] = json!(WEBHOOK_REPO);
    v["ref"] = json!("refs/heads/main");
    v["before"] = json!(zero);
    v["after"] = json!(zero);
    v["compare_url"] = json!(format!("http://localhost:3000/{WEBHOOK_REPO}/compare/{zero}...{zero}"));
    v["commits"] = json!([fake]);
    v["total_commits"] = json!(1);
    v["head_commit"] = fake;
    let body = serde_json::to_vec(&v).unwrap();
    let sig = sign(WEBHOOK_SECRET.as_bytes(), &body);
    let (status, v) =
        send(&server, Provider::Gitea, headers(Provider::Gitea, "push", "t1", &sig), "application/json", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let a = answer(&v);
    assert_eq!(a.results[0].outcome, "ignored", "{v}");
    assert!(a.results[0].reason.contains("test delivery"), "{v}");
    assert!(a.results[0].reason.contains("empty repository"), "{v}");
    assert!(!a.results[0].reason.contains("delete"), "{v}");

    // Forgejo's test delivery of a repository with commits sends its latest commit as both
    // `before` and `after`: the branch did not move, nothing is deployed either.
    let head = git(&app.work, &["rev-parse", "HEAD"]);
    let mut v: Value =
        serde_json::from_slice(&push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &head)).unwrap();
    v["before"] = json!(head);
    let (status, v) = deliver_push(&server, Provider::Forgejo, "t2", serde_json::to_vec(&v).unwrap()).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let a = answer(&v);
    assert_eq!(a.results[0].outcome, "ignored", "{v}");
    assert!(a.results[0].reason.contains("test delivery") && a.results[0].reason.contains("did not move"), "{v}");

    assert!(server.client.history(&app.name, 10).await.unwrap().deploys.is_empty());
    let deliveries = server.client.deliveries(&app.name, 10).await.unwrap().deliveries;
    assert_eq!(deliveries.len(), 2);
    assert_eq!((deliveries[1].outcome.as_str(), deliveries[1].provider.as_str()), ("ignored", "gitea"));
    assert!(deliveries.iter().all(|d| d.outcome == "ignored" && d.reason.contains("test delivery")), "{deliveries:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn the_recorded_gitea_delivery_verifies_byte_for_byte_with_its_known_signature() {
    let body = fixture("gitea-push-first-push-signed.json");
    let repo = serde_json::from_slice::<Value>(&body).unwrap()["repository"]["full_name"].as_str().unwrap().to_owned();
    let app = TestApp::new(AppOptions {
        webhook: Some(json!({"repository": repo, "secret_env": "KUA_TEST_GITEA_SECRET"})),
        ..AppOptions::default()
    });
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_kua-deploy"));
    cmd.args(["serve", "--config", app.registry.to_str().unwrap(), "--state-dir", app.state.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("KUA_ADMIN_TOKEN", crate::support::TOKEN)
        .env("KUA_TEST_GITEA_SECRET", "IsWishesWereHorsesWedAllBeEatingSteak!");
    let server = Server::spawn(cmd);
    let sig = "60fe446c74fa0cb9474f98cc557db79e10c7aaf22cf324ad65239600b9e4d915";
    let (status, v) =
        send(&server, Provider::Gitea, headers(Provider::Gitea, "push", "g1", sig), "application/json", body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    // Its ref is the recorded repository's branch, not this app's.
    assert_eq!(answer(&v).results[0].outcome, "ignored", "{v}");
}

#[tokio::test(flavor = "multi_thread")]
async fn redeliveries_and_replays_deploy_nothing_new_until_the_deploy_failed() {
    let app = hook_app();
    let server = app.start();
    let v2 = app.push("v2", Behaviour::Serve);
    let body = push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &v2);
    let (_, v) = deliver_push(&server, Provider::Forgejo, "delivery-1", body.clone()).await;
    let first = answer(&v).results[0].deploy_id.clone().unwrap();

    // The same delivery id again, at once (the deploy is still live) and after it succeeded.
    let (status, v) = deliver_push(&server, Provider::Forgejo, "delivery-1", body.clone()).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(
        (answer(&v).results[0].outcome.as_str(), answer(&v).results[0].deploy_id.clone()),
        ("duplicate", Some(first.clone()))
    );
    assert_eq!(server.wait_end(&first).await.phase, Phase::Succeeded);
    let (_, v) = deliver_push(&server, Provider::Forgejo, "delivery-1", body.clone()).await;
    assert_eq!(answer(&v).results[0].deploy_id, Some(first.clone()));
    // Forgejo's replay: the same payload under a new delivery id.
    let (_, v) = deliver_push(&server, Provider::Forgejo, "delivery-2", body.clone()).await;
    assert_eq!(
        (answer(&v).results[0].outcome.as_str(), answer(&v).results[0].deploy_id.clone()),
        ("duplicate", Some(first.clone()))
    );
    assert_eq!(server.client.history(&app.name, 10).await.unwrap().deploys.len(), 1);

    // A commit whose deploy failed is deployed again by a redelivery, even under the same delivery
    // id (GitHub's "Redeliver" keeps it).
    let broken = app.push("v3", Behaviour::BrokenBuild);
    let body = push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &broken);
    let (_, v) = deliver_push(&server, Provider::Forgejo, "delivery-3", body.clone()).await;
    let failed = answer(&v).results[0].deploy_id.clone().unwrap();
    assert_eq!(server.wait_end(&failed).await.phase, Phase::Failed);
    let (_, v) = deliver_push(&server, Provider::Forgejo, "delivery-3", body).await;
    let again = answer(&v);
    assert_eq!(again.results[0].outcome, "queued", "{v}");
    assert_ne!(again.results[0].deploy_id, Some(failed));
    assert_eq!(server.wait_end(again.results[0].deploy_id.as_ref().unwrap()).await.phase, Phase::Failed);

    let outcomes: Vec<String> =
        server.client.deliveries(&app.name, 10).await.unwrap().deliveries.into_iter().map(|d| d.outcome).collect();
    assert_eq!(outcomes, ["queued", "queued", "duplicate", "duplicate", "duplicate", "queued"]);
    assert_eq!(app.fetch().as_deref(), Some("v2"));

    // A push back to v2 after another commit succeeded is a revert, not a replay: it deploys.
    let v4 = app.push("v4", Behaviour::Serve);
    let (_, v) = deliver_push(
        &server,
        Provider::Forgejo,
        "delivery-5",
        push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &v4),
    )
    .await;
    assert_eq!(server.wait_end(answer(&v).results[0].deploy_id.as_ref().unwrap()).await.phase, Phase::Succeeded);
    git(&app.work, &["push", "--quiet", "--force", "origin", &format!("{v2}:refs/heads/main")]);
    let (_, v) = deliver_push(
        &server,
        Provider::Forgejo,
        "delivery-6",
        push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &v2),
    )
    .await;
    let revert = answer(&v);
    assert_eq!(revert.results[0].outcome, "queued", "{v}");
    assert_eq!(server.wait_end(revert.results[0].deploy_id.as_ref().unwrap()).await.phase, Phase::Succeeded);
    assert_eq!(app.fetch().as_deref(), Some("v2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_push_of_the_commit_an_api_deploy_already_made_running_is_a_duplicate() {
    let app = hook_app();
    let server = app.start();
    let v2 = app.push("v2", Behaviour::Serve);
    // No commit: the deploy resolves the branch tip itself.
    let api = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap().deploy_id;
    let d = server.wait_end(&api).await;
    assert_eq!((d.phase, d.commit.as_ref().map(|c| c.as_str())), (Phase::Succeeded, Some(v2.as_str())), "{d:#?}");

    let (status, v) = deliver_push(
        &server,
        Provider::Forgejo,
        &uuid_hex(),
        push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &v2),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let a = answer(&v);
    assert_eq!((a.results[0].outcome.as_str(), a.results[0].deploy_id.as_ref()), ("duplicate", Some(&api)), "{v}");
    assert!(a.results[0].reason.contains("already runs this commit"), "{v}");
    let history = server.client.history(&app.name, 10).await.unwrap().deploys;
    assert_eq!(history.len(), 1, "nothing queued: {history:#?}");
    let deliveries = server.client.deliveries(&app.name, 10).await.unwrap().deliveries;
    assert_eq!((deliveries[0].outcome.as_str(), deliveries[0].deploy_id.as_ref()), ("duplicate", Some(&api)));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_burst_of_pushes_during_a_slow_build_coalesces_into_one_deploy_of_the_newest_commit() {
    let app = hook_app();
    let server = app.start();
    let slow = app.push("slow", Behaviour::SlowBuild(6));
    let (_, v) = deliver_push(
        &server,
        Provider::Forgejo,
        &uuid_hex(),
        push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &slow),
    )
    .await;
    let running = answer(&v).results[0].deploy_id.clone().unwrap();
    server.wait_for(&running, Duration::from_secs(30), |d| d.phase == Phase::Running).await;

    let mut queued_ids = Vec::new();
    let mut newest = String::new();
    for i in 0..5 {
        newest = app.push(&format!("burst-{i}"), Behaviour::Serve);
        let (status, v) = deliver_push(
            &server,
            Provider::Forgejo,
            &uuid_hex(),
            push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &newest),
        )
        .await;
        assert_eq!(status, StatusCode::ACCEPTED, "{v}");
        let a = answer(&v);
        assert_eq!(a.results[0].outcome, "queued");
        queued_ids.push(a.results[0].deploy_id.clone().unwrap());
        // At no time is more than one deploy queued behind the running one.
        let history = server.client.history(&app.name, 50).await.unwrap().deploys;
        assert!(history.iter().filter(|d| d.phase == Phase::Queued).count() <= 1, "{history:#?}");
    }
    // An API trigger meanwhile is refused: the app is busy.
    let err = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Some("deploy_in_progress"));

    assert_eq!(server.wait_end(&running).await.phase, Phase::Succeeded);
    let last = queued_ids.last().unwrap().clone();
    let d = server.wait_end(&last).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.commit.as_ref().map(|c| c.as_str()), Some(newest.as_str()));
    assert_eq!(app.fetch().as_deref(), Some("burst-4"));
    // Each replaced deploy ended cancelled, naming the one that replaced it.
    for pair in queued_ids.windows(2) {
        let d = server.client.deploy_status(&pair[0]).await.unwrap();
        assert_eq!(d.phase, Phase::Cancelled);
        assert_eq!(d.superseded_by.as_ref(), Some(&pair[1]));
        assert!(d.error.as_deref().unwrap().contains(pair[1].as_str()));
    }
    let all = server.client.history(&app.name, 50).await.unwrap().deploys;
    assert_eq!(all.iter().filter(|d| d.phase == Phase::Succeeded).count(), 2);
}

/// The project of GitLab's documented push as `gitlab-push.json` has it: in a subgroup.
const GITLAB_REPO: &str = "mike/web/diaspora";

fn gitlab_app() -> TestApp {
    TestApp::new(AppOptions {
        webhook: Some(json!({"repository": GITLAB_REPO, "secret_file": "SECRET_FILE"})),
        ..AppOptions::default()
    })
}

/// GitLab's documented push (or tag push), pointed at this test's project, ref and commit.
fn gitlab_body(fixture_name: &str, git_ref: &str, after: &str) -> Value {
    let mut v: Value = serde_json::from_slice(&fixture(fixture_name)).unwrap();
    v["project"]["path_with_namespace"] = json!(GITLAB_REPO);
    v["ref"] = json!(git_ref);
    v["after"] = json!(after);
    v["checkout_sha"] = json!(after);
    v
}

/// A GitLab delivery with the app's secret token, the event UUID `uuid` and `extra` headers.
async fn deliver_gitlab(
    server: &Server,
    event: &str,
    uuid: &str,
    extra: &[(&str, &str)],
    body: &Value,
) -> (StatusCode, Value) {
    let mut h = headers(Provider::GitLab, event, uuid, WEBHOOK_SECRET);
    h.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    send(server, Provider::GitLab, h, "application/json", serde_json::to_vec(body).unwrap()).await
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gitlab_push_from_a_nested_group_deploys_exactly_its_after_and_a_redelivery_is_a_duplicate() {
    let app = gitlab_app();
    let server = app.start();
    let v2 = app.push("v2", Behaviour::Serve);
    app.push("v3", Behaviour::Serve);
    let body = gitlab_body("gitlab-push.json", "refs/heads/main", &v2);
    let uuid = uuid::Uuid::new_v4().to_string();
    let (status, v) = deliver_gitlab(&server, "Push Hook", &uuid, &[], &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let a = answer(&v);
    assert_eq!((a.provider.as_str(), a.event.as_str(), a.delivery.as_deref()), ("gitlab", "Push Hook", Some(&*uuid)));
    assert_eq!(a.results[0].outcome, "queued", "{v}");
    let id = a.results[0].deploy_id.clone().unwrap();

    // "Resend request": the same event UUID is recognised as the delivery already accepted.
    let (status, v) = deliver_gitlab(&server, "Push Hook", &uuid, &[], &body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    let again = &answer(&v).results[0];
    assert_eq!((again.outcome.as_str(), again.deploy_id.as_ref()), ("duplicate", Some(&id)), "{v}");
    assert!(again.reason.contains("this delivery id was accepted before"), "{v}");

    let d = server.wait_end(&id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert_eq!(d.commit.as_ref().map(|c| c.as_str()), Some(v2.as_str()));
    assert_eq!(d.trigger.source, kua_deploy::model::TriggerSource::Webhook);
    assert_eq!(app.fetch().as_deref(), Some("v2"));

    // Where GitLab sends an Idempotency-Key (kept across retries), it is the delivery id: a retry
    // under a new event UUID is recognised by it.
    let key = uuid::Uuid::new_v4().to_string();
    let (_, v) = deliver_gitlab(&server, "Push Hook", &uuid_hex(), &[("Idempotency-Key", &key)], &body).await;
    assert_eq!((answer(&v).delivery.as_deref(), answer(&v).results[0].outcome.as_str()), (Some(&*key), "duplicate"));
    let (_, v) = deliver_gitlab(&server, "Push Hook", &uuid_hex(), &[("Idempotency-Key", &key)], &body).await;
    assert!(answer(&v).results[0].reason.contains("this delivery id was accepted before"), "{v}");

    assert_eq!(server.client.history(&app.name, 10).await.unwrap().deploys.len(), 1);
    let deliveries = server.client.deliveries(&app.name, 10).await.unwrap().deliveries;
    let seen: Vec<(&str, Option<&str>)> = deliveries.iter().map(|d| (d.outcome.as_str(), d.id.as_deref())).collect();
    let (uuid, key) = (Some(uuid.as_str()), Some(key.as_str()));
    assert_eq!(seen, [("duplicate", key), ("duplicate", key), ("duplicate", uuid), ("queued", uuid)]);
    assert!(deliveries.iter().all(|d| d.provider == "gitlab" && d.repository == GITLAB_REPO), "{deliveries:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_tag_pushes_other_branches_deletions_and_other_events_are_answered_202_and_deploy_nothing() {
    let app = gitlab_app();
    let server = app.start();
    let head = git(&app.work, &["rev-parse", "HEAD"]);
    // A branch deletion: `after` all zeros, `checkout_sha` null, no commits.
    let mut deletion = gitlab_body("gitlab-push.json", "refs/heads/main", &"0".repeat(40));
    deletion["checkout_sha"] = Value::Null;
    deletion["commits"] = json!([]);
    deletion["total_commits_count"] = json!(0);
    let merge_request = json!({
        "object_kind": "merge_request",
        "event_type": "merge_request",
        "project": {"path_with_namespace": GITLAB_REPO},
        "object_attributes": {"source_branch": "feature", "target_branch": "main", "action": "open"}
    });
    let cases = [
        ("Tag Push Hook", gitlab_body("gitlab-tag-push.json", "refs/tags/v1.0.0", &head), "tag v1.0.0 does not deploy"),
        ("Push Hook", gitlab_body("gitlab-push.json", "refs/heads/feature", &head), "not the app's branch main"),
        ("Push Hook", deletion, "branch main was deleted"),
        ("Merge Request Hook", merge_request, "event \"Merge Request Hook\" does not deploy"),
    ];
    for (event, body, why) in &cases {
        let (status, v) = deliver_gitlab(&server, event, &uuid_hex(), &[], body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{event}: {v}");
        let a = answer(&v);
        assert_eq!(a.results[0].outcome, "ignored", "{event}: {v}");
        assert!(a.results[0].reason.contains(why), "{event}: {v}");
    }

    assert!(server.client.history(&app.name, 10).await.unwrap().deploys.is_empty());
    let deliveries = server.client.deliveries(&app.name, 10).await.unwrap().deliveries;
    assert_eq!(deliveries.len(), 4);
    assert!(deliveries.iter().all(|d| d.outcome == "ignored" && d.deploy_id.is_none() && d.provider == "gitlab"));
    assert_eq!((deliveries[0].event.as_str(), deliveries[3].event.as_str()), ("Merge Request Hook", "Tag Push Hook"));
}

#[tokio::test(flavor = "multi_thread")]
async fn gitlab_deliveries_without_the_right_token_are_refused_and_queue_nothing() {
    let app = gitlab_app();
    // A second project whose secret variable is not set: no secret configured.
    let mut reg: Value = serde_json::from_str(&std::fs::read_to_string(&app.registry).unwrap()).unwrap();
    let mut other = reg["apps"]["hello"].clone();
    other["project"] = json!(format!("{}-x", app.project));
    other["webhook"] = json!({"repository": "mike/web/nosecret", "secret_env": "KUA_TEST_UNSET_SECRET"});
    reg["apps"]["nosecret"] = other;
    std::fs::write(&app.registry, reg.to_string()).unwrap();
    let server = app.start();
    let head = git(&app.work, &["rev-parse", "HEAD"]);
    let body = serde_json::to_vec(&gitlab_body("gitlab-push.json", "refs/heads/main", &head)).unwrap();
    let with_token = |token: &str| headers(Provider::GitLab, "Push Hook", &uuid_hex(), token);

    type Case<'a> = (&'a str, Vec<(String, String)>, &'a str);
    let cases: Vec<Case> = vec![
        (
            "missing token",
            with_token("").into_iter().filter(|(k, _)| k != "X-Gitlab-Token").collect(),
            "missing or empty x-gitlab-token",
        ),
        ("empty token", with_token(""), "missing or empty x-gitlab-token"),
        ("wrong token", with_token("not-the-secret"), "token does not match"),
        ("the token and one byte more", with_token(&format!("{WEBHOOK_SECRET}x")), "token does not match"),
        ("a prefix of the token", with_token(&WEBHOOK_SECRET[..10]), "token does not match"),
        ("a signature instead", with_token(&sign(WEBHOOK_SECRET.as_bytes(), &body)), "token does not match"),
    ];
    for (what, h, why) in cases {
        let (status, v) = send(&server, Provider::GitLab, h, "application/json", body.clone()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{what}: {v}");
        assert_eq!(v["error"]["code"], "unauthorized", "{what}");
        assert!(v["error"]["message"].as_str().unwrap().contains(why), "{what}: {v}");
        assert!(!v.to_string().contains(WEBHOOK_SECRET), "{what}");
    }
    // A project without a secret refuses everything, even its own right token.
    let mut ns: Value = serde_json::from_slice(&body).unwrap();
    ns["project"]["path_with_namespace"] = json!("mike/web/nosecret");
    let (status, v) = deliver_gitlab(&server, "Push Hook", &uuid_hex(), &[], &ns).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("no app with a webhook secret"), "{v}");
    // A GitLab delivery sent to the Forgejo URL has none of Forgejo's headers.
    let mut req = server.http().post(format!("{}/webhook/forgejo", server.url)).body(body.clone());
    for (k, v) in with_token(WEBHOOK_SECRET) {
        req = req.header(k, v);
    }
    assert_eq!(req.send().await.unwrap().status(), StatusCode::BAD_REQUEST);

    assert!(server.client.history(&app.name, 10).await.unwrap().deploys.is_empty());
    assert!(server.client.deliveries(&app.name, 10).await.unwrap().deliveries.is_empty());
    assert!(server.log().contains("webhook refused"), "rejections are logged");
    assert!(!server.log().contains(WEBHOOK_SECRET), "the token is never logged");
}
