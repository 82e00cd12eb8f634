//! What `serve --metrics-listen` exposes on `GET /metrics`, in the Prometheus text format: deploys
//! by app and phase, deploy and step durations, webhook deliveries by provider and outcome, the
//! deploys in progress, which apps were last seen drifted, and the build. One [`Metrics`] is made
//! by `app` and handed to whoever counts (the store's end hook, the webhook intake, runtime-status);
//! there is no global registry.
//!
//! Durations come from a deploy's own recorded timestamps at its end, so a deploy ended by a
//! restarted process (startup recovery, a self-deploy's completion) is measured the same way.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::{AppHealth, Deploy, Phase, RuntimeStatus, StepStatus};

/// Deploys take seconds to tens of minutes (a build from scratch).
const DEPLOY_BUCKETS: &[f64] = &[1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 1800.0];
/// Steps go from a fraction of a second (the gate) to minutes (a build, a verify hold).
const STEP_BUCKETS: &[f64] = &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0];

/// The server's metrics. Cheap to clone; every clone counts into the same registry.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    deploys: IntCounterVec,
    deploy_seconds: HistogramVec,
    step_seconds: HistogramVec,
    webhooks: IntCounterVec,
    queue_depth: IntGaugeVec,
    app_drift: IntGaugeVec,
    apps_in_drift: IntGauge,
    app_healthy: IntGaugeVec,
    /// The last known drift of each app, from which the two drift gauges are set.
    drift: Mutex<BTreeMap<String, bool>>,
    /// The last known health of each app (the overview shows it).
    health: Mutex<BTreeMap<String, AppHealth>>,
}

impl Metrics {
    /// The metrics of a server whose registry names `apps`: their deploy counters start at 0, so
    /// a first deploy is an increase a `rate()` sees.
    pub fn new<'a>(apps: impl IntoIterator<Item = &'a str>) -> Metrics {
        let registry = Registry::new();
        let deploys = IntCounterVec::new(
            Opts::new("kua_deploys_total", "Deploys that ended, by app and the phase they ended in."),
            &["app", "phase"],
        )
        .expect("valid metric");
        let deploy_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kua_deploy_duration_seconds",
                "How long deploys ran, from a worker taking them to their end, by app.",
            )
            .buckets(DEPLOY_BUCKETS.to_vec()),
            &["app"],
        )
        .expect("valid metric");
        let step_seconds = HistogramVec::new(
            HistogramOpts::new(
                "kua_deploy_step_duration_seconds",
                "How long the steps of ended deploys ran, by app and step.",
            )
            .buckets(STEP_BUCKETS.to_vec()),
            &["app", "step"],
        )
        .expect("valid metric");
        let webhooks = IntCounterVec::new(
            Opts::new(
                "kua_webhook_deliveries_total",
                "Webhook deliveries by provider and outcome (queued, duplicate, ignored per app; the error code \
                 of the answer, such as unauthorized or bad_request, when refused).",
            ),
            &["provider", "outcome"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new("kua_deploy_queue_depth", "Deploys not yet ended, by phase, at the time of the scrape."),
            &["phase"],
        )
        .expect("valid metric");
        let app_drift = IntGaugeVec::new(
            Opts::new(
                "kua_app_drift",
                "1 when what runs was last seen to differ from what the app's last successful deploy verified \
                 (a runtime-status answer, or a deploy that failed after its recreate began); 0 when last seen \
                 matching (or a deploy just verified it); absent until known.",
            ),
            &["app"],
        )
        .expect("valid metric");
        let apps_in_drift =
            IntGauge::new("kua_apps_in_drift", "How many apps kua_app_drift says are drifted.").expect("valid metric");
        let app_healthy = IntGaugeVec::new(
            Opts::new(
                "kua_app_healthy",
                "1 when every service of the app was last seen running (and healthy where it has a \
                 healthcheck); 0 when one was starting, unhealthy, missing, or its host could not be read; \
                 absent until known.",
            ),
            &["app"],
        )
        .expect("valid metric");
        let build = IntGaugeVec::new(
            Opts::new("kua_build_info", "The running kua-deploy: its version and git commit (always 1)."),
            &["version", "commit"],
        )
        .expect("valid metric");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), option_env!("KUA_GIT_COMMIT").unwrap_or("unknown")])
            .set(1);
        for app in apps {
            for phase in Phase::ALL.iter().filter(|p| p.is_terminal()) {
                deploys.with_label_values(&[app, phase.as_str()]);
            }
        }
        for phase in Phase::ALL.iter().filter(|p| !p.is_terminal()) {
            queue_depth.with_label_values(&[phase.as_str()]);
        }
        let collectors: [Box<dyn prometheus::core::Collector>; 9] = [
            Box::new(deploys.clone()),
            Box::new(deploy_seconds.clone()),
            Box::new(step_seconds.clone()),
            Box::new(webhooks.clone()),
            Box::new(queue_depth.clone()),
            Box::new(app_drift.clone()),
            Box::new(apps_in_drift.clone()),
            Box::new(app_healthy.clone()),
            Box::new(build),
        ];
        for c in collectors {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            inner: Arc::new(Inner {
                registry,
                deploys,
                deploy_seconds,
                step_seconds,
                webhooks,
                queue_depth,
                app_drift,
                apps_in_drift,
                app_healthy,
                drift: Mutex::new(BTreeMap::new()),
                health: Mutex::new(BTreeMap::new()),
            }),
        }
    }

    /// A deploy ended (once per deploy: the store's end hook): its phase, its duration and its
    /// steps' from its own timestamps, and what its end says about drift.
    pub fn deploy_ended(&self, d: &Deploy) {
        let i = &self.inner;
        let app = d.app.as_str();
        i.deploys.with_label_values(&[app, d.phase.as_str()]).inc();
        if let Some(s) = seconds(d.started_at.as_deref(), d.finished_at.as_deref()) {
            i.deploy_seconds.with_label_values(&[app]).observe(s);
        }
        for step in &d.steps {
            if let Some(s) = seconds(step.started_at.as_deref(), step.finished_at.as_deref()) {
                i.step_seconds.with_label_values(&[app, step.name.as_str()]).observe(s);
            }
        }
        // Succeeded: what runs is what it just verified. Rolled back: the previous images were
        // verified back. Failed once the recreate began: what runs was not verified. Any other end
        // touched nothing that runs.
        let recreate_began = d
            .step(crate::model::StepName::Recreate)
            .is_some_and(|s| !matches!(s.status, StepStatus::Pending | StepStatus::Skipped));
        match d.phase {
            Phase::Succeeded | Phase::RolledBack => self.set_drift(app, false),
            Phase::Failed if recreate_began => self.set_drift(app, true),
            _ => {}
        }
    }

    /// What a look at `app`'s containers found (a runtime-status answer, the runtime monitor).
    pub fn observe_runtime(&self, app: &str, status: &RuntimeStatus) {
        self.set_drift(app, status.drift);
        self.set_health(app, status.health());
    }

    /// `app`'s host or engine could not be read: its health is unknown, its drift as it was.
    pub fn runtime_unreadable(&self, app: &str) {
        self.set_health(app, AppHealth::Unreachable);
    }

    fn set_health(&self, app: &str, health: AppHealth) {
        let i = &self.inner;
        i.health.lock().unwrap_or_else(|e| e.into_inner()).insert(app.to_owned(), health);
        i.app_healthy.with_label_values(&[app]).set(i64::from(health == AppHealth::Healthy));
    }

    /// The last known health of `app`: none until its containers were looked at.
    pub fn health(&self, app: &str) -> Option<AppHealth> {
        self.inner.health.lock().unwrap_or_else(|e| e.into_inner()).get(app).copied()
    }

    /// Sets the last known drift of `app`.
    fn set_drift(&self, app: &str, drift: bool) {
        let i = &self.inner;
        let mut known = i.drift.lock().unwrap_or_else(|e| e.into_inner());
        known.insert(app.to_owned(), drift);
        i.app_drift.with_label_values(&[app]).set(i64::from(drift));
        i.apps_in_drift.set(known.values().filter(|d| **d).count() as i64);
    }

    /// The last known drift of `app`: none until a runtime-status answer looked.
    pub fn drift(&self, app: &str) -> Option<bool> {
        self.inner.drift.lock().unwrap_or_else(|e| e.into_inner()).get(app).copied()
    }

    /// One webhook delivery's outcome (per app it was for, or once when refused).
    pub fn webhook_delivery(&self, provider: &str, outcome: &str) {
        self.inner.webhooks.with_label_values(&[provider, outcome]).inc();
    }

    /// The text of a scrape, with the deploys not yet ended counted by `depth` now: a phase it
    /// gives no count for keeps its last value (a storage error does not zero it).
    pub fn render(&self, depth: &[(Phase, usize)]) -> String {
        for (phase, n) in depth {
            self.inner.queue_depth.with_label_values(&[phase.as_str()]).set(*n as i64);
        }
        let mut out = Vec::new();
        // Encoding into memory fails only on a metric the registry itself built wrong.
        if let Err(e) = TextEncoder::new().encode(&self.inner.registry.gather(), &mut out) {
            tracing::error!("cannot encode the metrics: {e}");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Seconds from one RFC 3339 time to another; `None` unless both are there and in order.
fn seconds(from: Option<&str>, to: Option<&str>) -> Option<f64> {
    let parse = |s: &str| chrono::DateTime::parse_from_rfc3339(s).ok();
    let (from, to) = (parse(from?)?, parse(to?)?);
    let ms = (to - from).num_milliseconds();
    (ms >= 0).then(|| ms as f64 / 1000.0)
}

/// The router of the metrics listener: `GET /metrics` only. `depth` counts the deploys in each
/// phase that has not ended, at scrape time.
pub fn router<F>(metrics: Metrics, depth: F) -> Router
where
    F: Fn() -> Vec<(Phase, usize)> + Clone + Send + Sync + 'static,
{
    Router::new()
        .route(
            "/metrics",
            get(move || async move {
                let text = metrics.render(&depth());
                ([(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)], text).into_response()
            }),
        )
        .fallback(|| async { not_found() })
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "only GET /metrics is served here\n").into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deploy(phase: &str, steps: serde_json::Value) -> Deploy {
        serde_json::from_value(serde_json::json!({
            "deploy_id": "d1", "app": "hello", "phase": phase,
            "trigger": {"source": "api", "delivery": null, "ref": "refs/heads/main", "requested_commit": null},
            "commit_before": null, "commit": null,
            "created_at": "2026-01-01T00:00:00Z", "started_at": "2026-01-01T00:00:01Z",
            "finished_at": "2026-01-01T00:00:04.500Z",
            "steps": steps, "images": {}, "previous_images": {}, "verify": null, "error": null
        }))
        .unwrap()
    }

    fn line<'a>(text: &'a str, prefix: &str) -> &'a str {
        text.lines().find(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no {prefix} in:\n{text}"))
    }

    #[test]
    fn an_ended_deploy_counts_its_phase_and_observes_its_durations() {
        let m = Metrics::new(["hello"]);
        let text = m.render(&[]);
        assert_eq!(line(&text, r#"kua_deploys_total{app="hello",phase="succeeded"}"#).split(' ').nth(1), Some("0"));
        let steps = serde_json::json!([
            {"name": "git_pull", "status": "succeeded", "started_at": "2026-01-01T00:00:01Z",
             "finished_at": "2026-01-01T00:00:02Z", "detail": ""},
            {"name": "recreate", "status": "succeeded", "started_at": "2026-01-01T00:00:02Z",
             "finished_at": "2026-01-01T00:00:03Z", "detail": ""},
            {"name": "verify", "status": "pending", "started_at": null, "finished_at": null, "detail": ""}
        ]);
        m.deploy_ended(&deploy("succeeded", steps));
        let text = m.render(&[(Phase::Queued, 2)]);
        assert!(text.contains("kua_deploys_total{app=\"hello\",phase=\"succeeded\"} 1"), "{text}");
        assert!(text.contains("kua_deploy_duration_seconds_sum{app=\"hello\"} 3.5"), "{text}");
        assert!(text.contains("kua_deploy_step_duration_seconds_count{app=\"hello\",step=\"git_pull\"} 1"), "{text}");
        assert!(!text.contains("step=\"verify\""), "a step that never ran has no duration: {text}");
        assert!(text.contains("kua_deploy_queue_depth{phase=\"queued\"} 2"), "{text}");
        assert!(text.contains("kua_app_drift{app=\"hello\"} 0"), "{text}");
        assert!(text.contains("kua_build_info{commit="), "{text}");
    }

    #[test]
    fn drift_follows_the_last_thing_known_of_each_app() {
        let m = Metrics::new(["a", "b"]);
        assert!(!m.render(&[]).contains("kua_app_drift{"), "unknown drift is absent");
        m.set_drift("a", true);
        m.set_drift("b", true);
        assert!(m.render(&[]).contains("kua_apps_in_drift 2"));
        m.set_drift("a", false);
        let text = m.render(&[]);
        assert!(text.contains("kua_apps_in_drift 1") && text.contains("kua_app_drift{app=\"a\"} 0"), "{text}");
        let recreated = serde_json::json!([{"name": "recreate", "status": "failed", "started_at": null,
                                            "finished_at": null, "detail": ""}]);
        let mut failed = deploy("failed", recreated);
        failed.app = crate::model::AppName::parse("a").unwrap();
        m.deploy_ended(&failed);
        assert!(m.render(&[]).contains("kua_apps_in_drift 2"));
    }

    #[test]
    fn health_is_absent_until_looked_at_then_follows_each_look() {
        let m = Metrics::new(["a"]);
        assert_eq!(m.health("a"), None);
        assert!(!m.render(&[]).contains("kua_app_healthy{"), "unknown health is absent");
        m.set_health("a", AppHealth::Healthy);
        assert!(m.render(&[]).contains("kua_app_healthy{app=\"a\"} 1"));
        m.runtime_unreadable("a");
        assert_eq!(m.health("a"), Some(AppHealth::Unreachable));
        assert!(m.render(&[]).contains("kua_app_healthy{app=\"a\"} 0"));
    }
}
