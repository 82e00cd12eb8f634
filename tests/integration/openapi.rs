//! The OpenAPI document checked by tools that know nothing of kua-deploy: `openapi-spec-validator`
//! on the document a live server serves, then `schemathesis` sending generated requests to that
//! server (127.0.0.1 only) and checking every answer against the document: no 5xx, only documented
//! statuses, content types, headers and bodies; and the log follow stream's NDJSON lines, which
//! schemathesis cannot read, each checked against the document's schema with `jsonschema`.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kua_deploy::api::types::DeployRequest;
use kua_deploy::model::Phase;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::support::{AppOptions, TestApp, TOKEN, WEBHOOK_REPO};

/// Runs `python3 -m <module> <args>` in `dir`; a missing module fails the test, naming the fix.
fn python(dir: &Path, module: &str, args: &[&str]) -> Output {
    let out =
        Command::new("python3").arg("-m").arg(module).args(args).current_dir(dir).output().unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}); scripts/install-deps.sh installs what this test needs")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("No module named"),
        "python3 -m {module} is not installed ({}); run scripts/install-deps.sh",
        stderr.trim()
    );
    out
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Operations left out of the generated requests: a trigger would start real deploys, one per
/// accepted example. Its answers are checked by the other integration tests.
const NOT_FUZZED: &[&str] = &["trigger_deploy"];

#[tokio::test(flavor = "multi_thread")]
async fn the_served_openapi_document_is_valid_and_the_live_server_answers_as_it_says() {
    let app = TestApp::new(AppOptions {
        webhook: Some(json!({"repository": WEBHOOK_REPO, "secret_file": "SECRET_FILE"})),
        ..AppOptions::default()
    });
    let server = app.start();
    let work = tempfile::tempdir().unwrap();

    // No token: the document is public, as /healthz is.
    let resp = server.http().get(format!("{}/api/v1/openapi.json", server.url)).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let doc: Value = resp.json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let file = work.path().join("openapi.json");
    std::fs::write(&file, serde_json::to_vec_pretty(&doc).unwrap()).unwrap();

    let out = python(work.path(), "openapi_spec_validator", &[file.to_str().unwrap()]);
    assert!(out.status.success(), "openapi-spec-validator refused the document:\n{}", text(&out));

    // One real deploy first, so the app's progress, history and runtime status, and a deploy's
    // own endpoints, answer with real bodies rather than only 404s.
    let accepted = server.client.deploy(&app.name, &DeployRequest::default()).await.unwrap();
    let deploy = server.wait_end(&accepted.deploy_id).await;
    assert_eq!(deploy.phase, Phase::Succeeded, "{deploy:#?}\n{}", server.log());
    // Path parameters named here take these values in every generated request.
    let config = work.path().join("schemathesis.toml");
    std::fs::write(
        &config,
        format!("[parameters]\n\"path.app\" = \"{}\"\n\"path.id\" = \"{}\"\n", app.name, deploy.deploy_id),
    )
    .unwrap();

    let report = work.path().join("report.json");
    let mut args = vec![
        "--config-file".to_owned(),
        config.to_str().unwrap().to_owned(),
        "run".to_owned(),
        file.to_str().unwrap().to_owned(),
        "--url".to_owned(),
        server.url.clone(),
        "--header".to_owned(),
        format!("Authorization: Bearer {TOKEN}"),
        "--checks".to_owned(),
        "not_a_server_error,status_code_conformance,content_type_conformance,response_headers_conformance,response_schema_conformance"
            .to_owned(),
        // Bounded: at most this many generated requests per operation and phase, one at a time.
        "--max-examples".to_owned(),
        "25".to_owned(),
        "--workers".to_owned(),
        "1".to_owned(),
        "--request-timeout".to_owned(),
        "10".to_owned(),
        "--seed".to_owned(),
        "1".to_owned(),
        "--report".to_owned(),
        "json".to_owned(),
        "--report-json-path".to_owned(),
        report.to_str().unwrap().to_owned(),
    ];
    for op in NOT_FUZZED {
        args.extend(["--exclude-operation-id".to_owned(), (*op).to_owned()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = python(work.path(), "schemathesis.cli", &args);
    let took = started.elapsed();
    let output = text(&out);
    let report: Value = serde_json::from_slice(
        &std::fs::read(&report).unwrap_or_else(|e| panic!("schemathesis wrote no report ({e}):\n{output}")),
    )
    .unwrap();
    let (ops, cases) = (&report["operations"], &report["test_cases"]);
    eprintln!(
        "schemathesis: {} of {} operations tested, {} test cases generated, {:.1} s ({:.1} s by its own clock)",
        ops["tested"],
        ops["total"],
        cases["generated"],
        took.as_secs_f64(),
        report["running_time"].as_f64().unwrap_or_default()
    );
    assert!(
        out.status.success() && report["failures"].as_array().is_some_and(Vec::is_empty),
        "schemathesis found answers that do not match the document:\n{output}\nserver log:\n{}",
        server.log()
    );
    assert_eq!(ops["tested"].as_u64(), ops["total"].as_u64().map(|t| t - NOT_FUZZED.len() as u64), "{output}");
    assert!(cases["generated"].as_u64().unwrap() > 100, "{output}");
    assert!(took < Duration::from_secs(300), "the run took {took:?}");

    // Schemathesis cannot read NDJSON, so the follow stream's lines are checked here, each
    // against the document's schema for them, by a JSON Schema validator (OpenAPI 3.1 schemas
    // are JSON Schema 2020-12).
    let url = format!("{}/api/v1/deploys/{}/logs?follow=1", server.url, deploy.deploy_id);
    let resp = server.http().get(url).header("authorization", server.auth()).send().await.unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let stream = resp.text().await.unwrap();
    assert!(stream.lines().count() > 1, "{stream}");
    let schema = &doc["paths"]["/api/v1/deploys/{id}/logs"]["get"]["responses"]["200"]["content"]
        ["application/x-ndjson"]["schema"];
    let lines = work.path().join("follow.ndjson");
    std::fs::write(&lines, &stream).unwrap();
    let check = r#"
import json, sys, jsonschema
doc, schema = json.load(open(sys.argv[1])), json.loads(sys.argv[2])
validator = jsonschema.Draft202012Validator({**schema, "components": doc["components"]})
for n, line in enumerate(open(sys.argv[3]), 1):
    for error in validator.iter_errors(json.loads(line)):
        sys.exit(f"line {n} does not match the document: {error.message}: {line}")
"#;
    // `jsonschema` comes with openapi-spec-validator.
    let out = Command::new("python3")
        .args(["-c", check, file.to_str().unwrap(), &schema.to_string(), lines.to_str().unwrap()])
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "the follow stream does not match the document (or python3 lacks jsonschema: run scripts/install-deps.sh): {}",
        text(&out)
    );
}
