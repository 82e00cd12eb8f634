//! The admin handlers of `/api/v1`: trigger, progress, runtime status, history, logs (with a live
//! follow stream), approve and cancel. Names and ids from the path are checked before any use.

use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use utoipa::IntoParams;

use super::error::ApiError;
use super::types::{
    AppList, AppSummary, DeliveryList, DeployAccepted, DeployList, DeployRequest, ErrorBody, FollowItem, LogPage,
    RuntimeStatus,
};
use super::ApiState;
use crate::config::AppConfig;
use crate::model::{AppName, Deploy, DeployId, Phase, Trigger, TriggerSource};
use crate::pipeline::queue::Request;
use crate::pipeline::runtime;

fn app_name(raw: &str) -> Result<AppName, ApiError> {
    AppName::parse(raw).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_app_name", e.to_string()))
}

fn known_app<'a>(state: &'a ApiState, raw: &str) -> Result<&'a AppConfig, ApiError> {
    let name = app_name(raw)?;
    state.queue.registry().app(&name).ok_or_else(|| {
        ApiError::not_found(
            "unknown_app",
            format!("there is no app named {name} in the registry; GET /api/v1/apps lists them"),
        )
    })
}

fn deploy_id(raw: &str) -> Result<DeployId, ApiError> {
    DeployId::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))
}

fn load_deploy(state: &ApiState, raw: &str) -> Result<Deploy, ApiError> {
    let id = deploy_id(raw)?;
    state.queue.store().deploy(&id)?.ok_or_else(|| ApiError::not_found("not_found", format!("no deploy with id {id}")))
}

pub async fn no_route() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint; see the API table in the README")
}

/// The apps of the registry, each with its last deploy's phase and commit.
#[utoipa::path(
    get,
    path = "/apps",
    tag = "apps",
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the apps", body = AppList),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn list_apps(State(state): State<ApiState>) -> Result<Json<AppList>, ApiError> {
    let mut apps = Vec::new();
    for (name, app) in &state.queue.registry().apps {
        let last = state.queue.store().latest(name)?;
        apps.push(AppSummary {
            app: name.clone(),
            host: app.host.label(),
            branch: app.branch.to_string(),
            services: app.services.iter().map(|s| s.to_string()).collect(),
            last_deploy_id: last.as_ref().map(|d| d.deploy_id.clone()),
            last_phase: last.as_ref().map(|d| d.phase),
            last_commit: last.and_then(|d| d.commit),
        });
    }
    Ok(Json(AppList { apps }))
}

/// Queues a deploy of the app: the commit given (on its branch), else the tip of its branch.
#[utoipa::path(
    post,
    path = "/apps/{app}/deploy",
    tag = "apps",
    params(("app" = AppName, Path, description = "the app's name in the registry")),
    request_body(content = Option<DeployRequest>, description = "optional; every field optional", content_type = "application/json"),
    security(("admin_token" = [])),
    responses(
        (status = 202, description = "queued", body = DeployAccepted),
        (status = 400, description = "`bad_request` (a body that is not a deploy request), `invalid_commit` or `invalid_app_name`", body = ErrorBody),
        (status = 404, description = "`unknown_app`: no app of that name in the registry", body = ErrorBody),
        (status = 409, description = "`deploy_in_progress`: a deploy of the app is queued or running; `deploy_id` names it", body = ErrorBody),
        (status = 413, description = "`payload_too_large`: the body is too large", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn trigger_deploy(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let app = known_app(&state, &app)?;
    let req: DeployRequest = if body.iter().all(u8::is_ascii_whitespace) {
        DeployRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            let msg = e.to_string();
            if msg.contains("commit") && msg.contains("hex") {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_commit", msg)
            } else {
                ApiError::bad_request(format!(
                    "the body is not a valid deploy request ({msg}); send {{\"commit\": \"<40 or 64 hex>\", \"approve_migrations\": bool, \"reason\": \"...\"}}, every field optional"
                ))
            }
        })?
    };
    if req.reason.as_ref().is_some_and(|r| r.len() > 1000) {
        return Err(ApiError::bad_request("reason is longer than 1000 characters"));
    }
    let deploy = state.queue.submit(Request {
        app: app.name.clone(),
        trigger: Trigger {
            source: TriggerSource::Api,
            delivery: None,
            git_ref: format!("refs/heads/{}", app.branch),
            requested_commit: req.commit,
        },
        approve_migrations: req.approve_migrations,
        // The reason is stored and shown in every answer about the deploy: a secret pasted into it
        // must not come back out.
        reason: req.reason.map(|r| state.redactor.redact(&r)),
    })?;
    let accepted = DeployAccepted { deploy_id: deploy.deploy_id, app: deploy.app, phase: deploy.phase };
    Ok((StatusCode::ACCEPTED, Json(accepted)).into_response())
}

/// The app's latest deploy.
#[utoipa::path(
    get,
    path = "/apps/{app}/progress",
    tag = "apps",
    params(("app" = AppName, Path, description = "the app's name in the registry")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the latest deploy", body = Deploy),
        (status = 400, description = "`invalid_app_name`: the name is not a valid app name", body = ErrorBody),
        (status = 404, description = "`unknown_app`, or `no_deploys`: the app has not been deployed yet", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn progress(State(state): State<ApiState>, Path(app): Path<String>) -> Result<Json<Deploy>, ApiError> {
    let app = known_app(&state, &app)?;
    state
        .queue
        .store()
        .latest(&app.name)?
        .map(Json)
        .ok_or_else(|| ApiError::not_found("no_deploys", format!("app {} has not been deployed yet", app.name)))
}

/// What runs now: the app's service containers, checked against its last deploy.
#[utoipa::path(
    get,
    path = "/apps/{app}/runtime-status",
    tag = "apps",
    params(("app" = AppName, Path, description = "the app's name in the registry")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the live state; `drift` is true when what runs is not what the last successful deploy verified", body = RuntimeStatus),
        (status = 400, description = "`invalid_app_name`: the name is not a valid app name", body = ErrorBody),
        (status = 404, description = "`unknown_app`: no app of that name in the registry", body = ErrorBody),
        (status = 502, description = "`engine_unavailable`: the app's host or its Docker engine cannot be read", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn runtime_status(State(state): State<ApiState>, Path(app): Path<String>) -> Result<Response, ApiError> {
    let app = known_app(&state, &app)?;
    match state.queue.runtime_status(app).await {
        Ok(status) => {
            state.metrics.observe_runtime(app.name.as_str(), &status);
            Ok(Json(status).into_response())
        }
        Err(runtime::ReadError::Store(e)) => Err(e.into()),
        Err(runtime::ReadError::Target(e)) => {
            state.metrics.runtime_unreadable(app.name.as_str());
            Err(ApiError::new(
                StatusCode::BAD_GATEWAY,
                "engine_unavailable",
                format!("cannot read the containers of {} on host {}: {e}", app.name, app.host.label()),
            ))
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LimitQuery {
    /// How many, newest first: 1 to 500, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 500)]
    limit: Option<String>,
}

impl LimitQuery {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref() {
            None => Ok(20),
            Some(s) => s
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=500).contains(n))
                .ok_or_else(|| ApiError::bad_request(format!("limit {s:?} must be a whole number from 1 to 500"))),
        }
    }
}

/// The app's deploys, newest first.
#[utoipa::path(
    get,
    path = "/apps/{app}/deploys",
    tag = "apps",
    params(("app" = AppName, Path, description = "the app's name in the registry"), LimitQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the deploys", body = DeployList),
        (status = 400, description = "`invalid_app_name`, or `bad_request`: a bad `limit`", body = ErrorBody),
        (status = 404, description = "`unknown_app`: no app of that name in the registry", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn history(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<DeployList>, ApiError> {
    let app = known_app(&state, &app)?;
    let deploys = state.queue.store().history(&app.name, q.limit()?)?;
    Ok(Json(DeployList { app: app.name.clone(), deploys }))
}

/// The webhook deliveries received for the app, newest first: what came in and what became of it.
#[utoipa::path(
    get,
    path = "/apps/{app}/deliveries",
    tag = "apps",
    params(("app" = AppName, Path, description = "the app's name in the registry"), LimitQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the deliveries", body = DeliveryList),
        (status = 400, description = "`invalid_app_name`, or `bad_request`: a bad `limit`", body = ErrorBody),
        (status = 404, description = "`unknown_app`: no app of that name in the registry", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn deliveries(
    State(state): State<ApiState>,
    Path(app): Path<String>,
    Query(q): Query<LimitQuery>,
) -> Result<Json<DeliveryList>, ApiError> {
    let app = known_app(&state, &app)?;
    let deliveries = state.queue.store().deliveries(&app.name, q.limit()?)?;
    Ok(Json(DeliveryList { app: app.name.clone(), deliveries }))
}

/// One deploy.
#[utoipa::path(
    get,
    path = "/deploys/{id}",
    tag = "deploys",
    params(("id" = DeployId, Path, description = "the deploy's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the deploy", body = Deploy),
        (status = 400, description = "`bad_request`: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "`not_found`: no deploy with that id", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn get_deploy(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<Deploy>, ApiError> {
    load_deploy(&state, &id).map(Json)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LogQuery {
    /// `1` (also `true`, `yes`): stream the lines as NDJSON as they come, until the deploy stops.
    #[param(value_type = Option<String>)]
    follow: Option<String>,
    /// Lines after this line number (`next_after` of the previous page); default 0, the start.
    #[param(value_type = Option<u64>, minimum = 0)]
    after: Option<String>,
    /// Lines per page: 1 to 5000, default 1000.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 5000)]
    limit: Option<String>,
}

/// Lines per log page unless `limit` says otherwise, and the most it may say.
pub const LOG_PAGE_DEFAULT: usize = 1_000;
pub const LOG_PAGE_MAX: usize = 5_000;
/// A page (or a chunk of the follow stream) stops after the line that brings its text to 1 MiB,
/// so an answer stays small whatever the lines hold.
const LOG_PAGE_BYTES: usize = 1024 * 1024;

impl LogQuery {
    fn after(&self) -> Result<i64, ApiError> {
        match self.after.as_deref() {
            None => Ok(0),
            Some(s) => s.parse::<i64>().ok().filter(|n| *n >= 0).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "after {s:?} must be a line number: a whole number from 0 (the start), usually the next_after of the previous page"
                ))
            }),
        }
    }

    fn limit(&self) -> Result<usize, ApiError> {
        match self.limit.as_deref() {
            None => Ok(LOG_PAGE_DEFAULT),
            Some(s) => s.parse::<usize>().ok().filter(|n| (1..=LOG_PAGE_MAX).contains(n)).ok_or_else(|| {
                ApiError::bad_request(format!(
                    "limit {s:?} must be a whole number from 1 to {LOG_PAGE_MAX} (lines per page; default {LOG_PAGE_DEFAULT})"
                ))
            }),
        }
    }
}

/// One page of the log (`?after=SEQ&limit=N`), or with `?follow=1` the lines after `after` as
/// NDJSON as they come, until the deploy stops.
#[utoipa::path(
    get,
    path = "/deploys/{id}/logs",
    tag = "deploys",
    params(("id" = DeployId, Path, description = "the deploy's id"), LogQuery),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "a page of the log; with `follow`, an NDJSON stream of log lines ending with `{\"end\": true, \"phase\"}` once the deploy ends or waits for approval (a stream cut without it: the server stopped; resume after the last `seq`)", content(
            (LogPage = "application/json"),
            (FollowItem = "application/x-ndjson"),
        )),
        (status = 400, description = "`bad_request`: the id is not a UUID, or a bad `after` or `limit`", body = ErrorBody),
        (status = 404, description = "`not_found`: no deploy with that id", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn logs(
    State(state): State<ApiState>,
    Path(id): Path<String>,
    Query(q): Query<LogQuery>,
) -> Result<Response, ApiError> {
    let deploy = load_deploy(&state, &id)?;
    let after = q.after()?;
    let limit = q.limit()?;
    let follow = matches!(q.follow.as_deref(), Some("1" | "true" | "yes"));
    let store = state.queue.store().clone();
    if !follow {
        // The phase was read before the lines: when it is terminal and `more` is false, no line
        // can have come after this page.
        let (lines, more) = store.log_page(&deploy.deploy_id, after, limit, LOG_PAGE_BYTES)?;
        let next_after = lines.last().map_or(after, |l| l.seq);
        let page = LogPage { deploy_id: deploy.deploy_id, phase: deploy.phase, lines, next_after, more };
        return Ok(Json(page).into_response());
    }
    // Follow: send new lines as NDJSON as they are written, until the deploy stops (ends, or
    // waits for approval), then one last item with its phase. The watch is made before the first
    // read, so nothing written after that read is missed.
    let follow = Follow {
        watch: store.watch(&deploy.deploy_id),
        store,
        id: deploy.deploy_id.clone(),
        after,
        limit,
        shutdown: state.shutdown.clone(),
        done: false,
    };
    let stream = futures::stream::unfold(follow, |mut f| async move {
        let chunk = f.next_chunk().await?;
        Some((Ok::<_, std::io::Error>(chunk), f))
    });
    Ok(([(header::CONTENT_TYPE, "application/x-ndjson")], Body::from_stream(stream)).into_response())
}

/// Once woken by a change, a follower waits this long before it reads, so that a burst of log
/// lines (a build's output) goes out as one chunk rather than one read per line.
const FOLLOW_BATCH: Duration = Duration::from_millis(20);
/// A follower reads again after this long even when nothing woke it. Every write of a phase or a
/// log line notifies (see `store::events`), so this is only a safety net against a write path
/// that one day forgets to: a stream would then lag by this much instead of hanging.
const FOLLOW_SAFETY_TICK: Duration = Duration::from_secs(5);

/// A `?follow=1` log stream: where it stands in one deploy's log.
struct Follow {
    store: crate::store::Store,
    watch: crate::store::DeployWatch,
    id: DeployId,
    after: i64,
    limit: usize,
    shutdown: tokio_util::sync::CancellationToken,
    done: bool,
}

impl Follow {
    /// The next NDJSON chunk: the lines written since the last one, else — once the deploy has
    /// stopped — its end item. None ends the stream: after the end item, or without one when the
    /// server is stopping, so the client knows it did not see the deploy end and can resume
    /// after the restart.
    async fn next_chunk(&mut self) -> Option<String> {
        if self.done {
            return None;
        }
        loop {
            // The phase is read before the lines: when it is terminal and no line is left, no
            // line can come after.
            let phase = self.store.deploy(&self.id).ok().flatten().map(|d| d.phase).unwrap_or(Phase::Failed);
            let (lines, _) = self.store.log_page(&self.id, self.after, self.limit, LOG_PAGE_BYTES).unwrap_or_default();
            if let Some(last) = lines.last() {
                self.after = last.seq;
                let mut chunk = String::new();
                for l in lines {
                    chunk.push_str(&serde_json::to_string(&FollowItem::Line(l)).expect("serializes"));
                    chunk.push('\n');
                }
                return Some(chunk);
            }
            if phase.is_terminal() || phase == Phase::AwaitingApproval {
                self.done = true;
                return Some(serde_json::to_string(&FollowItem::End { end: true, phase }).expect("serializes") + "\n");
            }
            tokio::select! {
                _ = self.watch.changed() => tokio::time::sleep(FOLLOW_BATCH).await,
                _ = tokio::time::sleep(FOLLOW_SAFETY_TICK) => {}
                _ = self.shutdown.cancelled() => return None,
            }
        }
    }
}

/// Lets an `awaiting_approval` deploy go on, its migrations approved.
#[utoipa::path(
    post,
    path = "/deploys/{id}/approve",
    tag = "deploys",
    params(("id" = DeployId, Path, description = "the deploy's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the deploy, queued again", body = Deploy),
        (status = 400, description = "`bad_request`: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "`not_found`: no deploy with that id", body = ErrorBody),
        (status = 409, description = "`not_awaiting_approval`: the deploy is not waiting for approval", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn approve(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<Deploy>, ApiError> {
    let id = deploy_id(&id)?;
    Ok(Json(state.queue.approve(&id)?))
}

/// Cancels a queued, waiting or running deploy; refused once its recreate began.
#[utoipa::path(
    post,
    path = "/deploys/{id}/cancel",
    tag = "deploys",
    params(("id" = DeployId, Path, description = "the deploy's id")),
    security(("admin_token" = [])),
    responses(
        (status = 200, description = "the deploy, cancelled", body = Deploy),
        (status = 400, description = "`bad_request`: the id is not a UUID", body = ErrorBody),
        (status = 404, description = "`not_found`: no deploy with that id", body = ErrorBody),
        (status = 409, description = "`already_finished`, or `cancel_refused`: its recreate began (`deploy_id` names it)", body = ErrorBody),
        (status = 503, description = "`storage_unavailable`: the state database fails; try again once it is fixed (GET /healthz says what)", body = ErrorBody)
    ),
)]
pub async fn cancel(State(state): State<ApiState>, Path(id): Path<String>) -> Result<Json<Deploy>, ApiError> {
    let id = deploy_id(&id)?;
    Ok(Json(state.queue.cancel(&id).await?))
}
