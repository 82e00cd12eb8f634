//! A typed client for kua-deploy's admin API, used by the CLI commands and by the integration
//! tests. Every failure becomes a [`ClientError`] that says which side is at fault, so callers can
//! pick an exit status (and `release` can tell a restarting server from a refusal).

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::Stream;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::tls::{self, Trust};
use crate::api::types::{
    AppList, DeliveryList, DeployAccepted, DeployList, DeployRequest, ErrorBody, FollowItem, Health, LogPage,
    RuntimeStatus,
};
use crate::model::{AppName, Deploy, DeployId};

/// Where the CLI looks for kua-deploy when neither `--url` nor `KUA_DEPLOY_URL` says.
pub const DEFAULT_URL: &str = "http://127.0.0.1:8790";

/// The longest a plain request may take; the follow stream has none, it lasts as long as the deploy.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the admin API did not give the answer asked for.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No HTTP answer at all: refused, reset, timed out, or the stream broke off.
    #[error("cannot reach kua-deploy at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The TLS handshake failed: a certificate this client does not trust, or a server that does
    /// not speak TLS. Trying again does not help.
    #[error("{message}")]
    Tls { url: String, message: String },
    #[error("kua-deploy at {url} refused the admin token (401): check KUA_ADMIN_TOKEN or --token-file")]
    Unauthorized { url: String },
    #[error("{message} (404 {code})")]
    NotFound { code: String, message: String },
    #[error("{message} (409 {code}{})", deploy_id.as_ref().map(|d| format!(", deploy {d}")).unwrap_or_default())]
    Conflict { code: String, message: String, deploy_id: Option<DeployId> },
    /// 400 and the other 4xx answers that say the request itself was wrong.
    #[error("request refused: {message} ({code})")]
    BadRequest { code: String, message: String },
    #[error("kua-deploy failed (HTTP {status}): {message}")]
    Server { status: u16, message: String },
    /// An answer that is not what the API contract promises.
    #[error("kua-deploy at {url} gave an answer this client cannot read: {message}")]
    Protocol { url: String, message: String },
}

impl ClientError {
    /// Whether trying again later may work: the server is away (restarting) or failed for now.
    pub fn is_retryable(&self) -> bool {
        matches!(self, ClientError::Unreachable { .. } | ClientError::Server { .. })
    }

    /// The API's error code, for the answers that carry one.
    pub fn code(&self) -> Option<&str> {
        match self {
            ClientError::NotFound { code, .. }
            | ClientError::Conflict { code, .. }
            | ClientError::BadRequest { code, .. } => Some(code),
            ClientError::Unauthorized { .. } => Some("unauthorized"),
            _ => None,
        }
    }
}

/// A connection to one kua-deploy. Cheap to clone: the HTTP connection pool is shared.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    token: String,
    http: reqwest::Client,
    timeout: Duration,
}

impl Client {
    /// `url` is the server's base URL (`http://host:port` or `https://…`, a trailing `/` is fine);
    /// `token` the admin token sent as `Authorization: Bearer`. HTTPS trusts the machine's CA store.
    pub fn new(url: impl Into<String>, token: impl Into<String>) -> Client {
        // With no CA file nothing read at run time can fail; reqwest's own `Client::new` makes
        // the same assumption.
        Client::with_trust(url, token, &Trust::default()).expect("the HTTP client could not be built")
    }

    /// Like [`Client::new`], trusting the server certificates `trust` says; the error (a CA file
    /// that cannot be used) names the file.
    pub fn with_trust(url: impl Into<String>, token: impl Into<String>, trust: &Trust) -> Result<Client, String> {
        let base = url.into().trim_end_matches('/').to_owned();
        let http = tls::http_client(trust, CONNECT_TIMEOUT)?;
        Ok(Client { base, token: token.into(), http, timeout: REQUEST_TIMEOUT })
    }

    /// Sets the timeout of every request except the follow stream.
    pub fn with_timeout(mut self, timeout: Duration) -> Client {
        self.timeout = timeout;
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /healthz`, the one call without the token.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let req = self.http.get(self.url("/healthz")).timeout(self.timeout);
        self.send(req).await
    }

    pub async fn apps(&self) -> Result<AppList, ClientError> {
        self.get("/api/v1/apps").await
    }

    /// Triggers a deploy; the answer comes before any work is done.
    pub async fn deploy(&self, app: &AppName, req: &DeployRequest) -> Result<DeployAccepted, ClientError> {
        self.post(&format!("/api/v1/apps/{app}/deploy"), req).await
    }

    pub async fn deploy_status(&self, id: &DeployId) -> Result<Deploy, ClientError> {
        self.get(&format!("/api/v1/deploys/{id}")).await
    }

    /// The app's latest deploy; `NotFound` with code `no_deploys` when it has none yet.
    pub async fn progress(&self, app: &AppName) -> Result<Deploy, ClientError> {
        self.get(&format!("/api/v1/apps/{app}/progress")).await
    }

    /// The app's deploys, newest first.
    pub async fn history(&self, app: &AppName, limit: u32) -> Result<DeployList, ClientError> {
        self.get(&format!("/api/v1/apps/{app}/deploys?limit={limit}")).await
    }

    /// The webhook deliveries received for the app, newest first.
    pub async fn deliveries(&self, app: &AppName, limit: u32) -> Result<DeliveryList, ClientError> {
        self.get(&format!("/api/v1/apps/{app}/deliveries?limit={limit}")).await
    }

    pub async fn runtime_status(&self, app: &AppName) -> Result<RuntimeStatus, ClientError> {
        self.get(&format!("/api/v1/apps/{app}/runtime-status")).await
    }

    /// One page of a deploy's log, of the server's default size: the lines numbered above
    /// `after` (0 for the start). The next page is after the page's `next_after`, while `more`.
    pub async fn logs(&self, id: &DeployId, after: i64) -> Result<LogPage, ClientError> {
        self.get(&format!("/api/v1/deploys/{id}/logs?after={after}")).await
    }

    /// Like [`Client::logs`], at most `limit` lines.
    pub async fn log_page(&self, id: &DeployId, after: i64, limit: u32) -> Result<LogPage, ClientError> {
        self.get(&format!("/api/v1/deploys/{id}/logs?after={after}&limit={limit}")).await
    }

    /// The live log of a deploy from the line after `after`, ending with [`FollowItem::End`].
    ///
    /// A stream that breaks off before its end item yields `Unreachable` last, so a caller can
    /// resume from the last `seq` it saw. Errors before the first line (401, 404…) come as the
    /// first item.
    pub fn follow_logs(
        &self,
        id: &DeployId,
        after: i64,
    ) -> impl Stream<Item = Result<FollowItem, ClientError>> + Send + 'static {
        let req = self.authed(self.http.get(self.url(&format!("/api/v1/deploys/{id}/logs?follow=1&after={after}"))));
        let client = self.clone();
        futures::stream::unfold(Follow::Start(client, req), |state| async move {
            match state {
                Follow::Start(client, req) => match client.open(req).await {
                    Ok(resp) => read_item(client.base, resp, Vec::new()).await,
                    Err(e) => Some((Err(e), Follow::Done)),
                },
                Follow::Reading { base, resp, buf } => read_item(base, resp, buf).await,
                Follow::Done => None,
            }
        })
    }

    /// Continues a deploy that waits in `awaiting_approval`.
    pub async fn approve(&self, id: &DeployId) -> Result<Deploy, ClientError> {
        self.post(&format!("/api/v1/deploys/{id}/approve"), &serde_json::json!({})).await
    }

    /// Cancels a queued or running deploy; refused (409) once recreate began.
    pub async fn cancel(&self, id: &DeployId) -> Result<Deploy, ClientError> {
        self.post(&format!("/api/v1/deploys/{id}/cancel"), &serde_json::json!({})).await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        req.bearer_auth(&self.token)
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let req = self.authed(self.http.get(self.url(path))).timeout(self.timeout);
        self.send(req).await
    }

    async fn post<B: Serialize + ?Sized, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        let req = self.authed(self.http.post(self.url(path))).json(body).timeout(self.timeout);
        self.send(req).await
    }

    async fn send<T: DeserializeOwned>(&self, req: reqwest::RequestBuilder) -> Result<T, ClientError> {
        let resp = self.open(req).await?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| transport_error(&self.base, &e))?;
        serde_json::from_slice(&body).map_err(|e| ClientError::Protocol {
            url: self.base.clone(),
            message: format!("HTTP {status}: {e}: {}", snippet(&body)),
        })
    }

    /// Sends the request and turns every non-2xx answer into its error.
    async fn open(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        let resp = req.send().await.map_err(|e| transport_error(&self.base, &e))?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.bytes().await.map_err(|e| transport_error(&self.base, &e))?;
        Err(status_error(&self.base, status.as_u16(), &body))
    }
}

enum Follow {
    Start(Client, reqwest::RequestBuilder),
    Reading { base: String, resp: reqwest::Response, buf: Vec<u8> },
    Done,
}

/// Reads until one whole NDJSON line is buffered and yields it as the next item.
async fn read_item(
    base: String,
    mut resp: reqwest::Response,
    mut buf: Vec<u8>,
) -> Option<(Result<FollowItem, ClientError>, Follow)> {
    loop {
        if let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Some(yield_line(base, resp, buf, &line));
        }
        match resp.chunk().await {
            Ok(Some(chunk)) => buf.extend_from_slice(&chunk),
            Ok(None) if buf.iter().all(u8::is_ascii_whitespace) => {
                let reason = "the log stream ended before the deploy did".to_owned();
                return Some((Err(ClientError::Unreachable { url: base, reason }), Follow::Done));
            }
            // A last line without its newline still counts.
            Ok(None) => {
                let line = std::mem::take(&mut buf);
                return Some(yield_line(base, resp, buf, &line));
            }
            Err(e) => return Some((Err(transport_error(&base, &e)), Follow::Done)),
        }
    }
}

fn yield_line(
    base: String,
    resp: reqwest::Response,
    buf: Vec<u8>,
    line: &[u8],
) -> (Result<FollowItem, ClientError>, Follow) {
    match serde_json::from_slice::<FollowItem>(line) {
        Ok(item @ FollowItem::End { .. }) => (Ok(item), Follow::Done),
        Ok(item) => (Ok(item), Follow::Reading { base, resp, buf }),
        Err(e) => {
            let message = format!("log stream line {e}: {}", snippet(line));
            (Err(ClientError::Protocol { url: base, message }), Follow::Done)
        }
    }
}

fn transport_error(base: &str, e: &reqwest::Error) -> ClientError {
    if let Some(tls) = tls::tls_error(e) {
        return ClientError::Tls { url: base.to_owned(), message: tls::describe(base, tls) };
    }
    // reqwest's own message repeats the URL; the innermost cause ("Connection refused") is what
    // a person needs.
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let mut reason = root.to_string();
    if e.is_timeout() && !reason.contains("timed out") {
        reason = format!("timed out ({reason})");
    }
    if e.is_builder() {
        reason = format!("invalid URL or request ({reason})");
    }
    ClientError::Unreachable { url: base.to_owned(), reason }
}

fn status_error(base: &str, status: u16, body: &[u8]) -> ClientError {
    let parsed = serde_json::from_slice::<ErrorBody>(body).ok().map(|b| b.error);
    let (code, message, deploy_id) = match parsed {
        Some(d) => (d.code, d.message, d.deploy_id),
        None => (format!("http_{status}"), format!("HTTP {status}: {}", snippet(body)), None),
    };
    match status {
        401 => ClientError::Unauthorized { url: base.to_owned() },
        404 => ClientError::NotFound { code, message },
        409 => ClientError::Conflict { code, message, deploy_id },
        400..=499 => ClientError::BadRequest { code, message },
        500..=599 => ClientError::Server { status, message },
        _ => ClientError::Protocol { url: base.to_owned(), message: format!("unexpected HTTP {status}: {message}") },
    }
}

/// The start of a body, for error messages: enough to recognise an HTML error page or a proxy.
fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    let mut s: String = text.chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect();
    if text.chars().count() > 200 {
        s.push('…');
    }
    s
}

/// Refuses URLs this client cannot use, before any request; gives the URL without its trailing `/`.
pub fn check_base_url(url: &str) -> Result<String, String> {
    let url = url.trim();
    match url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")) {
        Some(rest) if !rest.is_empty() && !rest.starts_with('/') => Ok(url.trim_end_matches('/').to_owned()),
        _ => Err(format!(
            "{url:?} is not a kua-deploy URL: give https://HOST[:PORT] or http://HOST:PORT, e.g. {DEFAULT_URL}"
        )),
    }
}

/// Where the admin token may come from, in the order they are tried.
#[derive(Debug, Clone, Default)]
pub struct TokenSources {
    /// `KUA_ADMIN_TOKEN`.
    pub env_token: Option<String>,
    /// `--token-file`, else `KUA_ADMIN_TOKEN_FILE`.
    pub token_file: Option<PathBuf>,
    /// The `token_file` of the server chosen in servers.json.
    pub server_token_file: Option<PathBuf>,
    /// `KUA_STATE_DIR`: the server writes a generated token to `admin-token` there.
    pub state_dir: Option<PathBuf>,
    /// The server's default state dir, `./kua-state`.
    pub default_state_dir: PathBuf,
}

impl TokenSources {
    /// The sources as this process's environment and options give them, with the chosen server's
    /// token file.
    pub fn from_env(token_file: Option<PathBuf>, server_token_file: Option<PathBuf>) -> TokenSources {
        TokenSources {
            env_token: std::env::var("KUA_ADMIN_TOKEN").ok(),
            token_file: token_file.or_else(|| std::env::var_os("KUA_ADMIN_TOKEN_FILE").map(PathBuf::from)),
            server_token_file,
            state_dir: std::env::var_os("KUA_STATE_DIR").map(PathBuf::from),
            default_state_dir: PathBuf::from("./kua-state"),
        }
    }
}

/// The file name the server writes a generated token to, in its state dir.
pub const TOKEN_FILE_NAME: &str = "admin-token";

/// Finds the admin token: `KUA_ADMIN_TOKEN`, else the token file named, else the chosen server's
/// `token_file`, else `admin-token` in `$KUA_STATE_DIR`, else in `./kua-state` (where a server
/// started here with no token configured writes one). A token file that was named but cannot be
/// read is an error, not a reason to try the next source: the user asked for that file.
pub fn resolve_token(src: &TokenSources) -> Result<String, String> {
    if let Some(t) = src.env_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
        return Ok(t.to_owned());
    }
    if let Some(path) = src.token_file.as_ref().or(src.server_token_file.as_ref()) {
        return read_token(path);
    }
    let candidates = src.state_dir.iter().chain(std::iter::once(&src.default_state_dir));
    for dir in candidates {
        let path = dir.join(TOKEN_FILE_NAME);
        if path.is_file() {
            return read_token(&path);
        }
    }
    Err(format!(
        "no admin token: set KUA_ADMIN_TOKEN, or pass --token-file (or KUA_ADMIN_TOKEN_FILE), or give the \
         server a token_file in servers.json, or run where the server's state dir has {TOKEN_FILE_NAME} \
         (KUA_STATE_DIR, default {})",
        src.default_state_dir.display()
    ))
}

fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the admin token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the admin token file {} is empty", path.display()));
    }
    Ok(token.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sources(dir: &Path) -> TokenSources {
        TokenSources { default_state_dir: dir.join("kua-state"), ..TokenSources::default() }
    }

    #[test]
    fn the_environment_token_wins_over_every_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "from-file").unwrap();
        let src = TokenSources { env_token: Some(" from-env\n".into()), token_file: Some(file), ..sources(dir.path()) };
        assert_eq!(resolve_token(&src).unwrap(), "from-env");
    }

    #[test]
    fn an_empty_environment_token_falls_through_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "  from-file \n").unwrap();
        let src = TokenSources { env_token: Some("  ".into()), token_file: Some(file), ..sources(dir.path()) };
        assert_eq!(resolve_token(&src).unwrap(), "from-file");
    }

    #[test]
    fn a_named_token_file_that_is_missing_is_an_error_not_a_fallback() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("kua-state")).unwrap();
        std::fs::write(dir.path().join("kua-state/admin-token"), "generated").unwrap();
        let src = TokenSources { token_file: Some(dir.path().join("nope")), ..sources(dir.path()) };
        assert!(resolve_token(&src).unwrap_err().contains("nope"));
    }

    #[test]
    fn the_servers_token_file_comes_after_the_token_file_option_and_before_the_state_dirs() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("kua-state")).unwrap();
        std::fs::write(dir.path().join("kua-state/admin-token"), "generated").unwrap();
        for (name, tok) in [("option", "from-option"), ("server", "from-server")] {
            std::fs::write(dir.path().join(name), tok).unwrap();
        }
        let server = Some(dir.path().join("server"));
        let src = TokenSources { server_token_file: server.clone(), ..sources(dir.path()) };
        assert_eq!(resolve_token(&src).unwrap(), "from-server");
        let src = TokenSources {
            token_file: Some(dir.path().join("option")),
            server_token_file: server,
            ..sources(dir.path())
        };
        assert_eq!(resolve_token(&src).unwrap(), "from-option");
    }

    #[test]
    fn the_state_dir_token_comes_before_the_default_state_dir() {
        let dir = tempfile::tempdir().unwrap();
        for (sub, tok) in [("state", "state-tok"), ("kua-state", "default-tok")] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
            std::fs::write(dir.path().join(sub).join("admin-token"), tok).unwrap();
        }
        let src = TokenSources { state_dir: Some(dir.path().join("state")), ..sources(dir.path()) };
        assert_eq!(resolve_token(&src).unwrap(), "state-tok");
    }

    #[test]
    fn the_default_state_dir_is_used_when_nothing_else_is_there() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("kua-state")).unwrap();
        std::fs::write(dir.path().join("kua-state/admin-token"), "default-tok\n").unwrap();
        let src = TokenSources { state_dir: Some(dir.path().join("missing")), ..sources(dir.path()) };
        assert_eq!(resolve_token(&src).unwrap(), "default-tok");
    }

    #[test]
    fn no_token_anywhere_says_how_to_give_one() {
        let dir = tempfile::tempdir().unwrap();
        let err = resolve_token(&sources(dir.path())).unwrap_err();
        assert!(err.contains("KUA_ADMIN_TOKEN") && err.contains("--token-file"), "{err}");
    }

    #[test]
    fn an_empty_token_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tok");
        std::fs::write(&file, "\n").unwrap();
        let src = TokenSources { token_file: Some(file), ..sources(dir.path()) };
        assert!(resolve_token(&src).unwrap_err().contains("empty"));
    }

    #[test]
    fn http_and_https_urls_are_accepted_and_nothing_else() {
        assert_eq!(check_base_url("http://127.0.0.1:8790/").unwrap(), "http://127.0.0.1:8790");
        assert_eq!(check_base_url("https://deploy.bruno.example/").unwrap(), "https://deploy.bruno.example");
        assert!(check_base_url("bruno:8790").is_err());
        assert!(check_base_url("http://").is_err());
        assert!(check_base_url("https:///x").is_err());
        assert!(check_base_url("ftp://bruno").is_err());
    }

    #[test]
    fn error_answers_map_to_their_kind() {
        let body = br#"{"error":{"code":"deploy_in_progress","message":"busy","deploy_id":"0190b5a2-7c3e-7000-8000-000000000000"}}"#;
        match status_error("http://x", 409, body) {
            ClientError::Conflict { code, deploy_id, .. } => {
                assert_eq!(code, "deploy_in_progress");
                assert!(deploy_id.is_some());
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(status_error("http://x", 401, b""), ClientError::Unauthorized { .. }));
        assert!(status_error("http://x", 502, b"<html>bad gateway</html>").is_retryable());
        assert!(matches!(status_error("http://x", 413, b"too big"), ClientError::BadRequest { .. }));
        assert_eq!(
            status_error("http://x", 404, br#"{"error":{"code":"no_deploys","message":"m"}}"#).code(),
            Some("no_deploys")
        );
    }
}
