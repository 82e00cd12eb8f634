//! The web page in a real browser: headless Chromium driven by selenium (tests/integration/webui.py)
//! against the real server and a real deploy; and the checks a browser cannot make (a form posted
//! without its CSRF token, the viewer token on the API).

use std::process::Command;
use std::time::Duration;

use crate::support::*;

const VIEWER: &str = "test-viewer-token-0123456789abcd";

fn server_with_viewer(app: &TestApp) -> Server {
    let mut cmd = Server::command(&app.registry, &app.state);
    cmd.env("KUA_VIEWER_TOKEN", VIEWER);
    Server::spawn(cmd)
}

#[tokio::test(flavor = "multi_thread")]
async fn in_chromium_an_admin_logs_in_sees_the_apps_releases_one_live_and_a_viewer_is_refused() {
    for tool in ["/usr/bin/chromium", "/usr/bin/chromedriver"] {
        assert!(std::path::Path::new(tool).exists(), "{tool} is missing: run scripts/install-deps.sh");
    }
    let selenium = Command::new("python3").args(["-c", "import selenium"]).status().unwrap();
    assert!(selenium.success(), "python3 selenium is missing: run scripts/install-deps.sh");
    let app = TestApp::new(AppOptions::default());
    let server = server_with_viewer(&app);
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/webui-screenshots");
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/integration/webui.py");
    let out = tokio::time::timeout(
        Duration::from_secs(240),
        tokio::process::Command::new("python3")
            .arg(&script)
            .args([&server.url, TOKEN, VIEWER, shots.to_str().unwrap()])
            .output(),
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
