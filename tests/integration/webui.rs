//! The web page in a real browser: headless Chromium driven by selenium (tests/integration/webui.py)
//! against the real server and a real deploy; and the checks a browser cannot make (a form posted
//! without its CSRF token, the viewer token on the API).

use std::process::Command;
use std::time::Duration;

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::Phase;

use crate::support::*;

const VIEWER: &str = "test-viewer-token-0123456789abcd";

fn server_with_viewer(app: &TestApp) -> Server {
    let mut cmd = Server::command(&app.registry, &app.state);
    cmd.env("KUA_VIEWER_TOKEN", VIEWER);
    Server::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_an_admin_logs_in_sees_the_apps_releases_one_live_and_a_viewer_is_refused() {
    let app = TestApp::new(AppOptions::default());
    let server = server_with_viewer(&app);
    browser(&server, &["release", &server.url, TOKEN, VIEWER]).await;
}

/// Runs tests/integration/webui.py with `args` (screenshots under target/webui-screenshots) and
/// fails with its output, and the server's log, unless every check passed.
async fn browser(server: &Server, args: &[&str]) {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(std::path::Path::new(tool).exists(), "{tool} is missing: run scripts/install-deps.sh");
    }
    let selenium = Command::new("python3").args(["-c", "import selenium"]).status().unwrap();
    assert!(selenium.success(), "python3 selenium is missing: run scripts/install-deps.sh");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/webui-screenshots");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/webui.py");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("python3").arg(&script).args(args).arg(&shots).output(),
    )
    .await
    .expect("the browser test took over 4 minutes")
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success(), "the browser test failed:\n{stdout}\n{stderr}\nserver log:\n{}", server.log());
    assert!(stdout.contains("all checks passed"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_an_admin_approves_a_gated_migration_and_cancels_a_queued_and_a_running_deploy() {
    let app = TestApp::new(AppOptions {
        migrations: Some(serde_json::json!({"paths": ["migrations/"], "policy": "block"})),
        webhook: Some(serde_json::json!({"repository": WEBHOOK_REPO, "secret_file": "SECRET_FILE"})),
        ..AppOptions::default()
    });
    let server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    std::fs::write(app.work.join("migrations/0002_add.sql"), "alter table t add c int;\n").unwrap();
    app.push("v2", Behaviour::Serve);
    let gated = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&gated.deploy_id).await.phase, Phase::AwaitingApproval);
    // The next release (from the page) builds for a minute: long enough to cancel it there.
    app.push("v3", Behaviour::SlowBuild(60));
    browser(&server, &["gate", &server.url, TOKEN, gated.deploy_id.as_str()]).await;

    // A push during a slow build waits behind it, queued: the page cancels that one first, then
    // the build itself.
    app.push("v4", Behaviour::SlowBuild(60));
    let running = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&running.deploy_id, Duration::from_secs(30), |d| d.phase == Phase::Running).await;
    let v5 = app.push("v5", Behaviour::Serve);
    let body = crate::webhook::push_body("forgejo-push-branch-3-commits.json", "refs/heads/main", &v5);
    let (status, v) = crate::webhook::deliver_push(&server, crate::webhook::Provider::Forgejo, &uuid_hex(), body).await;
    assert_eq!(status, 202, "{v}");
    let queued = v["results"][0]["deploy_id"].as_str().expect("the push queued a deploy").to_owned();
    assert_eq!(v["results"][0]["outcome"], "queued", "{v}");
    browser(&server, &["queued", &server.url, TOKEN, &format!("{}:{queued}", running.deploy_id)]).await;
    for id in [running.deploy_id.as_str(), queued.as_str()] {
        let d = server.client.deploy_status(&kua_deploy::model::DeployId::parse(id).unwrap()).await.unwrap();
        assert_eq!(d.phase, Phase::Cancelled, "{d:#?}");
    }
    assert_eq!(app.fetch().as_deref(), Some("v2"), "the app no longer serves what it ran");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_form_posted_without_its_csrf_token_is_refused_and_the_viewer_token_cannot_post_to_the_api() {
    let app = TestApp::new(AppOptions::default());
    let server = server_with_viewer(&app);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = http.post(format!("{}/login", server.url)).form(&[("token", TOKEN)]).send().await.unwrap();
    assert_eq!(login.status(), 303, "{:?}", login.text().await);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"), "{cookie}");
    // Over plain HTTP a `Secure` cookie would never come back: the login would not hold.
    assert!(!cookie.contains("Secure"), "{cookie}");
    assert!(cookie.contains("Max-Age="), "the session never expires: {cookie}");
    let session = cookie.split(';').next().unwrap().to_owned();
    let page = http.get(format!("{}/", server.url)).header("cookie", &session).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(!page.text().await.unwrap().contains(TOKEN), "the token is in the page");
    for path in ["/apps/hello/release", "/logout"] {
        let r = http
            .post(format!("{}{path}", server.url))
            .header("cookie", &session)
            .form(&[("commit", "")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path} without a CSRF token");
        let r = http
            .post(format!("{}{path}", server.url))
            .header("cookie", &session)
            .form(&[("csrf", "wrong")])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{path} with a wrong CSRF token");
    }
    let r = http.post(format!("{}/api/v1/apps/hello/deploy", server.url)).bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(r.status(), 403, "the viewer token released");
    let r = http.get(format!("{}/api/v1/apps", server.url)).bearer_auth(VIEWER).send().await.unwrap();
    assert_eq!(r.status(), 200, "the viewer token cannot read");
    assert!(server.client.history(&app.name, 5).await.unwrap().deploys.is_empty(), "something was deployed");
}

#[tokio::test(flavor = "multi_thread")]
async fn under_tls_the_session_cookie_is_secure_and_the_page_answers_over_https() {
    let pki = Pki::new();
    let app = TestApp::new(AppOptions::default());
    let server = crate::tls::start_https(&app, &pki);
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca).unwrap()).unwrap();
    let http = reqwest::Client::builder()
        .add_root_certificate(ca)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let login = http.post(format!("{}/login", server.url)).form(&[("token", TOKEN)]).send().await.unwrap();
    assert_eq!(login.status(), 303, "{:?}", login.text().await);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    let attributes: Vec<&str> = cookie.split(';').map(str::trim).collect();
    for wanted in ["Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(attributes.contains(&wanted), "{wanted} is missing: {cookie}");
    }
    let session = attributes[0].to_owned();
    let page = http.get(format!("{}/", server.url)).header("cookie", &session).send().await.unwrap();
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("hello"), "the overview over HTTPS lacks the app");
}

/// The overview's row of `app`, as the page renders it now, with the session `cookie`.
async fn overview_row(server: &Server, http: &reqwest::Client, cookie: &str, app: &str) -> String {
    let page = http.get(format!("{}/", server.url)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let html = page.text().await.unwrap();
    let start = html.find(&format!("data-app=\"{app}\"")).unwrap_or_else(|| panic!("no row for {app}: {html}"));
    let row = &html[start..];
    row[..row.find("</tr>").unwrap()].to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_container_that_stops_shows_on_the_overview_as_unhealthy_and_drifted_without_anyone_asking() {
    let app = TestApp::new(AppOptions::default());
    let mut cmd = Server::command(&app.registry, &app.state);
    cmd.args(["--runtime-check-every", "1"]);
    let server = Server::spawn(cmd);
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = http.post(format!("{}/login", server.url)).form(&[("token", TOKEN)]).send().await.unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();

    // The stream of an ended deploy sends its body once, then says it ended (so the page stops
    // listening instead of reconnecting), then closes.
    let get = |path: String| http.get(format!("{}{path}", server.url)).header("cookie", &cookie).send();
    let events = get(format!("/events/deploys/{}", first.deploy_id)).await.unwrap();
    let text =
        tokio::time::timeout(Duration::from_secs(10), events.text()).await.expect("the stream never closed").unwrap();
    assert_eq!(text.matches("event: body").count(), 1, "{text}");
    assert!(text.trim_end().ends_with("event: end\ndata: ended"), "{text}");
    // A confirmation page whose app is not a name is refused, not turned into a form action.
    let confirm =
        get(format!("/confirm?action=release&app=x/../../deploys/{}/cancel%3F", first.deploy_id)).await.unwrap();
    assert_eq!(confirm.status(), 400);

    let until = std::time::Instant::now() + Duration::from_secs(20);
    let mut row = overview_row(&server, &http, &cookie, "hello").await;
    while !(row.contains(">healthy<") && row.contains(">in sync<")) {
        assert!(std::time::Instant::now() < until, "the monitor never said healthy and in sync: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        row = overview_row(&server, &http, &cookie, "hello").await;
    }

    // Nobody opens the app page or asks for its runtime status: the monitor notices by itself.
    let (container, _) = app.web_containers().into_iter().next().expect("the app runs");
    sh(app.dir.path(), &["docker", "stop", "--time", "1", &container]);
    let until = std::time::Instant::now() + Duration::from_secs(20);
    while !(row.contains(">unhealthy<") && row.contains(">drifted<")) {
        assert!(std::time::Instant::now() < until, "the stopped container never showed: {row}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        row = overview_row(&server, &http, &cookie, "hello").await;
    }
}
