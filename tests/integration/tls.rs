//! HTTPS end to end: the real server with `--tls-cert/--tls-key` (a CA and a certificate for
//! `localhost`/127.0.0.1 made with `openssl` here), the client binaries reaching it by a name in
//! `servers.json`, an untrusted certificate, plain HTTP on the HTTPS port, `health`, and the
//! handshake's timeout.

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kua_deploy::cli::client::{Client, ClientError};
use kua_deploy::cli::tls::Trust;
use serde_json::json;

use crate::support::{AppOptions, Pki, Server, TestApp, TOKEN};

/// The app's server over HTTPS; its `client` trusts the test CA.
pub(crate) fn start_https(app: &TestApp, pki: &Pki) -> Server {
    let mut cmd = Server::command(&app.registry, &app.state);
    cmd.args(["--tls-cert", pki.cert.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()]);
    let mut server = Server::spawn(cmd);
    assert!(server.url.starts_with("https://127.0.0.1:"), "the listen line must say https: {}", server.url);
    server.client = Client::with_trust(&server.url, TOKEN, &Trust::Roots { ca_file: Some(pki.ca.clone()) }).unwrap();
    server
}

/// A directory like an app's repo: `kua.json` naming server `bruno`, and a `servers.json` (in a
/// config dir of its own) whose `bruno` is `url`, with the token and the CA given as paths
/// relative to it. Returns the repo dir and the servers file.
fn client_world(root: &Path, url: &str, ca: &Path) -> (PathBuf, PathBuf) {
    let repo = root.join("repo");
    let config = root.join("config");
    std::fs::create_dir_all(&repo).unwrap();
    std::fs::create_dir_all(config.join("certs")).unwrap();
    std::fs::write(repo.join("kua.json"), r#"{"name": "hello", "mode": "direct", "server": "bruno"}"#).unwrap();
    std::fs::write(config.join("bruno.token"), format!("{TOKEN}\n")).unwrap();
    std::fs::copy(ca, config.join("certs/ca.pem")).unwrap();
    let servers = config.join("servers.json");
    let entry = json!({"url": url, "token_file": "bruno.token", "ca_file": "certs/ca.pem"});
    std::fs::write(&servers, json!({"default": "bruno", "servers": {"bruno": entry}}).to_string()).unwrap();
    (repo, servers)
}

/// Runs one of the binaries in `dir` with none of the client variables of the environment it was
/// started from, only `env`; its exit status and all it printed.
fn run(bin: &str, dir: &Path, args: &[&str], env: &[(&str, &OsStr)]) -> (i32, String) {
    let mut cmd = Command::new(bin);
    cmd.args(args).current_dir(dir);
    for var in [
        "KUA_ADMIN_TOKEN",
        "KUA_ADMIN_TOKEN_FILE",
        "KUA_DEPLOY_URL",
        "KUA_SERVER",
        "KUA_SERVERS",
        "KUA_CA_FILE",
        "KUA_STATE_DIR",
        "KUA_LISTEN",
        "KUA_TLS_CERT",
        "KUA_HEALTH_URL",
    ] {
        cmd.env_remove(var);
    }
    // A developer's own servers.json stays out of it.
    cmd.env("XDG_CONFIG_HOME", dir.join("no-config"));
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("run {bin}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

const RELEASE_APP: &str = env!("CARGO_BIN_EXE_release-app");
const KUA: &str = env!("CARGO_BIN_EXE_kua-deploy");

#[tokio::test(flavor = "multi_thread")]
async fn a_release_from_kua_json_reaches_the_named_https_server_with_its_token_and_ca_file() {
    let pki = Pki::new();
    let app = TestApp::new(AppOptions::default());
    let server = start_https(&app, &pki);
    let (repo, servers) = client_world(app.dir.path(), &server.url, &pki.ca);

    let (code, text) = run(RELEASE_APP, &repo, &[], &[("KUA_SERVERS", servers.as_os_str())]);
    assert_eq!(code, 0, "{text}\nserver log:\n{}", server.log());
    assert!(text.contains(&format!("releasing hello via {} (server bruno, from kua.json)", server.url)), "{text}");
    assert!(text.contains("succeeded"), "{text}");
    assert_eq!(app.fetch().as_deref(), Some("v1"));

    // The other client commands go the same way: here through the file's default, elsewhere.
    let elsewhere = app.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let (code, text) = run(KUA, &elsewhere, &["history", "hello"], &[("KUA_SERVERS", servers.as_os_str())]);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("succeeded"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_server_certificate_from_an_unknown_ca_is_refused_clearly_and_nothing_is_deployed() {
    let pki = Pki::new();
    let app = TestApp::new(AppOptions::default());
    let server = start_https(&app, &pki);
    let (repo, servers) = client_world(app.dir.path(), &server.url, &pki.other_ca);

    // The app is named, and kua.json's server still applies.
    let (code, text) = run(RELEASE_APP, &repo, &["hello"], &[("KUA_SERVERS", servers.as_os_str())]);
    assert_eq!(code, 5, "{text}");
    assert!(text.contains(&format!("cannot verify the server's certificate for {}", server.url)), "{text}");
    assert!(text.contains("--ca-file"), "{text}");
    // The CA given on the command line wins over the server's ca_file, the wrong one here too.
    let (code, text) = run(
        RELEASE_APP,
        &repo,
        &["--ca-file", pki.other_ca.to_str().unwrap()],
        &[("KUA_SERVERS", servers.as_os_str())],
    );
    assert_eq!(code, 5, "{text}");
    let (code, text) = run(
        KUA,
        &repo,
        &["status", "hello"],
        &[("KUA_SERVERS", servers.as_os_str()), ("KUA_CA_FILE", pki.other_ca.as_os_str())],
    );
    assert_eq!(code, 1, "{text}");
    assert!(text.contains("cannot verify the server's certificate"), "{text}");

    match server.client.progress(&app.name).await {
        Err(ClientError::NotFound { code, .. }) => assert_eq!(code, "no_deploys"),
        other => panic!("a deploy was made: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_server_name_exits_2_listing_the_known_ones_and_the_file() {
    let pki = Pki::new();
    let (repo, servers) = client_world(pki.dir.path(), "https://deploy.bruno.example", &pki.ca);
    let (code, text) = run(RELEASE_APP, &repo, &["--server", "nope"], &[("KUA_SERVERS", servers.as_os_str())]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("unknown server \"nope\"") && text.contains("bruno"), "{text}");
    assert!(text.contains(servers.to_str().unwrap()), "{text}");
    let (code, text) =
        run(KUA, &repo, &["status", "hello", "--server", "nope"], &[("KUA_SERVERS", servers.as_os_str())]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("bruno"), "{text}");

    // A servers file that does not parse: exit 2, naming it with the line and column.
    std::fs::write(&servers, "{\"servers\": {\"bruno\": {\"url\": \"https://b\", \"token\": \"x\"}}}").unwrap();
    let (code, text) = run(RELEASE_APP, &repo, &[], &[("KUA_SERVERS", servers.as_os_str())]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains(&format!("{}:1:", servers.display())) && text.contains("token"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn health_exits_0_against_the_https_server_and_1_once_it_has_stopped() {
    let pki = Pki::new();
    let app = TestApp::new(AppOptions::default());
    let mut server = start_https(&app, &pki);
    let port = server.url.rsplit(':').next().unwrap().to_owned();
    // As in the container: an unspecified listen host, the certificate the server serves.
    let listen = format!("0.0.0.0:{port}");
    let env = [("KUA_LISTEN", OsStr::new(&listen)), ("KUA_TLS_CERT", pki.cert.as_os_str())];
    let (code, text) = run(KUA, app.dir.path(), &["health"], &env);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains(&format!("https://127.0.0.1:{port}")), "{text}");

    server.terminate();
    let (code, text) = run(KUA, app.dir.path(), &["health"], &env);
    assert_eq!(code, 1, "{text}");
    assert!(text.starts_with("unhealthy: ") && text.trim().lines().count() == 1, "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn plain_http_to_the_https_port_is_answered_with_the_url_to_use() {
    let pki = Pki::new();
    let app = TestApp::new(AppOptions::default());
    let server = start_https(&app, &pki);
    let plain = server.url.replacen("https://", "http://", 1);
    let (code, text) = run(KUA, app.dir.path(), &["apps", "--url", &plain], &[("KUA_ADMIN_TOKEN", OsStr::new(TOKEN))]);
    assert_eq!(code, 1, "{text}");
    assert!(text.contains(&format!("this port serves HTTPS only: use {}", server.url)), "{text}");
    // The server goes on serving HTTPS.
    server.client.health().await.expect("healthz over https");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_that_stalls_in_the_tls_handshake_is_closed_within_the_header_timeout() {
    let pki = Pki::new();
    let app = TestApp::new(AppOptions::default());
    let server = start_https(&app, &pki);
    let addr = server.url.trim_start_matches("https://").to_owned();
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    // The start of a TLS record, then nothing.
    stalled.write_all(&[0x16, 0x03, 0x01]).unwrap();
    stalled.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let n = stalled.read(&mut buf).unwrap_or(0);
    let took = started.elapsed();
    assert_eq!(n, 0, "the server closes it without an answer");
    assert!(took >= Duration::from_secs(4) && took < Duration::from_secs(8), "closed after {took:?}");
    server.client.health().await.expect("the server still answers");
}

#[test]
fn serve_refuses_a_certificate_without_its_key_and_one_it_cannot_read_before_listening() {
    let pki = Pki::new();
    let registry = pki.dir.path().join("registry.json");
    std::fs::write(&registry, r#"{"apps": {"hello": {"repo": "/srv/apps/hello", "services": ["web"]}}}"#).unwrap();
    let state = pki.dir.path().join("state");
    let serve = |extra: &[&str]| {
        let out = Server::command(&registry, &state).args(extra).output().expect("run kua-deploy serve");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.code().unwrap_or(-1), stdout, String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, stdout, stderr) = serve(&["--tls-cert", pki.cert.to_str().unwrap()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--tls-key") && !stdout.contains("listening"), "{stdout}{stderr}");
    let missing = pki.dir.path().join("missing.pem");
    let (code, stdout, stderr) =
        serve(&["--tls-cert", missing.to_str().unwrap(), "--tls-key", pki.key.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()) && !stdout.contains("listening"), "{stdout}{stderr}");
    let (code, _, stderr) = serve(&[
        "--tls-cert",
        pki.cert.to_str().unwrap(),
        "--tls-key",
        pki.other_ca.with_extension("key").to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("other-ca.key") && stderr.contains("server.pem"), "{stderr}");
}
