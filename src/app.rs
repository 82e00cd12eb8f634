//! `serve`: takes the state dir's lock, opens and checks the store, recovers what a previous
//! process left, starts the queue and the router, and on SIGINT/SIGTERM stops promptly (running
//! deploys end `interrupted`) and closes the store (checkpoint, backup).

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::tls::{ServerTls, TlsFiles};
use crate::api::{self, listener, ApiState};
use crate::config::{HostSpec, Registry, SecretSource};
use crate::docker::Docker;
use crate::host::{Host, Redactor, SshPool};
use crate::metrics::{self, Metrics};
use crate::model::{DeployId, Phase};
use crate::notify::Notifier;
use crate::pipeline::{self, queue::Queue};
use crate::selfupdate;
use crate::store::Store;
use crate::target::compose::ComposeTargets;
use crate::web;

/// Where `serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8790";

/// How long notifications still being sent at shutdown may take before they are dropped.
const NOTIFY_GRACE: Duration = Duration::from_secs(3);

/// `kua-deploy serve` options.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// The registry of apps.
    #[arg(long, env = "KUA_CONFIG", default_value = crate::config::DEFAULT_PATH)]
    pub config: PathBuf,
    /// Where SQLite state (and a generated admin token) live.
    #[arg(long, env = "KUA_STATE_DIR", default_value = "./kua-state")]
    pub state_dir: PathBuf,
    /// Address to listen on; port 0 picks a free port (printed at start).
    #[arg(long, env = "KUA_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: String,
    /// File holding the admin token, used when KUA_ADMIN_TOKEN is not set.
    #[arg(long, env = "KUA_ADMIN_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// File holding the read-only viewer token (web page and API: reads only), used when
    /// KUA_VIEWER_TOKEN is not set. No viewer token unless one is given.
    #[arg(long, env = "KUA_VIEWER_TOKEN_FILE")]
    pub viewer_token_file: Option<PathBuf>,
    /// Seconds a self-deploy waits to be replaced by its transient container before it ends the
    /// deploy `failed` (and stops the transient container).
    #[arg(long = "handoff-ceiling", env = "KUA_HANDOFF_CEILING_S", default_value_t = selfupdate::HANDOFF_CEILING.as_secs(),
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub handoff_ceiling_s: u64,
    /// Seconds between two looks at every app's containers (drift and health on the web page's
    /// overview and in the metrics); 0 turns the monitor off (then only runtime-status looks).
    #[arg(long = "runtime-check-every", env = "KUA_RUNTIME_CHECK_S", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(0..=86400))]
    pub runtime_check_s: u64,
    /// Serve HTTPS with this PEM certificate chain (the server's certificate first); needs
    /// --tls-key.
    #[arg(long, env = "KUA_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, env = "KUA_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Serve Prometheus metrics on GET /metrics at this address (a listener of its own, plain
    /// HTTP, no token: keep it on loopback or a private network); port 0 picks a free port
    /// (printed at start). Off unless given.
    #[arg(long, env = "KUA_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// The server's log on stderr: `text` (colours only on a terminal) or `json` (one object a line).
    #[arg(long, env = "KUA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How the server writes its log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What `serve` needs, already loaded and checked.
pub struct Settings {
    pub registry: Arc<Registry>,
    pub state_dir: PathBuf,
    pub admin_token: String,
    /// The read-only token, if one is set.
    pub viewer_token: Option<String>,
    /// See [`ServeArgs::handoff_ceiling_s`].
    pub handoff_ceiling: Duration,
    /// How often the runtime monitor looks at every app; `None`: never.
    pub runtime_check: Option<Duration>,
    /// HTTPS, when a certificate was given; else plain HTTP.
    pub tls: Option<ServerTls>,
    /// The metrics listener, bound, when `--metrics-listen` was given.
    pub metrics_listener: Option<TcpListener>,
}

/// The admin token: `KUA_ADMIN_TOKEN`, else the token file, else `<state-dir>/admin-token`,
/// generated (mode 0600) on first start so a fresh install is never open.
pub fn resolve_admin_token(state_dir: &Path, token_file: Option<&Path>) -> anyhow::Result<String> {
    if let Ok(t) = std::env::var("KUA_ADMIN_TOKEN") {
        let t = t.trim().to_owned();
        anyhow::ensure!(t.len() >= 16, "KUA_ADMIN_TOKEN is shorter than 16 characters; use a long random token");
        return Ok(t);
    }
    if let Some(f) = token_file {
        let t = std::fs::read_to_string(f).with_context(|| format!("cannot read the token file {}", f.display()))?;
        let t = t.trim().to_owned();
        anyhow::ensure!(t.len() >= 16, "the token in {} is shorter than 16 characters", f.display());
        return Ok(t);
    }
    let f = state_dir.join("admin-token");
    if let Ok(t) = std::fs::read_to_string(&f) {
        if t.trim().len() >= 16 {
            return Ok(t.trim().to_owned());
        }
    }
    std::fs::create_dir_all(state_dir).with_context(|| format!("cannot create {}", state_dir.display()))?;
    let token = format!("{}{}", uuid::Uuid::new_v4().simple(), uuid::Uuid::new_v4().simple());
    write_private(&f, &token).with_context(|| format!("cannot write {}", f.display()))?;
    tracing::info!("generated an admin token in {}", f.display());
    Ok(token)
}

/// The viewer token: `KUA_VIEWER_TOKEN`, else the viewer token file, else none.
pub fn resolve_viewer_token(token_file: Option<&Path>, admin_token: &str) -> anyhow::Result<Option<String>> {
    let token = match (std::env::var("KUA_VIEWER_TOKEN"), token_file) {
        (Ok(t), _) => t.trim().to_owned(),
        (Err(_), Some(f)) => std::fs::read_to_string(f)
            .with_context(|| format!("cannot read the viewer token file {}", f.display()))?
            .trim()
            .to_owned(),
        (Err(_), None) => return Ok(None),
    };
    anyhow::ensure!(token.len() >= 16, "the viewer token is shorter than 16 characters; use a long random token");
    anyhow::ensure!(
        token != admin_token,
        "the viewer token equals the admin token; give the viewer a token of its own"
    );
    Ok(Some(token))
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())?;
    f.write_all(b"\n")
}

/// Serves the API on `listener` until `shutdown` resolves; then stops running deploys and returns.
pub async fn serve(
    settings: Settings,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Store::open(&settings.state_dir)?;
    serve_store(settings, store, listener, shutdown).await
}

/// [`serve`] on a store already opened (and so locked and checked).
pub async fn serve_store(
    settings: Settings,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let result = serve_inner(settings, store.clone(), listener, shutdown).await;
    store.close();
    result
}

async fn serve_inner(
    settings: Settings,
    store: Store,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    store.on_deploy_end(Arc::new(|id, phase| tracing::info!(deploy = %id, "deploy ended: {phase}")));
    let metrics = Metrics::new(settings.registry.apps.keys().map(|a| a.as_str()));
    let counting = count_deploy_ends(&store, &metrics);
    let mut secrets: Vec<String> =
        settings.registry.apps.values().filter_map(|a| a.webhook.as_ref()?.secret.read()).collect();
    secrets.push(settings.admin_token.clone());
    secrets.extend(settings.viewer_token.clone());
    let secret_env = settings.registry.apps.values().filter_map(|a| match &a.webhook.as_ref()?.secret {
        SecretSource::Env(name) => Some(name.clone()),
        SecretSource::File(_) => None,
    });
    let secret_env = secret_env.chain(["KUA_ADMIN_TOKEN".to_owned()]).collect::<Vec<_>>();
    let mut redactor = Redactor::new(secrets).with_secret_env(secret_env);
    match std::env::current_exe() {
        Ok(exe) => redactor = redactor.with_child_guard(exe),
        Err(e) => tracing::warn!("cannot find kua-deploy's own binary ({e}): commands will not die with the server"),
    }
    let ssh_pool = SshPool::new(&settings.state_dir.join("ssh")).with_context(|| {
        format!("cannot make the private directory for ssh sockets under {}", settings.state_dir.display())
    })?;
    // Kept here as well: the store's hooks hold the redactor (and so the pool) for the store's
    // whole life, so the pool is closed explicitly at stop rather than when the last clone goes.
    let ssh_pool = Arc::new(ssh_pool);
    redactor = redactor.with_ssh_pool(ssh_pool.clone());
    // Before recovery, so the deploys it ends are reported too.
    let notifier = Notifier::new(store.clone(), settings.registry.clone(), redactor.clone())?;
    notifier.register();
    let redactor = notifier.redactor().clone();
    let orphans = store.recover_orphans()?;
    for d in &orphans.interrupted {
        tracing::warn!(deploy = %d.deploy_id, app = %d.app, "a deploy was left running by a previous process before its recreate: now interrupted");
    }
    for d in &orphans.resume {
        tracing::warn!(deploy = %d.deploy_id, app = %d.app, "a deploy was left in recreate, verify or rollback by a previous process: resuming it");
    }
    let stop = CancellationToken::new();
    let local = Host::new(HostSpec::Local, redactor.clone());
    let self_target =
        selfupdate::discover(&settings.registry, &Docker::new(local.clone()), settings.handoff_ceiling).await;
    match &self_target {
        Some(t) => tracing::info!(app = %t.app, service = %t.service, "running as the self app's container"),
        None => tracing::debug!("not running in a self app's container"),
    }
    let targets = Arc::new(ComposeTargets { runs_dir: settings.state_dir.join("runs") });
    let queue = Queue::new(
        store.clone(),
        settings.registry.clone(),
        redactor.clone(),
        stop.clone(),
        self_target.clone(),
        settings.handoff_ceiling,
        targets,
    );
    queue.resume(orphans.resume);
    queue.resume_queued()?;
    // A self-recreate this process is the result of is ended in the background: the server must
    // answer (its healthcheck, the client riding through the restart) while it is judged. What
    // was queued behind it runs once it has ended.
    {
        let (queue, registry) = (queue.clone(), settings.registry.clone());
        tokio::spawn(async move {
            let witness = selfupdate::Witness::new(local, self_target);
            pipeline::complete::complete_handoffs(&store, &witness, &registry).await;
            if let Err(e) = queue.resume_queued() {
                tracing::error!("cannot resume the queue after a self-recreate: {e}");
            }
        });
    }
    if let Some(every) = settings.runtime_check {
        tokio::spawn(pipeline::monitor::monitor(queue.clone(), metrics.clone(), every, stop.clone()));
    }
    let state = ApiState {
        queue: queue.clone(),
        admin_token: Arc::new(settings.admin_token),
        viewer_token: settings.viewer_token.map(Arc::new),
        redactor,
        shutdown: stop.clone(),
        metrics: metrics.clone(),
    };
    // The web page's routes first: the API's router brings the fallback (a JSON 404).
    let router = web::router(web::WebState::new(state.clone(), settings.tls.is_some())).merge(api::router(state));
    let graceful = {
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    };
    // Running deploys are stopped first, so a follow stream sees them end before the server goes.
    let drain = {
        let queue = queue.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            stop.cancelled().await;
            queue.shutdown(Duration::from_secs(8)).await;
            // What the stopped deploys' ends are telling people gets a moment, never a wait.
            notifier.shutdown(NOTIFY_GRACE).await;
        })
    };
    let open_files = listener::open_file_limit().unwrap_or(1024);
    let limits = listener::Limits::for_open_files(open_files, settings.registry.apps.len());
    tracing::info!(
        open_files,
        max_connections = limits.max_connections,
        header_read_timeout_s = limits.header_read_timeout.as_secs(),
        idle_timeout_s = limits.idle_timeout.as_secs(),
        body_read_timeout_s = limits.body_read_timeout.as_secs(),
        "connection limits"
    );
    // Ended with the server, so that no handle on the store outlives it.
    let mut scraping = None;
    if let Some(scrapes) = settings.metrics_listener {
        let store = queue.store().clone();
        let depth = move || {
            let active = Phase::ALL.iter().filter(|p| !p.is_terminal());
            active.filter_map(|p| store.in_phase(*p).ok().map(|d| (*p, d.len()))).collect::<Vec<_>>()
        };
        // A few scrapers at most: a small cap of its own, the API's timeouts.
        let limits = listener::Limits { max_connections: 32, ..limits };
        let stop = stop.clone();
        scraping =
            Some(tokio::spawn(listener::serve(scrapes, metrics::router(metrics, depth), limits, None, async move {
                stop.cancelled().await
            })));
    }
    let server = listener::serve(listener, router, limits, settings.tls, graceful);
    // Follow streams end with the shutdown token; this bounds anything else a client holds open.
    let deadline = async {
        stop.cancelled().await;
        tokio::time::sleep(Duration::from_secs(10)).await;
    };
    tokio::select! {
        _ = server => {}
        _ = deadline => tracing::warn!("closing the connections still open after 10s"),
    }
    let _ = drain.await;
    counting.abort();
    if let Some(task) = scraping {
        task.abort();
    }
    ssh_pool.close();
    Ok(())
}

/// Counts each deploy's end into `metrics`. The end hook only names the deploy (a hook must be
/// quick, and one holding the store would keep it open for ever); a task reads it and counts.
fn count_deploy_ends(store: &Store, metrics: &Metrics) -> tokio::task::JoinHandle<()> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<DeployId>();
    store.on_deploy_end(Arc::new(move |id, _| {
        let _ = tx.send(id.clone());
    }));
    let (store, metrics) = (store.clone(), metrics.clone());
    tokio::spawn(async move {
        while let Some(id) = rx.recv().await {
            match store.deploy(&id) {
                Ok(Some(d)) => metrics.deploy_ended(&d),
                Ok(None) => {}
                Err(e) => tracing::warn!(deploy = %id, "cannot read an ended deploy for the metrics: {e}"),
            }
        }
    })
}

/// `kua-deploy serve`: loads the registry, takes the state dir's lock, opens and checks the store,
/// binds, prints where it listens (only then: a script waiting for that line gets a working
/// server), serves until a signal.
pub async fn run(args: ServeArgs) -> anyhow::Result<i32> {
    let registry = match Registry::load(&args.config) {
        Ok(r) => r,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "fix the registry (check it with `kua-deploy check-config {}`) and start again",
                args.config.display()
            );
            return Ok(2);
        }
    };
    let tls = match TlsFiles::pair(args.tls_cert.clone(), args.tls_key.clone()) {
        Ok(files) => files,
        Err(msg) => {
            eprintln!("error: {msg}");
            return Ok(2);
        }
    };
    // Before the lock and the bind: a certificate that cannot be used is found at once.
    let tls = tls.as_ref().map(ServerTls::load).transpose()?;
    let store = Store::open(&args.state_dir)?;
    let admin_token = resolve_admin_token(&args.state_dir, args.token_file.as_deref())?;
    let viewer_token = resolve_viewer_token(args.viewer_token_file.as_deref(), &admin_token)?;
    match listener::raise_open_file_limit() {
        Ok(f) if f.soft > f.before => tracing::info!("open-file limit raised from {} to {}", f.before, f.soft),
        Ok(f) => tracing::info!("open-file limit {} (the hard limit)", f.soft),
        Err(e) => tracing::warn!("cannot raise the open-file limit to the hard one: {e}; connections are capped lower"),
    }
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}; pass another --listen address", args.listen))?;
    let addr = listener.local_addr()?;
    let url = format!("{}://{addr}", if tls.is_some() { "https" } else { "http" });
    store.set_listen(&url);
    let metrics_listener =
        match &args.metrics_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
                format!("cannot listen on {addr} for metrics; pass another --metrics-listen address")
            })?),
            None => None,
        };
    // Tests and scripts read this line to find a port-0 server.
    println!("kua-deploy listening on {url}");
    if let Some(m) = &metrics_listener {
        // The second line, only with --metrics-listen: where to scrape.
        println!("kua-deploy metrics on http://{}/metrics", m.local_addr()?);
    }
    tracing::info!(apps = registry.apps.len(), state_dir = %args.state_dir.display(), "serving on {url}");
    let settings = Settings {
        registry: Arc::new(registry),
        state_dir: args.state_dir,
        admin_token,
        viewer_token,
        handoff_ceiling: Duration::from_secs(args.handoff_ceiling_s),
        runtime_check: (args.runtime_check_s > 0).then(|| Duration::from_secs(args.runtime_check_s)),
        tls,
        metrics_listener,
    };
    serve_store(settings, store, listener, shutdown_signal()).await?;
    Ok(0)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("can install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down: stopping running deploys");
}

/// `kua-deploy self-recreate`, inside the self-deploy's transient container: the pipeline's
/// recreate, verify and rollback; the exit status is the verdict.
pub async fn self_recreate(args: selfupdate::TransientArgs) -> i32 {
    pipeline::transient::run(args).await
}

#[cfg(test)]
mod tests {
    use super::resolve_viewer_token;

    const ADMIN: &str = "admin-token-0123456789abcdef";

    /// These read the token from a file; KUA_VIEWER_TOKEN, which would come first, is not set in tests.
    #[test]
    fn a_viewer_token_file_gives_the_token_and_a_short_one_or_the_admin_token_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("viewer");
        assert_eq!(resolve_viewer_token(None, ADMIN).unwrap(), None);
        std::fs::write(&f, "viewer-token-0123456789\n").unwrap();
        assert_eq!(resolve_viewer_token(Some(&f), ADMIN).unwrap().as_deref(), Some("viewer-token-0123456789"));
        std::fs::write(&f, "short\n").unwrap();
        assert!(resolve_viewer_token(Some(&f), ADMIN).unwrap_err().to_string().contains("shorter than 16"));
        std::fs::write(&f, ADMIN).unwrap();
        assert!(resolve_viewer_token(Some(&f), ADMIN).unwrap_err().to_string().contains("equals the admin token"));
        let missing = dir.path().join("nope");
        assert!(resolve_viewer_token(Some(&missing), ADMIN)
            .unwrap_err()
            .to_string()
            .contains("cannot read the viewer token file"));
    }
}
