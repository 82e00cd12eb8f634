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

fn kua(args: &[&str], url: &str) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
        .args(args)
        .args(["--url", url])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .output()
        .expect("run kua-deploy");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_gated_release_exits_3_and_is_finished_with_approve_and_logs_follow() {
    let app = TestApp::new(AppOptions {
        migrations: Some(serde_json::json!({"paths": ["migrations/"], "policy": "block"})),
        ..AppOptions::default()
    });
    let server = app.start();
    let (code, text) = release_app(app.dir.path(), &server.url, &["hello"]);
    assert_eq!(code, 0, "{text}");

    std::fs::write(app.work.join("migrations/0002.sql"), "select 2;\n").unwrap();
    app.push("v2", Behaviour::Serve);
    let (code, text) = release_app(app.dir.path(), &server.url, &["hello", "--reason", "gate test"]);
    assert_eq!(code, 3, "{text}");
    let id = text
        .split("kua-deploy approve ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no `kua-deploy approve <id>` hint in: {text}"))
        .to_owned();

    let (code, text) = kua(&["approve", &id], &server.url);
    assert_eq!(code, 0, "{text}");
    let (code, text) = kua(&["logs", &id, "--follow"], &server.url);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("step verify succeeded"), "{text}");
    assert_eq!(app.fetch().as_deref(), Some("v2"));

    // Approving again, or cancelling what ended, is refused with exit 1.
    let (code, text) = kua(&["approve", &id], &server.url);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("not awaiting approval"), "{text}");
    let (code, text) = kua(&["cancel", &id], &server.url);
    assert_eq!(code, 1, "{text}");
    let (code, text) = kua(&["history", "hello"], &server.url);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("succeeded"), "{text}");
}
