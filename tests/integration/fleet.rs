//! Many hosts at once: three real sshds, each on a port of its own on 127.0.0.1 with its own host
//! key, client key and log, two apps on each (their own checkouts and Compose projects, sharing
//! the one engine), all six released at once through the API under the registry's `limits`.

use std::time::{Duration, Instant};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::{parse_time, AppName, Deploy, Phase};
use serde_json::{json, Value};

use crate::support::{AppOptions, SshServer, TestApp};

/// Deploy `(start, end)` intervals of `ds` that overlap at some instant: the most at once.
fn most_at_once(ds: &[&Deploy]) -> usize {
    let mut edges: Vec<(chrono::DateTime<chrono::Utc>, i32)> = Vec::new();
    for d in ds {
        let at = |t: &Option<String>| parse_time(t.as_deref().expect("started and finished")).expect("RFC 3339");
        edges.push((at(&d.started_at), 1));
        edges.push((at(&d.finished_at), -1));
    }
    // An end and a start at the same instant do not overlap: ends first.
    edges.sort();
    let (mut now, mut most) = (0, 0);
    for (_, step) in edges {
        now += step;
        most = most.max(now);
    }
    most as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn six_apps_on_three_hosts_deploy_at_once_over_one_connection_per_host_within_each_hosts_limit() {
    // Three servers as kua-deploy sees them: an address and port each, a host key each.
    let sshds: Vec<SshServer> = (0..3).map(|_| SshServer::start()).collect();
    let apps: Vec<TestApp> = (0..6).map(|_| TestApp::new(AppOptions::default())).collect();
    // One registry, the first app's, lists all six: app{i} on host h{i / 2}. h0 may run two
    // deploys at once (its own `max_deploys`), h1 and h2 one (`limits.deploys_per_host`).
    let mut hosts = json!({});
    for (i, s) in sshds.iter().enumerate() {
        hosts[format!("h{i}")] = json!({
            "ssh": format!("root@{}:{}", s.addr, s.port),
            "identity_file": s.identity,
            "known_hosts_file": s.known_hosts,
        });
    }
    hosts["h0"]["max_deploys"] = json!(2);
    let mut entries = json!({});
    for (i, app) in apps.iter().enumerate() {
        let own: Value = serde_json::from_str(&std::fs::read_to_string(&app.registry).unwrap()).unwrap();
        let mut entry = own["apps"]["hello"].clone();
        entry["host"] = json!(format!("h{}", i / 2));
        entries[format!("app{i}")] = entry;
    }
    apps[0].edit_registry(|reg| {
        *reg = json!({"limits": {"deploys_per_host": 1, "deploys": 8}, "hosts": hosts, "apps": entries});
    });
    let server = apps[0].start();
    let names: Vec<AppName> = (0..6).map(|i| AppName::parse(&format!("app{i}")).unwrap()).collect();

    let began = Instant::now();
    let mut ids = Vec::new();
    for name in &names {
        ids.push(server.client.deploy(name, &DeployRequest::default()).await.unwrap().deploy_id);
    }
    // While they run, the API answers: every answer's time, until every app's last deploy ended.
    let mut latencies = Vec::new();
    loop {
        let asked = Instant::now();
        let list = server.client.apps().await.expect("GET /api/v1/apps");
        latencies.push(asked.elapsed());
        let ended = list.apps.iter().filter(|a| a.last_phase.is_some_and(|p| p.is_terminal())).count();
        if ended == names.len() {
            break;
        }
        assert!(began.elapsed() < Duration::from_secs(300), "not all ended in 300 s: {list:#?}\n{}", server.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = began.elapsed();
    latencies.sort();
    let pick = |q: f64| latencies[((latencies.len() - 1) as f64 * q).round() as usize];
    println!(
        "6 deploys on 3 hosts in {:.1}s; GET /api/v1/apps while they ran: {} requests, p50 {:?}, p99 {:?}, max {:?}",
        total.as_secs_f64(),
        latencies.len(),
        pick(0.5),
        pick(0.99),
        latencies.last().unwrap()
    );
    assert!(*latencies.last().unwrap() < Duration::from_secs(1), "the API stays responsive: {latencies:?}");

    let mut deploys = Vec::new();
    for id in &ids {
        deploys.push(server.client.deploy_status(id).await.unwrap());
    }
    for (d, app) in deploys.iter().zip(&apps) {
        assert_eq!(d.phase, Phase::Succeeded, "{d:#?}\nserver log:\n{}", server.log());
        assert_eq!(app.fetch().as_deref(), Some("v1"), "{} serves its release", d.app);
    }
    for (i, s) in sshds.iter().enumerate() {
        assert_eq!(s.connections(), 1, "one connection to h{i} for its two deploys:\n{}", s.log());
    }
    let on = |h: usize| [&deploys[2 * h], &deploys[2 * h + 1]];
    assert_eq!(most_at_once(&on(0)), 2, "h0 runs its two at once (max_deploys 2): {:#?}", on(0));
    for h in [1, 2] {
        assert_eq!(most_at_once(&on(h)), 1, "h{h} runs one deploy at a time: {:#?}", on(h));
        // The second in line waited for the first, and said so in its log.
        let second = on(h).into_iter().max_by_key(|d| d.started_at.clone()).unwrap();
        let log = server.client.logs(&second.deploy_id, 0).await.unwrap();
        let waiting = format!("waiting for a free slot on host h{h}: 1 deploy running there (limit 1)");
        assert!(log.lines.iter().any(|l| l.line == waiting), "{:#?}", log.lines);
    }
    let all: Vec<&Deploy> = deploys.iter().collect();
    let most = most_at_once(&all);
    println!("at most {most} deploys ran at once");
    assert!(most >= 3, "deploys on different hosts overlapped: {all:#?}");
}
