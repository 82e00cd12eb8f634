//! Sending one request with retries: attempts at 0 s, 1 s and 4 s, each within
//! [`ATTEMPT_TIMEOUT`]; a 5xx answer or a connection error is retried, any other answer is not (a
//! 4xx: the target refuses what it got, and will again; a redirect is not followed, since it would
//! carry the token elsewhere). Each attempt and its outcome go to the deploy's log, the
//! target shown as [`shown_url`] and every line through the redactor.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::Request;
use crate::host::Redactor;
use crate::model::{LogSink, Stream};

/// The waits before each attempt.
pub const BACKOFF: [Duration; 3] = [Duration::ZERO, Duration::from_secs(1), Duration::from_secs(4)];
/// How long one attempt may take, connection and answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// How a delivery ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Delivered {
        attempts: usize,
    },
    Refused {
        status: u16,
    },
    GaveUp,
    /// The server stopped before it was done.
    Dropped,
}

/// `url` with nothing that may be a credential: scheme, host and port, and `/…` for a path or
/// query (a Slack-style URL's path is its token), never the userinfo.
pub fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let host = u.host_str().unwrap_or("?");
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            let rest = if u.path() == "/" && u.query().is_none() { "/" } else { "/…" };
            format!("{}://{host}{port}{rest}", u.scheme())
        }
        Err(_) => "(a URL that cannot be parsed)".to_owned(),
    }
}

/// The parts of `url` that may be secret, for a redactor: the whole URL, its password, its query
/// and its path.
pub fn secret_parts(url: &str) -> Vec<String> {
    let mut parts = vec![url.to_owned()];
    if let Ok(u) = reqwest::Url::parse(url) {
        parts.extend(u.password().map(str::to_owned));
        parts.extend(u.query().map(str::to_owned));
        if u.path().len() > 1 {
            parts.push(u.path().to_owned());
        }
    }
    parts
}

/// Sends `req` until it is delivered, refused, retried out, or `stop` fires; `what` names it in
/// the log (`notify webhook https://hooks.example/…`).
pub async fn deliver(
    http: &reqwest::Client,
    req: &Request,
    what: &str,
    log: &dyn LogSink,
    redactor: &Redactor,
    stop: &CancellationToken,
) -> Outcome {
    let say = |text: String| log.line(Stream::Info, &redactor.redact(&text));
    for (i, wait) in BACKOFF.iter().enumerate() {
        let attempt = i + 1;
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(*wait) => {}
                _ = stop.cancelled() => {
                    say(format!("{what}: dropped before attempt {attempt}: the server is stopping"));
                    return Outcome::Dropped;
                }
            }
        }
        let mut builder = http
            .post(&req.url)
            .timeout(ATTEMPT_TIMEOUT)
            .header(reqwest::header::CONTENT_TYPE, req.content_type)
            .header(reqwest::header::USER_AGENT, concat!("kua-deploy/", env!("CARGO_PKG_VERSION")))
            .body(req.body.clone());
        for (k, v) in &req.headers {
            builder = builder.header(*k, v);
        }
        let result = tokio::select! {
            r = builder.send() => r,
            _ = stop.cancelled() => {
                say(format!("{what}: attempt {attempt} dropped: the server is stopping"));
                return Outcome::Dropped;
            }
        };
        let last = attempt == BACKOFF.len();
        let then = match BACKOFF.get(attempt) {
            Some(w) => format!("retrying in {}s", w.as_secs()),
            None => "giving up".to_owned(),
        };
        match result {
            Ok(resp) if resp.status().is_success() => {
                say(format!("{what}: attempt {attempt} delivered ({})", resp.status().as_u16()));
                return Outcome::Delivered { attempts: attempt };
            }
            Ok(resp) if !resp.status().is_server_error() => {
                let status = resp.status().as_u16();
                say(format!(
                    "{what}: attempt {attempt} answered {status}; not retrying: the target refuses the request \
                     (check the URL, token and repository in the registry)"
                ));
                return Outcome::Refused { status };
            }
            Ok(resp) => say(format!("{what}: attempt {attempt} answered {}; {then}", resp.status().as_u16())),
            Err(e) => say(format!("{what}: attempt {attempt} failed: {}; {then}", cause(&e))),
        }
        if last {
            break;
        }
    }
    Outcome::GaveUp
}

/// The innermost cause of a transport error, without the URL reqwest's own message repeats.
fn cause(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        return format!("no answer within {}s", ATTEMPT_TIMEOUT.as_secs());
    }
    let mut root: &dyn std::error::Error = e;
    while let Some(next) = root.source() {
        root = next;
    }
    let text = root.to_string();
    if text.contains("://") {
        // Whatever names the URL names its secrets too.
        "the request could not be sent".to_owned()
    } else {
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shown_url_keeps_only_scheme_host_and_port() {
        assert_eq!(
            shown_url("https://user:pw@hooks.example:8443/services/T0/B0/XYZ?token=abc"),
            "https://hooks.example:8443/…"
        );
        assert_eq!(shown_url("http://127.0.0.1:9000/"), "http://127.0.0.1:9000/");
        assert_eq!(shown_url("http://127.0.0.1:9000/?t=1"), "http://127.0.0.1:9000/…");
    }

    #[test]
    fn the_secret_parts_of_a_url_are_its_password_query_and_path() {
        let parts = secret_parts("https://user:pw-secret@hooks.example/services/XYZ?token=abc");
        assert!(parts.contains(&"pw-secret".to_owned()));
        assert!(parts.contains(&"token=abc".to_owned()));
        assert!(parts.contains(&"/services/XYZ".to_owned()));
    }
}
