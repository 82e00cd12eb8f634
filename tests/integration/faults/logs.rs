//! Output that would not fit: a migration printing a 300 MB line without a newline, and one
//! printing more lines than a deploy's log keeps. The real server runs the real migration in a
//! one-off container; the log is read back page by page through the API and through
//! `kua-deploy logs`, as a user would.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use futures::StreamExt;
use kua_deploy::api::types::{DeployRequest, FollowItem};
use kua_deploy::model::LogLine;
use kua_deploy::model::{DeployId, Phase, StepName, StepStatus};
use kua_deploy::store::MAX_LOG_LINES;
use serde_json::{json, Value};

use crate::support::{AppOptions, Server, TestApp, TOKEN};

/// The README's rule: a deploy's log keeps its first and its last 10,000 lines.
const LOG_HEAD_LINES: i64 = 10_000;
const LOG_TAIL_LINES: i64 = MAX_LOG_LINES - LOG_HEAD_LINES;

/// `VmRSS` or `VmHWM` (the peak) of a process, in MiB.
fn memory_mib(pid: u32, field: &str) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the server's /proc status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in {status}"));
    line.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0
}

/// A migration (policy `run`) whose command is this busybox shell script.
fn migrating(script: &str) -> TestApp {
    TestApp::new(AppOptions {
        migrations: Some(json!({"paths": ["migrations/"], "policy": "run", "service": "web",
                                "command": ["/bin/busybox", "sh", "-c", script]})),
        ..AppOptions::default()
    })
}

async fn failed_migration(server: &Server, app: &TestApp) -> DeployId {
    let acc = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let d = server.wait_end(&acc.deploy_id).await;
    assert_eq!(d.phase, Phase::Failed, "{d:#?}");
    let migrate = d.step(StepName::Migrate).expect("a migrate step");
    assert_eq!(migrate.status, StepStatus::Failed, "{d:#?}");
    assert!(d.error.as_deref().unwrap_or_default().len() < 1_000, "a one-line error: {:?}", d.error);
    acc.deploy_id
}

/// Every page through the API, `limit` lines at a time, checking what each page says of the next.
async fn all_pages(server: &Server, id: &DeployId, limit: u32) -> (Vec<LogLine>, usize) {
    let (mut lines, mut pages, mut after) = (Vec::new(), 0, 0);
    loop {
        let page = server.client.log_page(id, after, limit).await.unwrap();
        pages += 1;
        assert!(page.lines.len() <= limit as usize);
        assert_eq!(page.next_after, page.lines.last().map_or(after, |l| l.seq));
        after = page.next_after;
        lines.extend(page.lines);
        if !page.more {
            return (lines, pages);
        }
    }
}

fn kua_logs(server: &Server, id: &DeployId, json: bool) -> String {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kua-deploy"));
    cmd.args(["logs", id.as_str(), "--url", &server.url]).env("KUA_ADMIN_TOKEN", TOKEN);
    if json {
        cmd.arg("--json");
    }
    let out = cmd.output().expect("run kua-deploy logs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_300_mb_output_line_is_cut_as_it_is_read_and_the_server_stays_small() {
    const LONG: usize = 300_000_000;
    const END: &str = " end of the long line";
    let script = format!(
        "echo before the long line; /bin/busybox head -c {LONG} /dev/zero | /bin/busybox tr '\\0' x; echo '{END}'; \
         for i in 1 2 3; do echo \"after the long line $i\"; done; \
         echo 'migration 0042 failed, said after the long line' >&2; exit 3"
    );
    let app = migrating(&script);
    let server = app.start();
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = memory_mib(pid, "VmRSS:");

    let id = failed_migration(&server, &app).await;
    let peak = memory_mib(pid, "VmHWM:");
    eprintln!("server RSS idle {idle:.1} MiB, peak {peak:.1} MiB while a {LONG}-byte line went through");
    // What the server holds of a line is bounded (a 64 KiB read and 256 KiB of the line per
    // stream); the rest of its peak is the same as for any deploy. Holding even a third of the
    // line would cross 100 MiB.
    assert!(peak < 100.0, "peak RSS {peak:.1} MiB (idle {idle:.1} MiB) while a {LONG}-byte line was read");

    let (lines, _) = all_pages(&server, &id, 1_000).await;
    // The log as (seq, stream, end of the line), short enough to read in a failure.
    let text: Vec<(i64, &str, &str)> = lines
        .iter()
        .map(|l| (l.seq, l.stream.as_str(), &l.line[l.line.floor_char_boundary(l.line.len().saturating_sub(100))..]))
        .collect();
    let long = lines.iter().position(|l| l.line.starts_with("xxxx")).unwrap_or_else(|| panic!("{text:#?}"));
    let dropped = LONG + END.len() - 3_900;
    let expected = format!("{}… [line cut: {dropped} more bytes dropped]", "x".repeat(3_900));
    assert!(lines[long].line == expected, "one line, cut and marked: {text:#?}");
    assert_eq!(lines[long].stream, "stdout");
    // stdout and stderr are read side by side: only stdout's own order is the script's.
    let before = lines[..long].iter().rev().find(|l| l.stream == "stdout").map(|l| l.line.as_str());
    assert_eq!(before, Some("before the long line"));
    let after: Vec<&str> = lines[long + 1..].iter().filter(|l| l.stream == "stdout").map(|l| l.line.as_str()).collect();
    assert_eq!(after[..3], ["after the long line 1", "after the long line 2", "after the long line 3"], "{text:#?}");
    assert!(
        lines.iter().any(|l| l.stream == "stderr" && l.line == "migration 0042 failed, said after the long line"),
        "{text:#?}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_long_log_keeps_its_head_and_tail_and_pages_once_in_order_through_the_api_and_the_cli() {
    const PRINTED: i64 = 25_000;
    let script = format!(
        "/bin/busybox awk 'BEGIN {{ for (i = 1; i <= {PRINTED}; i++) print \"line \" i }}'; \
         echo 'FATAL: the last words of a failing migration' >&2; exit 1"
    );
    let app = migrating(&script);
    let server = app.start();
    let id = failed_migration(&server, &app).await;

    // Through the API, in pages of 777: every kept line once, in order.
    let (lines, pages) = all_pages(&server, &id, 777).await;
    let kept = (LOG_HEAD_LINES + 1 + LOG_TAIL_LINES) as usize;
    assert_eq!(lines.len(), kept);
    assert_eq!(pages, kept.div_ceil(777));
    assert!(lines.windows(2).all(|w| w[0].seq < w[1].seq), "each line once, in order");
    let head = &lines[..LOG_HEAD_LINES as usize];
    assert!(head.iter().zip(1..).all(|(l, n)| l.seq == n), "the head keeps its numbers from 1");
    assert!(head.iter().any(|l| l.line == "line 1"));
    assert!(head[0].line.starts_with(&format!("deploy {id} of hello")), "{:?}", head[0]);

    // One marker where lines were dropped, saying how many; the tail runs on from it.
    let marker = &lines[LOG_HEAD_LINES as usize];
    let dropped = marker.seq - LOG_HEAD_LINES;
    assert_eq!(marker.stream, "info");
    assert_eq!(
        marker.line,
        format!("[… {dropped} lines dropped here: a deploy's log keeps its first 10000 and its last 10000 lines]")
    );
    assert_eq!(lines.iter().filter(|l| l.line.contains("lines dropped here")).count(), 1);
    let tail = &lines[LOG_HEAD_LINES as usize + 1..];
    assert!(tail.iter().zip(marker.seq + 1..).all(|(l, n)| l.seq == n), "the tail has no gap");
    // The end of a failing command is there: its last lines and its last words.
    let tail_text: Vec<&str> = tail.iter().map(|l| l.line.as_str()).collect();
    assert!(tail_text.contains(&format!("line {PRINTED}").as_str()));
    assert!(tail_text.contains(&"FATAL: the last words of a failing migration"));
    assert!(tail_text.last().unwrap().starts_with("deploy ended: failed"), "{:?}", &tail_text[tail_text.len() - 5..]);
    // Nothing printed was kept twice, and what is missing is what the marker counts.
    let printed: HashSet<&str> = lines.iter().map(|l| l.line.as_str()).filter(|l| l.starts_with("line ")).collect();
    assert_eq!(printed.len() as i64, PRINTED - dropped);

    // The default page, and limits the API refuses with what it allows.
    let page = server.client.logs(&id, 0).await.unwrap();
    assert_eq!((page.lines.len(), page.next_after, page.more), (1_000, 1_000, true));
    let http = server.http();
    for query in ["limit=0", "limit=5001", "limit=ten", "after=-1", "after=x"] {
        let url = format!("{}/api/v1/deploys/{id}/logs?{query}", server.url);
        let resp = http.get(&url).header("authorization", server.auth()).send().await.unwrap();
        assert_eq!(resp.status(), 400, "{query}");
        let body: Value = resp.json().await.unwrap();
        let message = body["error"]["message"].as_str().unwrap_or_default();
        let allowed = if query.starts_with("limit") { "from 1 to 5000" } else { "from 0" };
        assert!(message.contains(allowed), "{query}: {body}");
    }

    // Following from a line number gives what comes after it, then the end.
    let from = lines[lines.len() - 50].seq;
    let mut followed = Vec::new();
    let mut stream = std::pin::pin!(server.client.follow_logs(&id, from));
    while let Some(item) = tokio::time::timeout(Duration::from_secs(10), stream.next()).await.unwrap() {
        match item.unwrap() {
            FollowItem::Line(l) => followed.push(l),
            FollowItem::End { phase, .. } => {
                assert_eq!(phase, Phase::Failed);
                break;
            }
        }
    }
    assert_eq!(followed, lines[lines.len() - 49..]);

    // `kua-deploy logs` follows the pages to the end: as JSON, the same lines; as text, each once.
    let out: Value = serde_json::from_str(&kua_logs(&server, &id, true)).expect("one JSON page");
    let cli: Vec<LogLine> = serde_json::from_value(out["lines"].clone()).unwrap();
    assert_eq!(cli, lines);
    assert_eq!((out["next_after"].as_i64(), out["phase"].as_str()), (Some(lines.last().unwrap().seq), Some("failed")));
    let text = kua_logs(&server, &id, false);
    let printed: Vec<&str> = text.lines().collect();
    assert_eq!(printed.len(), lines.len());
    assert!(printed.iter().zip(&lines).all(|(p, l)| p.ends_with(&l.line)), "the CLI printed the lines in order");
}
