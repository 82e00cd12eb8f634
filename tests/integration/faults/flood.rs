//! A connection flood under a 1024 open-file limit: waves of 1,000 idle connections and 100
//! slow-loris ones (a request head dribbled a line every half second) against the real server,
//! while a deploy runs. `/healthz` must answer within a second throughout, the slow heads must be
//! cut by the header-read timeout, the server's descriptors must stay under the cap plus its
//! reserve, its memory bounded and given back, and the deploy must end `succeeded`.

use std::os::unix::process::CommandExt;
use std::process::Command;
use std::time::{Duration, Instant};

use kua_deploy::api::listener::{connection_cap, HEADER_READ_TIMEOUT};
use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::support::{AppOptions, Behaviour, Server, TestApp, TOKEN};

const OPEN_FILES: u64 = 1024;
const IDLE: usize = 1000;
const SLOW: usize = 100;
/// The flood goes on (wave after wave) until the deploy ends, but never longer than this.
const MAX_WAVES: usize = 8;

/// `kua-deploy serve` for `app` with RLIMIT_NOFILE soft and hard set to `limit`, so that it
/// cannot raise it.
fn start_with_open_files(app: &TestApp, limit: u64) -> Server {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kua-deploy"));
    cmd.args(["serve", "--config", app.registry.to_str().unwrap(), "--state-dir", app.state.to_str().unwrap()])
        .args(["--listen", "127.0.0.1:0"])
        .env("KUA_ADMIN_TOKEN", TOKEN);
    // SAFETY: setrlimit is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            let lim = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Server::spawn(cmd)
}

/// The test itself holds over a thousand sockets: its own soft limit goes up to the hard one.
fn raise_own_open_files(need: u64) {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(lim.rlim_max >= need, "this test needs an open-file hard limit of at least {need} (ulimit -Hn)");
    lim.rlim_cur = lim.rlim_max;
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
}

/// (resident KiB, open descriptors) of a process.
fn usage(pid: u32) -> (u64, usize) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server is running");
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status");
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
    (rss, fds)
}

/// One `/healthz` on a new connection: how long until the whole answer, if it was a 200.
async fn healthz(addr: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let exchange = async {
        let mut s = TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|e| format!("send: {e}"))?;
        let mut answer = Vec::new();
        s.read_to_end(&mut answer).await.map_err(|e| format!("read: {e}"))?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        if answer.starts_with("HTTP/1.1 200") && answer.contains("\"ok\"") {
            Ok(started.elapsed())
        } else {
            Err(format!("answered {answer:?}"))
        }
    };
    tokio::time::timeout(Duration::from_secs(5), exchange).await.unwrap_or_else(|_| Err("no answer in 5s".into()))
}

/// How long each connection of one wave stayed open before the server closed it (None: still
/// open when the wave gave up on it).
struct Wave {
    idle: Vec<Option<Duration>>,
    slow: Vec<Option<Duration>>,
}

/// Waits for the server to close `s`; a slow-loris connection sends one more header line every
/// half second meanwhile (it never ends its head).
async fn until_closed(mut s: TcpStream, opened: Instant, dribble: bool) -> Option<Duration> {
    let give_up = opened + HEADER_READ_TIMEOUT + Duration::from_secs(4);
    let mut buf = [0u8; 256];
    let mut n = 0u32;
    loop {
        tokio::select! {
            r = s.read(&mut buf) => match r {
                Ok(0) | Err(_) => return Some(opened.elapsed()),
                Ok(_) => panic!("the server answered a head that never ended: {:?}", String::from_utf8_lossy(&buf)),
            },
            _ = tokio::time::sleep(Duration::from_millis(500)), if dribble => {
                n += 1;
                if s.write_all(format!("X-Slow-{n}: 1\r\n").as_bytes()).await.is_err() {
                    return Some(opened.elapsed());
                }
            }
            _ = tokio::time::sleep_until(give_up.into()) => return None,
        }
    }
}

/// Opens 1,000 idle connections then 100 slow-loris ones, and waits until the server has closed
/// them all (or gave up on them).
async fn wave(addr: &str) -> Wave {
    let mut idle = JoinSet::new();
    for i in 0..IDLE {
        let s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("idle connection {i} was refused: {e}"));
        idle.spawn(until_closed(s, Instant::now(), false));
    }
    let mut slow = JoinSet::new();
    for i in 0..SLOW {
        let opened = Instant::now();
        let mut s = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("slow connection {i} was refused: {e}"));
        s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n").await.expect("send the start of a head");
        slow.spawn(until_closed(s, opened, true));
    }
    Wave { idle: idle.join_all().await, slow: slow.join_all().await }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_connection_flood_under_1024_open_files_leaves_healthz_answering_and_a_deploy_succeeding() {
    raise_own_open_files(4096);
    let app = TestApp::new(AppOptions::default());
    app.push("v2", Behaviour::SlowBuild(2));
    let server = start_with_open_files(&app, OPEN_FILES);
    let pid = server.child.id();
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();
    let cap = connection_cap(OPEN_FILES, 1);

    for _ in 0..5 {
        healthz(&addr).await.expect("healthz before the flood");
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (rss_before, fds_before) = usage(pid);

    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.expect("trigger the deploy");
    server
        .wait_for(&acc.deploy_id, Duration::from_secs(60), |d| d.phase != Phase::Queued && d.started_at.is_some())
        .await;

    // Beside the flood: /healthz on a new connection every 250 ms, the server's memory and
    // descriptors every 100 ms, the deploy's phase every 250 ms.
    let stop = CancellationToken::new();
    let probes = tokio::spawn({
        let (stop, addr) = (stop.clone(), addr.clone());
        async move {
            let mut seen = Vec::new();
            while !stop.is_cancelled() {
                seen.push(healthz(&addr).await);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            seen
        }
    });
    let sampler = tokio::spawn({
        let stop = stop.clone();
        async move {
            let mut peak = (0u64, 0usize);
            while !stop.is_cancelled() {
                let (rss, fds) = usage(pid);
                peak = (peak.0.max(rss), peak.1.max(fds));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            peak
        }
    });
    let ended = CancellationToken::new();
    let watcher = tokio::spawn({
        let (ended, client, id) = (ended.clone(), server.client.clone(), acc.deploy_id.clone());
        async move {
            loop {
                // A kept-alive poll connection may be the one shed for a newcomer: a client
                // retries on a new connection.
                if let Ok(d) = client.deploy_status(&id).await {
                    if d.phase.is_terminal() || d.phase == Phase::AwaitingApproval {
                        ended.cancel();
                        return d;
                    }
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    });

    let flood_started = Instant::now();
    let mut waves = Vec::new();
    while !ended.is_cancelled() {
        assert!(waves.len() < MAX_WAVES, "the deploy did not end during {MAX_WAVES} waves; log:\n{}", server.log());
        waves.push(wave(&addr).await);
    }
    let flood = flood_started.elapsed();
    stop.cancel();
    let probes = probes.await.unwrap();
    let (rss_peak, fds_peak) = sampler.await.unwrap();
    let deploy = watcher.await.unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (rss_after, fds_after) = usage(pid);
    eprintln!(
        "flood: {} waves in {flood:?}; RSS {rss_before} → peak {rss_peak} → {rss_after} KiB; \
         descriptors {fds_before} → peak {fds_peak} → {fds_after}; cap {cap}",
        waves.len()
    );

    // The deploy that ran through the flood was not disturbed by it.
    assert_eq!(deploy.phase, Phase::Succeeded, "{deploy:#?}\nlog:\n{}", server.log());
    assert!(!server.log().contains("Too many open files"), "{}", server.log());

    // /healthz answered every time, within a second.
    assert!(probes.len() >= 8, "only {} probes in {flood:?}", probes.len());
    for (i, p) in probes.iter().enumerate() {
        match p {
            Ok(t) => assert!(*t < Duration::from_secs(1), "probe {i} took {t:?}"),
            Err(e) => panic!("probe {i} failed: {e}; log:\n{}", server.log()),
        }
    }

    let header = HEADER_READ_TIMEOUT;
    for (w, wave) in waves.iter().enumerate() {
        // The slow heads were cut by the header-read timeout: not before it, and not much after.
        for (i, t) in wave.slow.iter().enumerate() {
            let t = t.unwrap_or_else(|| panic!("wave {w}: slow connection {i} was still open after {header:?} + 4s"));
            assert!(
                t >= header - Duration::from_millis(200) && t <= header + Duration::from_secs(2),
                "wave {w}: slow connection {i} was closed after {t:?}, not by the {header:?} header timeout"
            );
        }
        // Idle ones too; and those beyond the cap were closed at once for the newer ones.
        for (i, t) in wave.idle.iter().enumerate() {
            let t = t.unwrap_or_else(|| panic!("wave {w}: idle connection {i} was still open after {header:?} + 4s"));
            assert!(t <= header + Duration::from_secs(2), "wave {w}: idle connection {i} stayed {t:?}");
        }
        let shed = wave.idle.iter().flatten().filter(|t| **t < header - Duration::from_millis(200)).count();
        assert!(
            shed >= IDLE + SLOW - cap,
            "wave {w}: only {shed} idle connections were shed for newcomers (cap {cap})"
        );
    }

    // The server kept to its cap, leaving its reserve free; its memory stayed bounded and
    // went back down once the flood was over.
    assert!(fds_peak <= cap + 128, "the server held {fds_peak} descriptors (cap {cap})");
    assert!(rss_peak <= rss_before + 32 * 1024, "RSS grew from {rss_before} to {rss_peak} KiB");
    let grown = rss_peak.saturating_sub(rss_before);
    assert!(
        rss_after <= rss_before + grown / 3 + 1536,
        "RSS stayed at {rss_after} KiB after the flood (before {rss_before}, peak {rss_peak})"
    );
    assert!(fds_after <= fds_before + 8, "descriptors {fds_before} before, {fds_after} after the flood");
}

/// Reads until the server closes `s`, or `within` passes (None then).
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    tokio::time::timeout(within, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|_| got)
}

#[tokio::test(flavor = "multi_thread")]
async fn on_sigterm_idle_connections_close_at_once_and_a_follow_stream_ends_whole() {
    let app = TestApp::new(AppOptions::default());
    app.push("slow", Behaviour::SlowBuild(30));
    let mut server = app.start();
    let addr = server.url.strip_prefix("http://").unwrap().to_owned();
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    server.wait_for(&acc.deploy_id, Duration::from_secs(60), |d| d.started_at.is_some()).await;

    let mut follow = TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "GET /api/v1/deploys/{}/logs?follow=1 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
        acc.deploy_id.as_str()
    );
    follow.write_all(head.as_bytes()).await.unwrap();
    let mut first = [0u8; 1024];
    let n = follow.read(&mut first).await.unwrap();
    assert!(first[..n].starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&first[..n]));
    let mut idle = TcpStream::connect(&addr).await.unwrap();
    let mut sending = TcpStream::connect(&addr).await.unwrap();
    sending.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopped = Instant::now();
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGTERM);
    }
    for (name, s) in [("idle", &mut idle), ("still sending its head", &mut sending)] {
        let rest = read_until_closed(s, Duration::from_secs(2)).await;
        assert_eq!(rest.as_deref(), Some(&b""[..]), "the {name} connection was not closed at once, without an answer");
    }
    // The stream in flight ends as the server stops: its last chunk, then the close.
    let rest = read_until_closed(&mut follow, Duration::from_secs(10)).await.expect("the follow stream ended");
    assert!(rest.ends_with(b"0\r\n\r\n"), "the follow stream was cut: {:?}", String::from_utf8_lossy(&rest));
    let status = loop {
        if let Some(s) = server.child.try_wait().unwrap() {
            break s;
        }
        assert!(stopped.elapsed() < Duration::from_secs(12), "the server did not exit after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "the server exited with {status}");
    assert!(stopped.elapsed() < Duration::from_secs(5), "SIGTERM took {:?}", stopped.elapsed());
}
