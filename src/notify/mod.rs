//! Telling people what happened: the deployed commit's status on the forge (`pending` when a
//! deploy starts, `success`/`failure` when it ends, context `kua-deploy/<app>`) and notifications
//! to webhook targets (`json`, `slack`, `ntfy`) when a deploy ends or awaits approval.
//!
//! Everything is sent from the store's lifecycle hooks (`on_deploy_started`, `on_deploy_parked`,
//! `on_deploy_end`), which fire once per transition after its commit; each hook only spawns a task
//! on the notifier's tracker, so a slow or dead target never delays or fails a deploy. The tasks
//! retry (`delivery`), write each attempt to the deploy's log with secrets redacted, and at
//! shutdown get a short grace before they are dropped.

pub mod delivery;
pub mod status;
pub mod webhook;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{AppConfig, Registry, StatusConfig};
use crate::host::Redactor;
use crate::model::{Deploy, DeployId, LogSink, Phase, Stream};
use crate::store::{LogWriter, Store};

/// One HTTP request to send: built by `status` and `webhook`, sent by `delivery`.
#[derive(Debug, Clone)]
pub struct Request {
    pub url: String,
    pub headers: Vec<(&'static str, String)>,
    pub content_type: &'static str,
    pub body: Vec<u8>,
}

/// How long a `pending` status waits for a started deploy to know its commit (git_pull finds it).
const COMMIT_WAIT: Duration = Duration::from_secs(600);

/// Sends commit statuses and notifications for the deploys of one server. Cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    registry: Arc<Registry>,
    redactor: Redactor,
    http: reqwest::Client,
    tracker: TaskTracker,
    /// Fired when the shutdown grace is over: what is still being sent is dropped.
    stop: CancellationToken,
    /// Hooks may be called from outside the runtime (the store's maintenance thread).
    runtime: tokio::runtime::Handle,
    /// Per deploy, the lock its statuses are sent under: taken by `pending` in the start hook,
    /// so the end's status waits for it and the forge sees them in order.
    status_order: Mutex<HashMap<DeployId, Arc<tokio::sync::Mutex<()>>>>,
}

impl Notifier {
    /// A notifier for the apps of `registry`; call inside the Tokio runtime. The HTTP client
    /// trusts the machine's CA store, as the CLI's does.
    pub fn new(store: Store, registry: Arc<Registry>, redactor: Redactor) -> anyhow::Result<Notifier> {
        let http = reqwest::Client::builder()
            .use_rustls_tls()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("cannot set up the HTTP client for notifications: {e}"))?;
        // Every URL and token a notification uses is kept out of every line written.
        let mut secrets = Vec::new();
        for app in registry.apps.values() {
            for t in &app.notify {
                secrets.extend(delivery::secret_parts(&t.url));
            }
            secrets.extend(app.status.as_ref().and_then(|s| s.token.read()));
        }
        let redactor = redactor.with_secrets(secrets);
        Ok(Notifier {
            inner: Arc::new(Inner {
                store,
                registry,
                redactor,
                http,
                tracker: TaskTracker::new(),
                stop: CancellationToken::new(),
                runtime: tokio::runtime::Handle::current(),
                status_order: Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The redactor with every notification secret added, for whoever logs about them.
    pub fn redactor(&self) -> &Redactor {
        &self.inner.redactor
    }

    /// Registers the store hooks: from now on every start, park and end is told.
    pub fn register(&self) {
        let n = self.clone();
        self.inner.store.on_deploy_started(Arc::new(move |id, _| n.started(id)));
        let n = self.clone();
        self.inner.store.on_deploy_parked(Arc::new(move |id, phase| n.event(id, phase)));
        let n = self.clone();
        self.inner.store.on_deploy_end(Arc::new(move |id, phase| n.ended(id, phase)));
    }

    /// Lets what is being sent finish within `grace`, then drops the rest (each says so in its
    /// deploy's log).
    pub async fn shutdown(&self, grace: Duration) {
        let tracker = &self.inner.tracker;
        tracker.close();
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!(
                pending = tracker.len(),
                "notifications still being sent after {}s: dropping them",
                grace.as_secs()
            );
            self.inner.stop.cancel();
            // Each dropped one writes its line; that is quick.
            let _ = tokio::time::timeout(Duration::from_secs(1), tracker.wait()).await;
        }
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.inner.tracker.spawn_on(task, &self.inner.runtime);
    }

    fn order_lock(&self, id: &DeployId) -> Arc<tokio::sync::Mutex<()>> {
        let mut m = self.inner.status_order.lock().unwrap_or_else(|e| e.into_inner());
        m.entry(id.clone()).or_default().clone()
    }

    /// `start`: the deployed commit goes `pending`.
    fn started(&self, id: &DeployId) {
        let lock = self.order_lock(id);
        let held = lock.clone().try_lock_owned();
        let (n, id) = (self.clone(), id.clone());
        self.spawn(async move {
            let _guard = match held {
                Ok(g) => g,
                Err(_) => lock.lock_owned().await,
            };
            n.pending(&id).await;
        });
    }

    /// `park` and ends: the notifications, then (for an end) the final status.
    fn event(&self, id: &DeployId, phase: Phase) {
        let Some(event) = webhook::event_of(phase) else { return };
        let (n, id) = (self.clone(), id.clone());
        self.spawn(async move {
            let Some((d, app)) = n.deploy_and_app(&id) else { return };
            let log = Arc::new(LogWriter::new(n.inner.store.clone(), id.clone()));
            for target in app.notify.iter().filter(|t| t.events.contains(&event)) {
                let req = webhook::request(target, &d, event, n.link(&id).as_deref());
                let what = format!("notify {} {}", event.as_str(), delivery::shown_url(&target.url));
                let (n, log) = (n.clone(), log.clone());
                n.clone().spawn(async move {
                    let i = &n.inner;
                    delivery::deliver(&i.http, &req, &what, log.as_ref(), &i.redactor, &i.stop).await;
                });
            }
        });
    }

    fn ended(&self, id: &DeployId, phase: Phase) {
        self.event(id, phase);
        let lock = self.order_lock(id);
        let (n, id) = (self.clone(), id.clone());
        self.spawn(async move {
            let guard = lock.lock_owned().await;
            n.end_status(&id, phase).await;
            drop(guard);
            n.inner.status_order.lock().unwrap_or_else(|e| e.into_inner()).remove(&id);
        });
    }

    fn deploy_and_app(&self, id: &DeployId) -> Option<(Deploy, AppConfig)> {
        let d = match self.inner.store.deploy(id) {
            Ok(Some(d)) => d,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(deploy = %id, "cannot read the deploy to notify of it: {e}");
                return None;
            }
        };
        let app = self.inner.registry.apps.get(&d.app)?.clone();
        Some((d, app))
    }

    /// Where a person looks at the deploy, when the registry says where this server is reached.
    fn link(&self, id: &DeployId) -> Option<String> {
        self.inner.registry.public_url.as_ref().map(|u| format!("{u}/api/v1/deploys/{id}"))
    }

    async fn pending(&self, id: &DeployId) {
        let Some((_, app)) = self.deploy_and_app(id) else { return };
        let Some(cfg) = app.status.clone() else { return };
        // An API release learns its commit in git_pull, just after the start.
        let deadline = tokio::time::Instant::now() + COMMIT_WAIT;
        let d = loop {
            let mut watch = self.inner.store.watch(id);
            let Ok(Some(d)) = self.inner.store.deploy(id) else { return };
            if d.commit.is_some() {
                break d;
            }
            if d.phase != Phase::Running || tokio::time::Instant::now() > deadline {
                return;
            }
            tokio::select! {
                _ = watch.changed() => {}
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = self.inner.stop.cancelled() => return,
            }
        };
        self.send_status(&d, &cfg, status::State::Pending, &format!("deploying {}", app.name)).await;
    }

    async fn end_status(&self, id: &DeployId, phase: Phase) {
        let Some((d, app)) = self.deploy_and_app(id) else { return };
        let Some(cfg) = app.status.clone() else { return };
        // A deploy no worker ran never set `pending`: its commit is not the forge's business.
        if d.started_at.is_none() {
            return;
        }
        let why = webhook::event_of(phase).and_then(|e| webhook::reason(&d, e));
        let text = match why {
            Some(why) => format!("{phase}: {why}"),
            None => phase.to_string(),
        };
        self.send_status(&d, &cfg, status::State::of(phase), &text).await;
    }

    async fn send_status(&self, d: &Deploy, cfg: &StatusConfig, state: status::State, text: &str) {
        let Some(sha) = &d.commit else { return };
        let log = LogWriter::new(self.inner.store.clone(), d.deploy_id.clone());
        let what = format!("commit status {state:?} on {} {}", cfg.forge.as_str(), delivery::shown_url(&cfg.api));
        let Some(token) = cfg.token.read() else {
            log.line(
                Stream::Info,
                &format!("{what}: not sent: the forge token ({}) is unset or empty", token_source(&cfg.token)),
            );
            return;
        };
        let redactor = self.inner.redactor.with_secrets([token.clone()]);
        let context = format!("kua-deploy/{}", d.app);
        let req = status::request(
            cfg,
            &token,
            sha,
            state,
            &context,
            &status::description(text),
            self.link(&d.deploy_id).as_deref(),
        );
        delivery::deliver(&self.inner.http, &req, &what, &log, &redactor, &self.inner.stop).await;
    }
}

fn token_source(s: &crate::config::SecretSource) -> String {
    match s {
        crate::config::SecretSource::Env(name) => format!("environment variable {name}"),
        crate::config::SecretSource::File(path) => format!("file {}", path.display()),
    }
}
