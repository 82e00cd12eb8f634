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
async fn in_chromium_an_admin_sees_the_pending_migrations_approves_them_and_cancels_a_deploy_in_progress() {
    let app = TestApp::new(AppOptions {
        migrations: Some(serde_json::json!({"paths": ["migrations/"], "policy": "block"})),
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
