//! `secrets` (only with a `secrets` command): runs the app's vault command on its host, with no
//! shell, and keeps what it printed **in memory only**: the values reach the runtime's build,
//! apply and one-off runs as environment ([`Target::use_secrets`]) and every redactor of the
//! deploy, and nothing else — not the checkout, the state dir, the database, a file, an argv, the
//! API or a log line. The step's detail names the variables, never a value. A rollback and a
//! resumed deploy fetch them again: nothing is kept to fetch from.
//!
//! [`Target::use_secrets`]: crate::target::Target::use_secrets

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DeployCtx, StepOutcome};
use crate::config::{SecretsConfig, SecretsFormat};
use crate::host::{Cmd, Host, NoLog, RunError};
use crate::model::AppName;

/// A failure of this step is rolled back: no, it runs before anything is built.
pub const ROLLS_BACK: bool = false;

/// Shorter values are refused: redacting them would cut words out of every log line.
pub const MIN_VALUE_LEN: usize = 4;

/// One fetch: each variable and its value, in the order the command printed them.
pub type SecretVars = Vec<(String, String)>;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let Some(config) = ctx.app.secrets.clone() else {
        return StepOutcome::Skipped("no secrets command for this app".into());
    };
    let vars = match fetch(&ctx.host, &config, &ctx.app.name, &ctx.app.repo, &ctx.cancel).await {
        Ok(vars) => vars,
        Err(FetchError::Stopped) => return StepOutcome::Stopped,
        Err(FetchError::Failed(why)) => return StepOutcome::Failed(why),
    };
    ctx.use_secrets(&vars);
    // With the values in place, a variable Compose still finds unset would become "".
    match ctx.target.resolve(&ctx.app.services, &ctx.cancel, &NoLog).await {
        Ok(plan) if !plan.unset.is_empty() => {
            return StepOutcome::Failed(format!(
                "the Compose files use {}, which the secrets command did not give and Compose would make empty; \
                 add them to the vault, or give them a default in the Compose file (${{NAME:-default}})",
                plan.unset.join(", ")
            ))
        }
        Ok(_) => {}
        Err(e) => return e.into(),
    }
    let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
    StepOutcome::Succeeded(format!("provided {}", names.join(", ")))
}

/// Fetches the secrets again (a rollback, a resumed deploy: nothing was kept) and hands them on
/// as the step does; nothing to do for an app without a secrets command.
pub(super) async fn fetch_again(ctx: &mut DeployCtx) -> Result<(), FetchError> {
    let Some(config) = ctx.app.secrets.clone() else { return Ok(()) };
    // Not stopped by shutdown: a rollback without its secrets would start the app without them.
    let never = CancellationToken::new();
    let vars = fetch(&ctx.host, &config, &ctx.app.name, &ctx.app.repo, &never).await?;
    ctx.log.info(&format!(
        "fetched the secrets again: {}",
        vars.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>().join(", ")
    ));
    ctx.use_secrets(&vars);
    Ok(())
}

/// Why a fetch gave nothing.
#[derive(Debug, thiserror::Error)]
pub(super) enum FetchError {
    #[error("stopped")]
    Stopped,
    /// Says what went wrong, never a value.
    #[error("{0}")]
    Failed(String),
}

/// Runs the vault command for `app` on `host` (in its checkout) and parses what it printed.
pub(super) async fn fetch(
    host: &Host,
    config: &SecretsConfig,
    app: &AppName,
    repo: &std::path::Path,
    cancel: &CancellationToken,
) -> Result<SecretVars, FetchError> {
    let argv = config.argv(app);
    let program = argv[0].clone();
    let cmd = Cmd::new(argv).cwd(repo).timeout(Duration::from_secs(config.timeout_s));
    // Its output is never handed to a log: the values are not known to the redactor yet.
    let out = match host.run(&cmd, cancel, &NoLog).await {
        Ok(out) => out,
        Err(RunError::Cancelled { .. }) => return Err(FetchError::Stopped),
        Err(RunError::TimedOut { .. }) => {
            return Err(FetchError::Failed(format!(
                "the secrets command {program} did not finish within {}s (\"timeout_s\"); it was stopped",
                config.timeout_s
            )))
        }
        Err(e) => return Err(FetchError::Failed(format!("cannot run the secrets command {program}: {e}"))),
    };
    if !out.success() {
        let stderr: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        let tail = stderr[stderr.len().saturating_sub(3)..].join(" | ");
        let status = out.code.map_or("a signal".to_owned(), |c| format!("status {c}"));
        return Err(FetchError::Failed(format!("the secrets command {program} exited with {status}: {tail}")));
    }
    let vars = match config.format {
        SecretsFormat::Dotenv => parse_dotenv(&out.stdout),
        SecretsFormat::Json => parse_json(&out.stdout),
    }
    .map_err(|e| FetchError::Failed(format!("the secrets command {program} printed {e}")))?;
    if let Some((name, _)) = vars.iter().find(|(_, v)| v.len() < MIN_VALUE_LEN) {
        return Err(FetchError::Failed(format!(
            "the value of {name} is shorter than {MIN_VALUE_LEN} characters: it could not be kept out of the logs \
             (redacting it would cut it out of every word); use a longer one"
        )));
    }
    if vars.is_empty() {
        return Err(FetchError::Failed(format!("the secrets command {program} printed no variables")));
    }
    Ok(vars)
}

fn is_env_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Keeps the last value of a name given twice, where it first appeared.
fn push(vars: &mut SecretVars, name: String, value: String) {
    match vars.iter_mut().find(|(k, _)| *k == name) {
        Some(slot) => slot.1 = value,
        None => vars.push((name, value)),
    }
}

/// `KEY=VALUE` lines as dotenv tools read them: blank lines and `#` comments skipped, an optional
/// `export ` prefix, values bare (an inline ` #` comment cut, spaces trimmed), 'single-quoted'
/// (literal) or "double-quoted" (`\n`, `\"`, `\\` escapes). An error names the line, never its text.
pub(super) fn parse_dotenv(text: &str) -> Result<SecretVars, String> {
    let mut vars = SecretVars::new();
    for (i, raw) in text.lines().enumerate() {
        let n = i + 1;
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").map(str::trim_start).unwrap_or(line);
        let Some((name, rest)) = line.split_once('=') else {
            return Err(format!("line {n} that is not KEY=VALUE"));
        };
        let name = name.trim();
        if !is_env_name(name) {
            return Err(format!("line {n} whose name is not a variable name (letters, digits, _)"));
        }
        let rest = rest.trim_start();
        let value = match rest.chars().next() {
            Some('\'') => match rest[1..].find('\'') {
                Some(end) if rest[1 + end + 1..].trim().is_empty() || rest[1 + end + 1..].trim().starts_with('#') => {
                    rest[1..1 + end].to_owned()
                }
                Some(_) => return Err(format!("line {n} with text after its closing quote")),
                None => return Err(format!("line {n} whose quoted value is not closed on that line")),
            },
            Some('"') => {
                let mut value = String::new();
                let mut chars = rest[1..].char_indices();
                let mut closed_at = None;
                while let Some((j, c)) = chars.next() {
                    match c {
                        '"' => {
                            closed_at = Some(1 + j + 1);
                            break;
                        }
                        '\\' => match chars.next().map(|(_, e)| e) {
                            Some('n') => value.push('\n'),
                            Some('t') => value.push('\t'),
                            Some(e) => value.push(e),
                            None => value.push('\\'),
                        },
                        c => value.push(c),
                    }
                }
                match closed_at {
                    Some(end) if rest[end..].trim().is_empty() || rest[end..].trim().starts_with('#') => value,
                    Some(_) => return Err(format!("line {n} with text after its closing quote")),
                    None => return Err(format!("line {n} whose quoted value is not closed on that line")),
                }
            }
            _ => {
                let bare = match rest.find(" #") {
                    Some(i) => &rest[..i],
                    None => rest,
                };
                bare.trim_end().to_owned()
            }
        };
        push(&mut vars, name.to_owned(), value);
    }
    Ok(vars)
}

/// One JSON object whose values are strings. An error says where, never what.
pub(super) fn parse_json(text: &str) -> Result<SecretVars, String> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| format!("output that is not valid JSON (line {}, column {})", e.line(), e.column()))?;
    let Some(object) = value.as_object() else {
        return Err("JSON that is not one object of strings".into());
    };
    let mut vars = SecretVars::new();
    for (name, v) in object {
        if !is_env_name(name) {
            return Err("a JSON key that is not a variable name (letters, digits, _)".into());
        }
        let Some(s) = v.as_str() else {
            return Err(format!("a JSON value for {name} that is not a string"));
        };
        push(&mut vars, name.clone(), s.to_owned());
    }
    Ok(vars)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> SecretVars {
        v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn dotenv_reads_comments_blank_lines_quotes_and_the_export_prefix_as_dotenv_tools_do() {
        let text = "# the app's secrets\n\nDB_PASSWORD=hunter22\nexport API_KEY = 'a b #c'\n\
                    TOKEN=\"line1\\nline2 \\\"q\\\"\"  # comment\nBARE=value with spaces  # cut here\nDB_PASSWORD=again123\n";
        assert_eq!(
            parse_dotenv(text).unwrap(),
            pairs(&[
                ("DB_PASSWORD", "again123"),
                ("API_KEY", "a b #c"),
                ("TOKEN", "line1\nline2 \"q\""),
                ("BARE", "value with spaces")
            ])
        );
    }

    #[test]
    fn a_dotenv_error_names_the_line_and_never_shows_its_text() {
        for (text, line) in [
            ("OK=fine\nsecret-without-equals\n", "line 2 "),
            ("OK=fine\n\nBAD-NAME=topsecret\n", "line 3 "),
            ("A='topsecret\n", "line 1 "),
            ("A=\"topsecret\" trailing\n", "line 1 "),
        ] {
            let e = parse_dotenv(text).unwrap_err();
            assert!(e.contains(line), "{e}");
            assert!(!e.contains("secret"), "the error shows the text: {e}");
        }
    }

    #[test]
    fn json_takes_one_object_of_strings_and_its_errors_show_no_value() {
        assert_eq!(
            parse_json(r#"{"A": "value1", "B": "value2"}"#).unwrap(),
            pairs(&[("A", "value1"), ("B", "value2")])
        );
        for text in [r#"["topsecret"]"#, r#"{"A": 12345678}"#, r#"{"A": "topsecret""#, r#"{"no-name": "topsecret"}"#] {
            let e = parse_json(text).unwrap_err();
            assert!(!e.contains("topsecret") && !e.contains("12345678"), "{e}");
        }
    }
}
