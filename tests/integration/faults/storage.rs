//! Storage faults, with the real server and real SQLite: a second server on the same state dir, the
//! state dir's disk full in the middle of a build, a stale `kua.db-shm`, and a truncated or
//! partly overwritten `kua.db`.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kua_deploy::api::types::{DeployRequest, Health};
use kua_deploy::model::{Phase, StepName, StepStatus, Trigger, TriggerSource};
use kua_deploy::store::{NewDeploy, Store};
use reqwest::StatusCode;

use crate::support::{uuid_hex, AppOptions, Behaviour, Server, TestApp, TOKEN};

/// A `kua-deploy serve` expected to refuse: its exit status, stdout and stderr, or a failure if
/// it is still running after `within`.
struct Refused {
    status: ExitStatus,
    stdout: String,
    stderr: String,
    took: Duration,
}

fn serve_expecting_exit(app: &TestApp, within: Duration) -> Refused {
    let dir = tempfile::tempdir().unwrap();
    let (out, err) = (dir.path().join("stdout"), dir.path().join("stderr"));
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
        .args(["serve", "--config", app.registry.to_str().unwrap(), "--state-dir", app.state.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "info")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap())
        .spawn()
        .expect("start kua-deploy serve");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > within {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "kua-deploy serve was still running after {within:?}; stdout: {}; stderr: {}",
                std::fs::read_to_string(&out).unwrap_or_default(),
                std::fs::read_to_string(&err).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Refused {
        status,
        stdout: std::fs::read_to_string(&out).unwrap(),
        stderr: std::fs::read_to_string(&err).unwrap(),
        took: started.elapsed(),
    }
}

async fn health(server: &Server) -> (StatusCode, Health) {
    let resp = server.http().get(format!("{}/healthz", server.url)).send().await.unwrap();
    let status = resp.status();
    (status, resp.json().await.unwrap())
}

/// Polls `/healthz` until `until` holds, or fails after `timeout` with what it last saw.
async fn wait_health(server: &Server, timeout: Duration, until: impl Fn(StatusCode, &Health) -> bool) -> Health {
    let start = Instant::now();
    loop {
        let (s, h) = health(server).await;
        if until(s, &h) {
            return h;
        }
        assert!(start.elapsed() < timeout, "healthz did not get there in {timeout:?}: {s} {h:#?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn post(server: &Server, path: &str) -> (StatusCode, String) {
    let resp = server
        .http()
        .post(format!("{}{path}", server.url))
        .header("authorization", server.auth())
        .send()
        .await
        .unwrap();
    (resp.status(), resp.text().await.unwrap())
}

fn alive(server: &mut Server) -> bool {
    matches!(server.child.try_wait(), Ok(None))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_server_on_the_same_state_dir_exits_at_once_naming_the_first_whose_deploy_goes_on() {
    let app = TestApp::new(AppOptions::default());
    app.push(&format!("slow {}", uuid_hex()), Behaviour::SlowBuild(4));
    let mut first = app.start();
    let acc = first.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    first
        .wait_for(&acc.deploy_id, Duration::from_secs(30), |d| {
            d.step(StepName::Build).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;

    let second = serve_expecting_exit(&app, Duration::from_secs(10));
    assert!(!second.status.success(), "{:?}", second.status);
    assert!(second.took < Duration::from_secs(3), "took {:?} to refuse", second.took);
    assert!(second.stderr.contains(&format!("pid {}", first.child.id())), "{}", second.stderr);
    assert!(second.stderr.contains(&format!("listening on {}", first.url)), "{}", second.stderr);
    assert!(!second.stdout.contains("listening on"), "the refused server printed {:?}", second.stdout);

    // The first server's deploy was not interrupted by the second's start-up recovery.
    let d = first.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Succeeded, "{d:#?}");
    assert!(alive(&mut first));
    assert_eq!(health(&first).await.0, StatusCode::OK);
}

/// A tmpfs mounted over a directory for the life of the guard.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", dir.to_str().unwrap()])
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "cannot mount a tmpfs on {} (this test needs root): {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(dir.to_owned())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Keeps a filesystem full: writes into `path` whatever space appears, until stopped; then removes
/// the file.
struct Filler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    path: PathBuf,
}

impl Filler {
    fn start(path: PathBuf) -> Filler {
        use std::io::Write;
        let stop = Arc::new(AtomicBool::new(false));
        let mut file = std::fs::File::create(&path).unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let thread = {
            let (stop, full) = (stop.clone(), full.clone());
            std::thread::spawn(move || {
                let chunk = vec![0x5a_u8; 4096];
                while !stop.load(Ordering::SeqCst) {
                    match file.write(&chunk) {
                        Ok(_) => {}
                        Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                            full.store(true, Ordering::SeqCst);
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        Err(e) => panic!("filler: {e}"),
                    }
                }
            })
        };
        let start = Instant::now();
        while !full.load(Ordering::SeqCst) {
            assert!(start.elapsed() < Duration::from_secs(10), "the tmpfs did not fill up");
            std::thread::sleep(Duration::from_millis(10));
        }
        Filler { stop, thread: Some(thread), path }
    }

    fn free(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

impl Drop for Filler {
    fn drop(&mut self) {
        self.free();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_state_dir_that_fills_up_during_a_build_fails_the_deploy_once_space_is_back_and_the_app_keeps_serving() {
    let app = TestApp::new(AppOptions::default());
    let _tmpfs = Tmpfs::mount(&app.state, "16m");
    let mut server = app.start();
    let first = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    assert_eq!(server.wait_end(&first.deploy_id).await.phase, Phase::Succeeded);
    assert_eq!(app.fetch().as_deref(), Some("v1"));

    app.push(&format!("slow {}", uuid_hex()), Behaviour::SlowBuild(5));
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server
        .wait_for(&acc.deploy_id, Duration::from_secs(30), |d| {
            d.step(StepName::Build).is_some_and(|s| s.status == StepStatus::Running)
        })
        .await;
    let mut filler = Filler::start(app.state.join("filler"));

    // The build ends into a full disk: its end cannot be written.
    let h = wait_health(&server, Duration::from_secs(60), |_, h| h.storage.unrecorded_deploys.contains(&acc.deploy_id))
        .await;
    let (status, h2) = health(&server).await;
    assert_eq!((status, h2.status.as_str()), (StatusCode::SERVICE_UNAVAILABLE, "degraded"), "{h2:#?}");
    let said = serde_json::to_string(&h.storage.problems).unwrap();
    assert!(said.contains("full"), "healthz does not say the disk is full: {said}");
    assert!(alive(&mut server), "the server died on a full disk: {}", server.log());
    assert_eq!(app.fetch().as_deref(), Some("v1"), "the app stopped serving");
    // Nothing pretends: a new deploy is not taken, and cancel says why it cannot act.
    let (s, b) = post(&server, "/api/v1/apps/hello/deploy").await;
    assert!(s == StatusCode::CONFLICT || s == StatusCode::SERVICE_UNAVAILABLE, "{s} {b}");
    let (s, b) = post(&server, &format!("/api/v1/deploys/{}/cancel", acc.deploy_id)).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{b}");
    assert!(b.contains("storage_unavailable") && b.contains("state database failed"), "{b}");

    filler.free();
    let d = server.wait_for(&acc.deploy_id, Duration::from_secs(20), |d| d.phase.is_terminal()).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    let error = d.error.clone().unwrap_or_default();
    assert!(error.contains("could not record") && error.contains("full"), "{error}");
    assert!(d.steps.iter().all(|s| !matches!(s.status, StepStatus::Running | StepStatus::Pending)), "{d:#?}");
    wait_health(&server, Duration::from_secs(20), |s, h| s == StatusCode::OK && h.status == "ok").await;
    assert!(alive(&mut server));
    assert_eq!(app.fetch().as_deref(), Some("v1"));

    app.push("v3", Behaviour::Serve);
    let again = server.client.deploy(&app.name, &DeployRequest::default()).await.expect("a new deploy is taken");
    assert_eq!(server.wait_end(&again.deploy_id).await.phase, Phase::Succeeded);
    assert_eq!(app.fetch().as_deref(), Some("v3"));
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stale_or_truncated_shm_file_is_never_mapped_so_nothing_can_fault_on_it() {
    let app = TestApp::new(AppOptions::default());
    std::fs::create_dir_all(&app.state).unwrap();
    let shm = app.state.join("kua.db-shm");
    std::fs::write(&shm, vec![0xff_u8; 100]).unwrap();
    let mut server = app.start();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    // Mid-deploy the file is cut to nothing and made unreadable: with a mapped wal-index this is
    // what faults (SIGBUS) at the next access.
    std::fs::OpenOptions::new().write(true).open(&shm).unwrap().set_len(0).unwrap();
    std::fs::set_permissions(&shm, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    assert_eq!(server.wait_end(&acc.deploy_id).await.phase, Phase::Succeeded);
    assert!(alive(&mut server), "{}", server.log());

    let pid = server.child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps.contains("kua.db-shm"), "kua.db-shm is mapped:\n{maps}");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd")).unwrap() {
        let target = std::fs::read_link(fd.unwrap().path()).unwrap_or_default();
        assert!(!target.to_string_lossy().contains("kua.db-shm"), "kua.db-shm is open: {}", target.display());
    }

    // A kill leaves the write-ahead log; the next server reads it back without any -shm.
    server.kill9();
    let server = app.start();
    assert_eq!(server.client.deploy_status(&acc.deploy_id).await.unwrap().phase, Phase::Succeeded);
    assert_eq!(health(&server).await.0, StatusCode::OK);
}

/// Records `n` ended deploys of the app through the library, then lets the real server start and
/// stop on them once (so the backup is the server's own, taken at its stop).
async fn history_of(app: &TestApp, n: usize) {
    let store = Store::open(&app.state).unwrap();
    for _ in 0..n {
        let d = store
            .insert_deploy(&NewDeploy {
                app: app.name.clone(),
                trigger: Trigger {
                    source: TriggerSource::Api,
                    delivery: None,
                    git_ref: "refs/heads/main".into(),
                    requested_commit: None,
                },
                approve_migrations: false,
                reason: Some("history".into()),
                steps: vec![StepName::GitPull],
            })
            .unwrap();
        store.fail(&d.deploy_id, "an old failure").unwrap();
    }
    drop(store);
    let mut server = app.start();
    assert_eq!(deploys(&server).await, n);
    server.terminate();
}

async fn deploys(server: &Server) -> usize {
    server.client.history(&kua_deploy::model::AppName::parse("hello").unwrap(), 500).await.unwrap().deploys.len()
}

fn damage(db: &Path, how: &str) {
    let len = std::fs::metadata(db).unwrap().len();
    match how {
        "truncated to a third" => std::fs::OpenOptions::new().write(true).open(db).unwrap().set_len(len / 3).unwrap(),
        "emptied" => std::fs::OpenOptions::new().write(true).open(db).unwrap().set_len(0).unwrap(),
        "pages overwritten" => {
            let mut bytes = std::fs::read(db).unwrap();
            let mid = bytes.len() / 2;
            bytes[mid..mid + 3 * 4096].fill(0xa5);
            std::fs::write(db, bytes).unwrap();
        }
        _ => unreachable!(),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_emptied_or_overwritten_database_comes_back_from_the_backup_saying_so() {
    let app = TestApp::new(AppOptions::default());
    history_of(&app, 300).await;
    for how in ["truncated to a third", "emptied", "pages overwritten"] {
        damage(&app.state.join("kua.db"), how);
        let mut server = app.start();
        assert_eq!(deploys(&server).await, 300, "{how}: the history is not back");
        let log = server.log();
        assert!(log.contains("RESTORED") && log.contains("kua.db.backup"), "{how}: the log does not say so:\n{log}");
        assert_eq!(health(&server).await.0, StatusCode::OK);
        server.terminate();
    }
    let kept = std::fs::read_dir(&app.state)
        .unwrap()
        .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("kua.db.damaged-"))
        .count();
    assert!(kept >= 1, "the damaged files are not kept");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_damaged_database_without_a_backup_is_refused_before_anything_listens() {
    let app = TestApp::new(AppOptions::default());
    history_of(&app, 300).await;
    std::fs::remove_file(app.state.join("kua.db.backup")).unwrap();
    for how in ["truncated to a third", "pages overwritten"] {
        let db = app.state.join("kua.db");
        let before = std::fs::read(&db).unwrap();
        damage(&db, how);
        let refused = serve_expecting_exit(&app, Duration::from_secs(20));
        assert!(!refused.status.success(), "{how}: {:?}", refused.status);
        assert!(refused.stdout.is_empty(), "{how}: printed before the store was open: {:?}", refused.stdout);
        for word in ["damaged", "no backup", ".recover"] {
            assert!(refused.stderr.contains(word), "{how}: the refusal does not say {word:?}: {}", refused.stderr);
        }
        assert!(db.exists(), "{how}: the refused database was moved");
        std::fs::write(&db, before).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_fresh_state_dir_starts_empty_without_complaint() {
    let app = TestApp::new(AppOptions::default());
    let server = app.start();
    assert_eq!(deploys(&server).await, 0);
    let (s, h) = health(&server).await;
    assert_eq!((s, h.status.as_str()), (StatusCode::OK, "ok"), "{h:#?}");
    let log = server.log();
    assert!(!log.contains("ERROR") && !log.contains("RESTORED"), "{log}");
    assert!(app.state.join("kua.db.backup").exists(), "no backup taken at start");
}
