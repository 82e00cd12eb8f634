//! The web page at `/`: a login form (admin or read-only viewer token), the overview of every app,
//! an app's page (history, the migration gate's pending files, release/approve/cancel behind a
//! confirmation page) and a deploy's page (steps, log, verify). Server-rendered with minijinja
//! from templates embedded in the binary; the live parts are server-sent events carrying the
//! re-rendered fragment, swapped in by a few lines of plain JavaScript. Every state-changing form
//! carries the session's CSRF token; a viewer session can change nothing.

mod pages;
pub mod session;

use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::Router;
use minijinja::Environment;

use crate::api::ApiState;
use session::{Role, Session, Sessions};

/// What every page handler reaches.
#[derive(Clone)]
pub struct WebState {
    pub api: ApiState,
    pub sessions: Sessions,
    /// Served over HTTPS: the session cookie is `Secure`.
    pub secure: bool,
    templates: Arc<Environment<'static>>,
}

impl WebState {
    pub fn new(api: ApiState, secure: bool) -> WebState {
        WebState { api, sessions: Sessions::default(), secure, templates: Arc::new(templates()) }
    }

    /// Renders a template; a template error is a bug, answered 500 with what failed.
    fn render(&self, name: &str, ctx: minijinja::Value) -> Response {
        match self.templates.get_template(name).and_then(|t| t.render(ctx)) {
            Ok(html) => Html(html).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("cannot render {name}: {e:#}")).into_response(),
        }
    }

    fn fragment(&self, name: &str, ctx: minijinja::Value) -> String {
        self.templates
            .get_template(name)
            .and_then(|t| t.render(ctx))
            .unwrap_or_else(|e| format!("<p role=\"alert\">cannot render {name}: {e:#}</p>"))
    }
}

/// The templates, compiled once at start from the sources embedded in the binary.
fn templates() -> Environment<'static> {
    let mut env = Environment::new();
    for (name, source) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("overview.html", include_str!("templates/overview.html")),
        ("overview_rows.html", include_str!("templates/overview_rows.html")),
        ("app.html", include_str!("templates/app.html")),
        ("deploy.html", include_str!("templates/deploy.html")),
        ("deploy_body.html", include_str!("templates/deploy_body.html")),
        ("confirm.html", include_str!("templates/confirm.html")),
        ("message.html", include_str!("templates/message.html")),
    ] {
        env.add_template(name, source).unwrap_or_else(|e| panic!("template {name} does not compile: {e:#}"));
    }
    env
}

pub fn router(state: WebState) -> Router {
    Router::new()
        .route("/", get(pages::overview))
        .route("/login", get(pages::login_form).post(pages::login))
        .route("/logout", post(pages::logout))
        .route("/apps/{app}", get(pages::app))
        .route("/apps/{app}/release", post(pages::release))
        .route("/deploys/{id}", get(pages::deploy))
        .route("/deploys/{id}/approve", post(pages::approve))
        .route("/deploys/{id}/cancel", post(pages::cancel))
        .route("/confirm", get(pages::confirm))
        .route("/events/overview", get(pages::overview_events))
        .route("/events/deploys/{id}", get(pages::deploy_events))
        .route(
            "/static/style.css",
            get(|| async { static_file("text/css; charset=utf-8", include_str!("templates/style.css")) }),
        )
        .route(
            "/static/live.js",
            get(|| async { static_file("text/javascript; charset=utf-8", include_str!("templates/live.js")) }),
        )
        .with_state(state)
}

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    ([(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "max-age=300")], body).into_response()
}

/// The session a request's cookie names, or a redirect to the login form.
// The error is the handler's answer, returned at once: boxing it would buy nothing.
#[allow(clippy::result_large_err)]
fn session_of(state: &WebState, headers: &axum::http::HeaderMap) -> Result<(String, Session), Response> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(session::cookie_value)
        .and_then(|id| state.sessions.get(id).map(|s| (id.to_owned(), s)))
        .ok_or_else(|| Redirect::to("/login").into_response())
}

/// The session of a state-changing form: logged in, the CSRF token right, and an admin.
#[allow(clippy::result_large_err)]
fn changing_session(
    state: &WebState,
    headers: &axum::http::HeaderMap,
    csrf: Option<&str>,
) -> Result<Session, Response> {
    let Some((_, s)) = session_of(state, headers).ok() else {
        return Err((StatusCode::UNAUTHORIZED, "log in first: GET /login").into_response());
    };
    if !s.csrf_ok(csrf) {
        return Err((
            StatusCode::FORBIDDEN,
            "the form's CSRF token is missing or wrong; reload the page and submit it again",
        )
            .into_response());
    }
    if s.role != Role::Admin {
        let ctx = minijinja::context! { title => "Not allowed", role => "viewer", csrf => s.csrf,
        message => "You are logged in with the viewer token: you can see everything but change nothing. Log in with the admin token to release, approve or cancel." };
        return Err((StatusCode::FORBIDDEN, state.render("message.html", ctx)).into_response());
    }
    Ok(s)
}
