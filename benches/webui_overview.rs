//! The web page's overview under a large store: 100 apps and 10,000 finished deploys (100 each,
//! with their steps). Starts the real server on it, logs in, and prints the server time of
//! `GET /` (p50, p95, max over 50 requests, timed from the client on loopback) and the page's
//! weight (HTML + CSS + JS). Run: `cargo bench --bench webui_overview`. Needs no Docker: nothing
//! is deployed, the deploys are written to the store directly. The runtime monitor is off: its
//! first round over 100 apps (200 processes at start) would be measured instead of the page.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kua_deploy::model::{AppName, StepName, Trigger, TriggerSource};
use kua_deploy::store::{NewDeploy, Store, DB_FILE};

const TOKEN: &str = "bench-admin-token-0123456789abcdef";
const APPS: usize = 100;
const DEPLOYS_PER_APP: usize = 100;

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let mut apps = serde_json::Map::new();
    for i in 0..APPS {
        let repo = dir.path().join(format!("repo{i}"));
        std::fs::create_dir_all(&repo).unwrap();
        apps.insert(format!("app{i:03}"), serde_json::json!({"repo": repo, "services": ["web"]}));
    }
    let registry = dir.path().join("deploy-registry.json");
    std::fs::write(&registry, serde_json::json!({ "apps": apps }).to_string()).unwrap();

    let started = Instant::now();
    {
        let store = Store::open(&state).unwrap();
        for i in 0..APPS {
            let app = AppName::parse(&format!("app{i:03}")).unwrap();
            for _ in 0..DEPLOYS_PER_APP {
                store
                    .insert_deploy(&NewDeploy {
                        app: app.clone(),
                        trigger: Trigger {
                            source: TriggerSource::Api,
                            delivery: None,
                            git_ref: "refs/heads/main".into(),
                            requested_commit: None,
                        },
                        approve_migrations: false,
                        reason: None,
                        steps: vec![
                            StepName::GitPull,
                            StepName::MigrationGate,
                            StepName::Build,
                            StepName::Recreate,
                            StepName::Verify,
                        ],
                    })
                    .unwrap();
            }
        }
        store.close();
    }
    // Finished, so the server does not resume them: written as a past deploy's end would be.
    let db = rusqlite::Connection::open(state.join(DB_FILE)).unwrap();
    db.execute_batch(
        "UPDATE deploys SET phase = 'succeeded', commit_sha = '0123456789abcdef0123456789abcdef01234567',
                            started_at = created_at, finished_at = created_at;
         UPDATE steps SET status = 'succeeded';",
    )
    .unwrap();
    drop(db);
    println!(
        "store: {APPS} apps, {} deploys, written in {:.1} s",
        APPS * DEPLOYS_PER_APP,
        started.elapsed().as_secs_f64()
    );

    let mut child = Command::new(env!("CARGO_BIN_EXE_kua-deploy"))
        .args(["serve", "--config", registry.to_str().unwrap(), "--state-dir", state.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0", "--runtime-check-every", "0"])
        .env("KUA_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http")).expect("a listen line with the URL").to_owned();

    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let login = http.post(format!("{url}/login")).form(&[("token", TOKEN)]).send().await.unwrap();
    let cookie = login.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let mut times = Vec::new();
    let mut html = 0;
    for _ in 0..50 {
        let t = Instant::now();
        let r = http.get(format!("{url}/")).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status(), 200);
        html = r.bytes().await.unwrap().len();
        times.push(t.elapsed());
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "GET / (overview, {APPS} apps): p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms (target < 50 ms)",
        ms(times[25]),
        ms(times[47]),
        ms(times[49])
    );
    let mut assets = 0;
    for path in ["/static/style.css", "/static/live.js"] {
        assets += http.get(format!("{url}{path}")).send().await.unwrap().bytes().await.unwrap().len();
    }
    println!(
        "page weight: {html} bytes of HTML + {assets} bytes of CSS and JS = {} KB (target < 100 KB)",
        (html + assets) / 1024
    );
    child.kill().ok();
    child.wait().ok();
}
