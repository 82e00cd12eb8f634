//! The client binaries as a user runs them: `release-app` and `kua-deploy release`, their output
//! and exit statuses.

use std::process::Command;

use crate::support::{AppOptions, Behaviour, TestApp, TOKEN};

fn release_app(dir: &std::path::Path, url: &str, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_release-app"))
        .args(args)
        .args(["--url", url])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .env_remove("KUA_DEPLOY_URL")
        .current_dir(dir)
        .output()
        .expect("run release-app");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn release_app_follows_a_deploy_to_the_end_and_exits_with_its_outcome() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    let cwd = app.dir.path().join("app-repo");
    std::fs::create_dir_all(&cwd).unwrap();

    // No APP and no kua.json: a usage error that says how to fix it.
    let (code, text) = release_app(&cwd, &server.url, &[]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("kua.json"), "{text}");

    // The app named by kua.json is released; plain lines (not a terminal) name every step.
    std::fs::write(cwd.join("kua.json"), r#"{"name": "hello", "mode": "direct", "server": "local"}"#).unwrap();
    let (code, text) = release_app(&cwd, &server.url, &[]);
    assert_eq!(code, 0, "{text}");
    for step in ["git_pull", "migration_gate", "build", "recreate", "verify", "succeeded"] {
        assert!(text.contains(step), "{step} missing from: {text}");
    }
    assert_eq!(app.fetch().as_deref(), Some("v1"));

    // A deploy that does not succeed exits 1.
    app.push("v2", Behaviour::BrokenBuild);
    let (code, text) = release_app(&cwd, &server.url, &["hello"]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("failed"), "{text}");

    // Could not start it: an unknown app, or nobody listening.
    let (code, text) = release_app(&cwd, &server.url, &["nope"]);
    assert_eq!(code, 5, "{text}");
    let (code, text) = release_app(&cwd, "http://127.0.0.1:9", &["hello", "--timeout", "2s"]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains("cannot reach"), "{text}");
}
