//! The page handlers: what each page reads from the store and hands its template, and the forms
//! that act through the queue, as the API's handlers do.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Form, Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use futures::Stream;
use minijinja::context;
use serde::{Deserialize, Serialize};

use super::session::{self, Role};
use super::{changing_session, session_of, WebState};
use crate::model::{AppName, Deploy, DeployId, Phase, StepName, Trigger, TriggerSource};
use crate::pipeline::queue::{QueueError, Request};

/// History rows on one page of an app's page.
const PAGE: usize = 20;

fn role_name(r: Role) -> &'static str {
    match r {
        Role::Admin => "admin",
        Role::Viewer => "viewer",
    }
}

/// "3 min ago" from an RFC 3339 time.
fn age(at: &str) -> String {
    let Ok(t) = chrono::DateTime::parse_from_rfc3339(at) else { return at.to_owned() };
    let s = (chrono::Utc::now() - t.with_timezone(&chrono::Utc)).num_seconds().max(0);
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..86400 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86400),
    }
}

fn duration(from: Option<&str>, to: Option<&str>) -> String {
    let parse = |t: Option<&str>| t.and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
    match (parse(from), parse(to)) {
        (Some(a), Some(b)) => format!("{:.1} s", (b - a).num_milliseconds() as f64 / 1000.0),
        (Some(_), None) => "running".into(),
        _ => String::new(),
    }
}

fn short(c: Option<&crate::model::CommitSha>) -> String {
    c.map(|c| c.to_string().chars().take(12).collect()).unwrap_or_default()
}

/// One row of the overview.
#[derive(Serialize)]
struct Row {
    app: String,
    host: String,
    branch: String,
    commit: String,
    deploy_id: String,
    phase: String,
    age: String,
    drift: &'static str,
    health: String,
    active: bool,
}

/// The overview's rows, apps deploying now first, then by name.
fn overview_rows(state: &WebState) -> Result<Vec<Row>, String> {
    let store = state.api.queue.store();
    let mut rows = Vec::new();
    for (name, app) in &state.api.queue.registry().apps {
        let last = store.latest(name).map_err(|e| format!("cannot read the store: {e}"))?;
        let running = store.running_commit(name).map_err(|e| format!("cannot read the store: {e}"))?;
        let active = last.as_ref().is_some_and(|d| !d.phase.is_terminal());
        rows.push(Row {
            app: name.to_string(),
            host: app.host.label(),
            branch: app.branch.to_string(),
            commit: short(running.as_ref()),
            deploy_id: last.as_ref().map(|d| d.deploy_id.to_string()).unwrap_or_default(),
            phase: last.as_ref().map(|d| d.phase.to_string()).unwrap_or_else(|| "never deployed".into()),
            age: last.as_ref().map(|d| age(&d.created_at)).unwrap_or_default(),
            drift: match state.api.metrics.drift(name.as_str()) {
                Some(true) => "drifted",
                Some(false) => "in sync",
                None => "not checked",
            },
            health: state.api.metrics.health(name.as_str()).map_or_else(|| "not checked".into(), |h| h.to_string()),
            active,
        });
    }
    rows.sort_by(|a, b| b.active.cmp(&a.active).then_with(|| a.app.cmp(&b.app)));
    Ok(rows)
}

fn storage_error(e: impl std::fmt::Display) -> Response {
    (StatusCode::SERVICE_UNAVAILABLE, format!("the state database fails ({e}); GET /healthz says what")).into_response()
}

pub async fn overview(State(state): State<WebState>, headers: HeaderMap) -> Response {
    let (_, s) = match session_of(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let rows = match overview_rows(&state) {
        Ok(r) => r,
        Err(e) => return storage_error(e),
    };
    state.render("overview.html", context! { title => "Apps", rows, role => role_name(s.role), csrf => s.csrf })
}

pub async fn login_form(State(state): State<WebState>) -> Response {
    state.render("login.html", context! { title => "Log in" })
}

#[derive(Deserialize)]
pub struct LoginForm {
    token: String,
}

pub async fn login(State(state): State<WebState>, Form(f): Form<LoginForm>) -> Response {
    let admin = state.api.admin_token.as_str();
    let viewer = state.api.viewer_token.as_deref().map(String::as_str);
    match session::role_of(&f.token, admin, viewer) {
        Some(role) => {
            let id = state.sessions.start(role);
            let mut r = Redirect::to("/").into_response();
            r.headers_mut()
                .insert(header::SET_COOKIE, session::set_cookie(&id, state.secure).parse().expect("a header value"));
            r
        }
        None => (
            StatusCode::UNAUTHORIZED,
            state.render(
                "login.html",
                context! { title => "Log in", error => "That token is neither the admin token nor the viewer token." },
            ),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
pub struct CsrfForm {
    csrf: Option<String>,
    commit: Option<String>,
}

pub async fn logout(State(state): State<WebState>, headers: HeaderMap, Form(f): Form<CsrfForm>) -> Response {
    let Ok((id, s)) = session_of(&state, &headers) else { return Redirect::to("/login").into_response() };
    if !s.csrf_ok(f.csrf.as_deref()) {
        return (
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page and submit it again",
        )
            .into_response();
    }
    state.sessions.end(&id);
    let mut r = Redirect::to("/login").into_response();
    r.headers_mut().insert(header::SET_COOKIE, session::clear_cookie(state.secure).parse().expect("a header value"));
    r
}

#[derive(Deserialize)]
pub struct PageQuery {
    page: Option<usize>,
}

pub async fn app(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Query(q): Query<PageQuery>,
) -> Response {
    let (_, s) = match session_of(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(cfg) = AppName::parse(&app).ok().and_then(|n| state.api.queue.registry().app(&n)) else {
        return (StatusCode::NOT_FOUND, format!("no app named {app:?} in the registry")).into_response();
    };
    let page = q.page.unwrap_or(0);
    let mut deploys = match state.api.queue.store().history(&cfg.name, (page + 1) * PAGE + 1) {
        Ok(d) => d,
        Err(e) => return storage_error(e),
    };
    let more = deploys.len() > (page + 1) * PAGE;
    deploys.truncate((page + 1) * PAGE);
    let history: Vec<_> = deploys
        .iter()
        .skip(page * PAGE)
        .map(|d| {
            // A queued deploy has no commit yet; the one its trigger asked for is what it will deploy.
            let commit = d.commit.as_ref().or(d.trigger.requested_commit.as_ref());
            context! { id => d.deploy_id.to_string(), phase => d.phase.to_string(), commit => short(commit),
            age => age(&d.created_at), active => !d.phase.is_terminal(), awaiting => d.phase == Phase::AwaitingApproval,
            pending => d.step(StepName::MigrationGate).map(|s| s.detail.clone()).unwrap_or_default() }
        })
        .collect();
    let runtime = runtime_rows(&state, cfg).await;
    let ctx = context! { title => cfg.name.to_string(), app => cfg.name.to_string(), host => cfg.host.label(), runtime,
    branch => cfg.branch.to_string(), services => cfg.services.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    history, page, more, role => role_name(s.role), csrf => s.csrf };
    state.render("app.html", ctx)
}

/// How long the app page waits for the services' runtime status (docker calls on the app's host)
/// before it shows the page without it.
const RUNTIME_WAIT: Duration = Duration::from_secs(5);

/// The services' containers now, as `GET /api/v1/apps/{app}/runtime-status` reads them (and the
/// drift noted for the overview), or why they could not be read.
async fn runtime_rows(state: &WebState, app: &crate::config::AppConfig) -> minijinja::Value {
    match tokio::time::timeout(RUNTIME_WAIT, state.api.queue.runtime_status(app)).await {
        Ok(Ok(status)) => {
            state.api.metrics.observe_runtime(app.name.as_str(), &status);
            let containers: Vec<_> = status
                .services
                .iter()
                .flat_map(|s| {
                    s.containers.iter().map(move |c| {
                        context! { service => s.service.clone(), name => c.name.clone(), state => c.state.clone(),
                        health => c.health.clone(), matches => c.matches_last_deploy }
                    })
                })
                .collect();
            let services: Vec<_> =
                status.services.iter().filter(|s| s.containers.is_empty()).map(|s| s.service.clone()).collect();
            context! { drift => status.drift, containers, missing => services }
        }
        Ok(Err(e @ crate::pipeline::runtime::ReadError::Store(_))) => context! { error => e.to_string() },
        Ok(Err(e)) => {
            state.api.metrics.runtime_unreadable(app.name.as_str());
            context! { error => format!("cannot read the containers on host {}: {e}", app.host.label()) }
        }
        Err(_) => {
            context! { error => format!("host {} did not answer within {} s", app.host.label(), RUNTIME_WAIT.as_secs()) }
        }
    }
}

fn deploy_ctx(d: &Deploy) -> minijinja::Value {
    let steps: Vec<_> = d
        .steps
        .iter()
        .map(|s| {
            context! { name => s.name.to_string(), status => format!("{:?}", s.status).to_lowercase(),
            duration => duration(s.started_at.as_deref(), s.finished_at.as_deref()), detail => s.detail.clone(),
            finished_at => s.finished_at.clone() }
        })
        .collect();
    context! { id => d.deploy_id.to_string(), app => d.app.to_string(), phase => d.phase.to_string(),
    commit => d.commit.as_ref().map(|c| c.to_string()), created => d.created_at.clone(), error => d.error.clone(),
    reason => d.reason.clone(), superseded_by => d.superseded_by.as_ref().map(|s| s.to_string()),
    previous_commit => d.previous_commit.as_ref().map(|c| c.to_string()),
    verify => d.verify.as_ref().map(|v| serde_json::to_string_pretty(v).unwrap_or_default()),
    steps, terminal => d.phase.is_terminal() }
}

/// The deploy's log as text: its first 48 KB, so that the page stays under 100 KB (the whole log
/// is `kua-deploy logs` or the API's log pages).
fn log_text(state: &WebState, id: &DeployId) -> String {
    match state.api.queue.store().log_page(id, 0, 2000, 48 * 1024) {
        Ok((lines, more)) => {
            let mut text = lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>().join("\n");
            if more {
                text.push_str("\n… (the rest: kua-deploy logs or GET /api/v1/deploys/{id}/logs)");
            }
            text
        }
        Err(e) => format!("cannot read the log: {e}"),
    }
}

fn deploy_body(state: &WebState, d: &Deploy) -> String {
    state.fragment("deploy_body.html", context! { d => deploy_ctx(d), log => log_text(state, &d.deploy_id) })
}

pub async fn deploy(State(state): State<WebState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    let (_, s) = match session_of(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let d = match DeployId::parse(&id).ok().map(|id| state.api.queue.store().deploy(&id)) {
        Some(Ok(Some(d))) => d,
        Some(Err(e)) => return storage_error(e),
        _ => return (StatusCode::NOT_FOUND, format!("no deploy with id {id:?}")).into_response(),
    };
    let body = deploy_body(&state, &d);
    state.render(
        "deploy.html",
        context! { title => format!("Deploy of {}", d.app), d => deploy_ctx(&d), body,
        role => role_name(s.role), csrf => s.csrf },
    )
}

#[derive(Deserialize)]
pub struct ConfirmQuery {
    action: String,
    app: Option<String>,
    deploy: Option<String>,
    commit: Option<String>,
}

/// The confirmation step before a release, an approval or a cancel: a page that says what will
/// happen, with the form that does it.
pub async fn confirm(State(state): State<WebState>, headers: HeaderMap, Query(q): Query<ConfirmQuery>) -> Response {
    let (_, s) = match session_of(&state, &headers) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let commit = q.commit.filter(|c| !c.trim().is_empty());
    // What goes into the form's action must be a name or an id, never a path of its own.
    let app = q.app.as_deref().map(AppName::parse).transpose();
    let deploy = q.deploy.as_deref().map(DeployId::parse).transpose();
    let (Ok(app), Ok(deploy)) = (app, deploy) else {
        return (StatusCode::BAD_REQUEST, "app must be an app name and deploy a deploy id").into_response();
    };
    let (what, action) = match (q.action.as_str(), &app, &deploy) {
        ("release", Some(app), _) => (
            format!(
                "Release {app} ({})?",
                commit.as_deref().map_or("the tip of its branch".into(), |c| format!("commit {c}"))
            ),
            format!("/apps/{app}/release"),
        ),
        ("approve", _, Some(id)) => {
            (format!("Approve the migrations of deploy {id}?"), format!("/deploys/{id}/approve"))
        }
        ("cancel", _, Some(id)) => (format!("Cancel deploy {id}?"), format!("/deploys/{id}/cancel")),
        _ => {
            return (
                StatusCode::BAD_REQUEST,
                "confirm what? action=release&app=NAME, or action=approve|cancel&deploy=ID",
            )
                .into_response()
        }
    };
    state.render(
        "confirm.html",
        context! { title => "Confirm", what, action, commit, label => q.action,
        role => role_name(s.role), csrf => s.csrf },
    )
}

fn queue_error(e: QueueError) -> Response {
    let status = match &e {
        QueueError::UnknownApp(_) | QueueError::NoSuchDeploy(_) => StatusCode::NOT_FOUND,
        QueueError::Store(_) | QueueError::Unrecorded(_) => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::CONFLICT,
    };
    (status, format!("refused: {e}")).into_response()
}

pub async fn release(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(app): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    if let Err(r) = changing_session(&state, &headers, f.csrf.as_deref()) {
        return r;
    }
    let Some(cfg) = AppName::parse(&app).ok().and_then(|n| state.api.queue.registry().app(&n)) else {
        return (StatusCode::NOT_FOUND, format!("no app named {app:?} in the registry")).into_response();
    };
    let commit = match f.commit.as_deref().map(str::trim).filter(|c| !c.is_empty()) {
        None => None,
        Some(c) => match crate::model::CommitSha::parse(c) {
            Ok(c) => Some(c),
            Err(e) => {
                return (StatusCode::BAD_REQUEST, format!("the commit {c:?} is not a commit id: {e}")).into_response()
            }
        },
    };
    let req = Request {
        app: cfg.name.clone(),
        trigger: Trigger {
            source: TriggerSource::Api,
            delivery: None,
            git_ref: format!("refs/heads/{}", cfg.branch),
            requested_commit: commit,
        },
        approve_migrations: false,
        reason: Some("released from the web page".into()),
    };
    match state.api.queue.submit(req) {
        Ok(d) => Redirect::to(&format!("/deploys/{}", d.deploy_id)).into_response(),
        Err(e) => queue_error(e),
    }
}

/// What an action on one deploy checks first: a session that may change things, with the form's
/// CSRF token, and a deploy id.
fn deploy_action(state: &WebState, headers: &HeaderMap, id: &str, f: &CsrfForm) -> Result<DeployId, Response> {
    changing_session(state, headers, f.csrf.as_deref())?;
    DeployId::parse(id).map_err(|_| (StatusCode::BAD_REQUEST, "not a deploy id").into_response())
}

/// After an action on deploy `id`: its page, or why the queue refused.
fn deploy_page_or_refusal(id: &DeployId, done: Result<Deploy, QueueError>) -> Response {
    match done {
        Ok(_) => Redirect::to(&format!("/deploys/{id}")).into_response(),
        Err(e) => queue_error(e),
    }
}

pub async fn approve(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    match deploy_action(&state, &headers, &id, &f) {
        Ok(id) => deploy_page_or_refusal(&id, state.api.queue.approve(&id)),
        Err(r) => r,
    }
}

pub async fn cancel(
    State(state): State<WebState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Form(f): Form<CsrfForm>,
) -> Response {
    match deploy_action(&state, &headers, &id, &f) {
        Ok(id) => deploy_page_or_refusal(&id, state.api.queue.cancel(&id).await),
        Err(r) => r,
    }
}

/// Drift (read by runtime checks, not a deploy) and the ages change without any deploy event:
/// the overview looks again this often even when nothing was deployed.
const OVERVIEW_REFRESH: Duration = Duration::from_secs(5);
/// After a wake-up, how long to let a burst of changes (a push that queues one deploy and
/// supersedes another, a deploy that ends while the next starts) settle into one update.
const OVERVIEW_SETTLE: Duration = Duration::from_millis(50);

/// The overview's rows, re-rendered and sent whenever a deploy is added or changes phase (the
/// store's fleet-wide notification), and every few seconds for drift and ages.
pub async fn overview_events(State(state): State<WebState>, headers: HeaderMap) -> Response {
    if session_of(&state, &headers).is_err() {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    let stop = state.api.shutdown.clone();
    let fleet = state.api.queue.store().watch_fleet();
    let stream = futures::stream::unfold((state, fleet, String::new()), move |(state, mut fleet, last)| {
        let (stop, headers) = (stop.clone(), headers.clone());
        async move {
            loop {
                // A logout elsewhere or the session's expiry ends the stream; the browser's
                // reconnect then gets a 401 and stops.
                session_of(&state, &headers).ok()?;
                let html = match overview_rows(&state) {
                    Ok(rows) => state.fragment("overview_rows.html", context! { rows }),
                    Err(e) => format!("<tr><td colspan=\"8\" role=\"alert\">{e}</td></tr>"),
                };
                if html != last {
                    return Some((
                        Ok::<_, Infallible>(Event::default().event("rows").data(html.clone())),
                        (state, fleet, html),
                    ));
                }
                tokio::select! {
                    _ = fleet.changed() => tokio::time::sleep(OVERVIEW_SETTLE).await,
                    _ = tokio::time::sleep(OVERVIEW_REFRESH) => {}
                    _ = stop.cancelled() => return None,
                }
            }
        }
    });
    sse(stream)
}

fn sse(stream: impl Stream<Item = Result<Event, Infallible>> + Send + 'static) -> Response {
    Sse::new(stream).keep_alive(KeepAlive::default()).into_response()
}

/// Where a deploy page's stream is.
#[derive(Clone, Copy)]
enum Stage {
    First,
    Watching,
    Ended,
    Done,
}

/// The deploy page's body, re-rendered on every change of the deploy (the store's notification),
/// until it ends.
pub async fn deploy_events(State(state): State<WebState>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if session_of(&state, &headers).is_err() {
        return (StatusCode::UNAUTHORIZED, "log in first").into_response();
    }
    let Ok(id) = DeployId::parse(&id) else { return (StatusCode::BAD_REQUEST, "not a deploy id").into_response() };
    let stop = state.api.shutdown.clone();
    let watch = state.api.queue.store().watch(&id);
    let stream = futures::stream::unfold((state, watch, Stage::First), move |(state, mut watch, stage)| {
        let (stop, id, headers) = (stop.clone(), id.clone(), headers.clone());
        async move {
            match stage {
                Stage::Done => return None,
                // Said once the last body is out, so the page closes its stream: a browser
                // reconnects to a stream that merely ends, and would read the deploy again forever.
                // Not empty: a browser drops an event without data.
                Stage::Ended => {
                    return Some((
                        Ok::<_, Infallible>(Event::default().event("end").data("ended")),
                        (state, watch, Stage::Done),
                    ))
                }
                Stage::Watching => tokio::select! {
                    _ = watch.changed() => {}
                    _ = stop.cancelled() => return None,
                },
                Stage::First => {}
            }
            // A logout elsewhere or the session's expiry ends the stream; the reconnect gets a 401.
            session_of(&state, &headers).ok()?;
            let d = state.api.queue.store().deploy(&id).ok().flatten()?;
            let body = deploy_body(&state, &d);
            let next = if d.phase.is_terminal() { Stage::Ended } else { Stage::Watching };
            Some((Ok::<_, Infallible>(Event::default().event("body").data(body)), (state, watch, next)))
        }
    });
    sse(stream)
}
