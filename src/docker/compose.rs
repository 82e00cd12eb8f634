//! `docker compose` for one app: resolve its project and files as Compose itself does, build its
//! services, recreate them on exact image IDs, and run one-off commands.
//!
//! Without `compose_files` no `--file` is passed, so Compose discovers the files (and the override
//! file) exactly as `docker compose` run in the checkout would; without `project`, the project is
//! the one Compose resolves, read once per deploy and passed explicitly from then on. A recreate
//! points each service's image tag at the exact ID first and then runs a plain `up`, so the
//! containers carry the checkout's own configuration: an operator's `docker compose up -d`
//! afterwards changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Docker, DockerError};
use crate::host::{Cmd, Detached, Host, LogSink, NoLog, Output, RunError, Stream};
use crate::model::{ProjectName, ServiceName};

const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const CONFIG_TIMEOUT: Duration = Duration::from_secs(60);

/// The Compose file names Compose looks for, in its order, and their override files.
const DISCOVERED: &[(&str, &str)] = &[
    ("compose.yaml", "compose.override.yaml"),
    ("compose.yml", "compose.override.yml"),
    ("docker-compose.yaml", "docker-compose.override.yaml"),
    ("docker-compose.yml", "docker-compose.override.yml"),
];

/// One Compose project as the registry describes it.
#[derive(Clone)]
pub struct Compose {
    host: Host,
    repo: PathBuf,
    /// Given, or resolved by [`Compose::resolve`]; None until then when the registry has none.
    project: Option<ProjectName>,
    /// None: Compose discovers them.
    files: Option<Vec<String>>,
    /// A vault's values: the environment of every Compose command, never in an argv.
    secret_env: Vec<(String, String)>,
}

/// What Compose made of the checkout: the project, the files, and the whole configuration.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub project: ProjectName,
    /// Relative to the checkout, as Compose reads them (override included).
    pub files: Vec<String>,
    pub config: serde_json::Value,
    /// Variables the files use that nobody set, which Compose replaced with "" (its warnings).
    pub unset: Vec<String>,
}

/// The names in Compose's `The "X" variable is not set. Defaulting to a blank string.` warnings.
fn unset_variables(stderr: &str) -> Vec<String> {
    let mut names: Vec<String> = stderr
        .lines()
        .filter_map(|l| {
            // `The "X" variable is not set`, plain or inside a quoted logfmt `msg="…\"X\"…"`.
            let before = l[..l.find("variable is not set")?].trim_end().trim_end_matches(['"', '\\']);
            let start = before.rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(0, |i| i + 1);
            (start < before.len()).then(|| before[start..].to_owned())
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

impl Compose {
    pub fn new(host: Host, repo: PathBuf, project: Option<ProjectName>, files: Option<Vec<String>>) -> Self {
        Self { host, repo, project, files, secret_env: Vec::new() }
    }

    /// The same app, every Compose command given `vars` as environment and its output redacted
    /// of their values.
    pub fn with_secret_env(mut self, vars: &[(String, String)]) -> Self {
        self.host = self.host.with_secrets(vars.iter().map(|(_, v)| v.clone()));
        self.secret_env = vars.to_vec();
        self
    }

    /// The same app with its project fixed (as a deploy resolved it).
    pub fn with_project(mut self, project: ProjectName) -> Self {
        self.project = Some(project);
        self
    }

    /// The project; before [`Compose::resolve`] of an app without one, a placeholder no container
    /// carries, so that nothing is taken for the app's.
    /// Whether the project is known (given, or fixed by a resolve).
    pub fn has_project(&self) -> bool {
        self.project.is_some()
    }

    pub fn project(&self) -> &ProjectName {
        static UNRESOLVED: std::sync::OnceLock<ProjectName> = std::sync::OnceLock::new();
        self.project
            .as_ref()
            .unwrap_or_else(|| UNRESOLVED.get_or_init(|| ProjectName::parse("kua-unresolved").expect("valid")))
    }

    /// Reads the configuration as Compose resolves it in the checkout: project name, files and
    /// services. Also proves the files exist and parse.
    pub async fn resolve(&self, cancel: &CancellationToken, log: &dyn LogSink) -> Result<Resolved, DockerError> {
        let what = "reading the Compose configuration";
        let out = self
            .host
            .run(&self.cmd(&["config", "--format", "json"]).timeout(CONFIG_TIMEOUT), cancel, &QuietOnSuccess(log))
            .await?;
        if !out.success() {
            let detail = out.last_line();
            let detail = if self.files.is_none() && detail.contains("no configuration file provided") {
                format!(
                    "no Compose file in {} (Compose looks for {}); add one, or set \"compose_files\" in the registry",
                    self.repo.display(),
                    DISCOVERED.iter().map(|(f, _)| *f).collect::<Vec<_>>().join(", ")
                )
            } else {
                detail
            };
            return Err(DockerError::Failed { what: what.into(), detail });
        }
        let config: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| DockerError::BadOutput { what: "docker compose config".into(), detail: e.to_string() })?;
        let project = match &self.project {
            Some(p) => p.clone(),
            None => config["name"].as_str().and_then(|n| ProjectName::parse(n).ok()).ok_or_else(|| {
                DockerError::BadOutput { what: what.into(), detail: "Compose named no project".into() }
            })?,
        };
        let files = match &self.files {
            Some(files) => files.clone(),
            None => self.discovered_files().await?,
        };
        Ok(Resolved { project, files, config, unset: unset_variables(&out.stderr) })
    }

    /// Which files Compose discovers in the checkout: `COMPOSE_FILE` from `.env`, else the first
    /// of [`DISCOVERED`] present and its override file. Only reported: Compose itself reads them.
    /// Asked of git (which every app host has), ignored files included.
    async fn discovered_files(&self) -> Result<Vec<String>, DockerError> {
        let mut candidates: Vec<&str> = DISCOVERED.iter().flat_map(|(f, o)| [*f, *o]).collect();
        candidates.push(".env");
        let mut names = Vec::new();
        for extra in [&["--cached", "--others"][..], &["--others", "--ignored", "--exclude-standard"][..]] {
            let mut argv = vec!["git", "ls-files"];
            argv.extend(extra);
            argv.push("--");
            argv.extend(&candidates);
            let cmd = Cmd::new(argv).cwd(&self.repo);
            let never = CancellationToken::new();
            let out = self.host.run_ok("listing the checkout's Compose files", &cmd, &never, &NoLog).await?;
            names.extend(out.stdout.lines().map(str::to_owned));
        }
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let dotenv = if names.contains(&".env") {
            let cmd = Cmd::new(["cat", "--", ".env"]).cwd(&self.repo);
            match self.host.query(&cmd).await {
                Ok(o) if o.success() => Some(o.stdout),
                // No `cat` on the host: say what cannot be known rather than guess.
                _ => {
                    return Ok(vec![format!(
                        "{} (or COMPOSE_FILE from .env)",
                        discovered_files(&names, None).join(", ")
                    )])
                }
            }
        } else {
            None
        };
        Ok(discovered_files(&names, dotenv.as_deref()))
    }

    /// The host its commands run on (with the redaction of its secret values).
    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn docker(&self) -> Docker {
        Docker::new(self.host.clone())
    }

    /// `docker compose [-p P] [-f a.yml …] <args>`, run in the checkout.
    fn cmd(&self, args: &[&str]) -> Cmd {
        let mut argv = vec!["docker".to_owned(), "compose".to_owned()];
        if let Some(p) = &self.project {
            argv.extend(["--project-name".to_owned(), p.to_string()]);
        }
        for f in self.files.iter().flatten() {
            argv.extend(["--file".to_owned(), f.clone()]);
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        Cmd::new(argv).cwd(&self.repo).secret_env(&self.secret_env)
    }

    async fn ok(
        &self,
        what: &str,
        cmd: Cmd,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<Output, DockerError> {
        Ok(self.host.run_ok(what, &cmd, cancel, log).await?)
    }

    /// The image name each service builds to: its `image:` or Compose's default `<project>-<service>`.
    pub fn image_names(
        resolved: &Resolved,
        services: &[ServiceName],
    ) -> Result<BTreeMap<ServiceName, String>, DockerError> {
        let mut names = BTreeMap::new();
        for s in services {
            let Some(svc) = resolved.config["services"].get(s.as_str()) else {
                return Err(DockerError::Failed {
                    what: "reading the Compose configuration".into(),
                    detail: format!("service {s} is not defined in the Compose files {}", resolved.files.join(", ")),
                });
            };
            if svc.get("build").is_none() {
                return Err(DockerError::Failed {
                    what: "reading the Compose configuration".into(),
                    detail: format!("service {s} has no `build:` section, so there is nothing to build"),
                });
            }
            let name =
                svc["image"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{}-{}", resolved.project, s));
            names.insert(s.clone(), name);
        }
        Ok(names)
    }

    pub async fn build(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), DockerError> {
        let mut args = vec!["build"];
        args.extend(services.iter().map(|s| s.as_str()));
        self.ok("docker compose build", self.cmd(&args).timeout(BUILD_TIMEOUT), cancel, log).await.map(drop)
    }

    /// Starts the recreate of exactly `services` (`up --no-deps --force-recreate`, never pulling:
    /// their tags already point at the wanted image IDs), detached: it finishes even if
    /// kua-deploy dies meanwhile. Leftovers of an interrupted recreate are removed first.
    pub async fn start_recreate(
        &self,
        services: &[ServiceName],
        output: &std::path::Path,
        log: &dyn LogSink,
    ) -> Result<Detached, DockerError> {
        self.remove_interrupted_recreates(services, log).await?;
        // No `--no-build`: the tags exist (so nothing is built), and Compose 2.x records a
        // different config hash with it, which would make a later plain `up` recreate everything.
        let mut args = vec!["up", "--detach", "--no-deps", "--force-recreate", "--pull", "never"];
        args.extend(services.iter().map(|s| s.as_str()));
        let cmd = self.cmd(&args);
        log.line(Stream::Info, &format!("$ {}", cmd.display()));
        Ok(self.host.spawn_detached(&cmd, output).await?)
    }

    /// Compose recreates a container by creating the new one as `<old id>_<name>`, then removing the
    /// old one and renaming. Killed in between (a cancelled or interrupted deploy), it leaves that
    /// never-started container behind, and every later `up` fails on its name. It never ran, so
    /// removing it loses nothing.
    async fn remove_interrupted_recreates(
        &self,
        services: &[ServiceName],
        log: &dyn LogSink,
    ) -> Result<(), DockerError> {
        let docker = self.docker();
        for (id, name, service) in docker.created_containers(self.project()).await? {
            let ours = ServiceName::parse(&service).is_ok_and(|s| services.contains(&s));
            if ours && is_interrupted_recreate_name(&name) {
                log.line(Stream::Info, &format!("removing {name}, left by an interrupted recreate"));
                docker.remove_container(&id).await?;
            }
        }
        Ok(())
    }

    /// Runs `command` in a one-off container of `service` (its tag pointing at the image wanted),
    /// removed afterwards.
    pub async fn run_oneoff(
        &self,
        service: &ServiceName,
        command: &[String],
        timeout: Duration,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), DockerError> {
        // Named, so that a cancel or timeout can stop the container too: killing the `compose run`
        // client alone would leave the migration running on its own.
        let name =
            format!("{}-{service}-kua-migrate-{}", self.project(), &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut args = vec!["run", "--rm", "--no-deps", "-T", "--name", &name, service.as_str()];
        args.extend(command.iter().map(String::as_str));
        let result = self
            .ok(
                &format!("the migration command in a one-off {service} container"),
                self.cmd(&args).timeout(timeout),
                cancel,
                log,
            )
            .await;
        if let Err(DockerError::Run(RunError::Cancelled { .. } | RunError::TimedOut { .. })) = &result {
            log.line(Stream::Info, &format!("removing the migration container {name}"));
            let _ = self.docker().remove_container(&name).await;
        }
        result.map(drop)
    }
}

fn is_interrupted_recreate_name(name: &str) -> bool {
    name.split_once('_').is_some_and(|(prefix, rest)| {
        prefix.len() == 12 && prefix.bytes().all(|b| b.is_ascii_hexdigit()) && !rest.is_empty()
    })
}

/// Compose's own discovery, for the report: `COMPOSE_FILE` in `.env` (split on
/// `COMPOSE_PATH_SEPARATOR`, default `:`), else the first known file name present and its override.
fn discovered_files(names: &[&str], dotenv: Option<&str>) -> Vec<String> {
    let var = |key: &str| {
        dotenv?.lines().find_map(|l| {
            let (k, v) = l.trim().strip_prefix("export ").unwrap_or(l.trim()).split_once('=')?;
            (k.trim() == key).then(|| v.trim().trim_matches(['"', '\'']).to_owned())
        })
    };
    if let Some(list) = var("COMPOSE_FILE").filter(|l| !l.is_empty()) {
        let sep = var("COMPOSE_PATH_SEPARATOR").unwrap_or_else(|| ":".into());
        return list.split(sep.as_str()).filter(|f| !f.is_empty()).map(str::to_owned).collect();
    }
    let Some((file, over)) = DISCOVERED.iter().find(|(f, _)| names.contains(f)) else { return Vec::new() };
    let mut files = vec![file.to_string()];
    if names.contains(over) {
        files.push(over.to_string());
    }
    files
}

/// Passes output to the log only when the command fails: `config` prints the whole project,
/// which would drown the log on every deploy.
struct QuietOnSuccess<'a>(&'a dyn LogSink);

impl LogSink for QuietOnSuccess<'_> {
    fn line(&self, stream: Stream, text: &str) {
        if stream == Stream::Stderr {
            self.0.line(stream, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_compose_defaulted_to_blank_are_read_from_its_warnings() {
        let stderr = "time=\"2026\" level=warning msg=\"The \\\"DB_PASSWORD\\\" variable is not set. Defaulting to a blank string.\"\n\
                      WARN[0000] The \"API_KEY\" variable is not set. Defaulting to a blank string.\nother\n";
        assert_eq!(unset_variables(stderr), ["API_KEY", "DB_PASSWORD"]);
    }

    #[test]
    fn only_compose_recreate_leftover_names_are_recognised() {
        assert!(is_interrupted_recreate_name("812ffb37a179_exp-web-1"));
        assert!(!is_interrupted_recreate_name("exp-web-1"));
        assert!(!is_interrupted_recreate_name("my_app-web-1"));
        assert!(!is_interrupted_recreate_name("812ffb37a179_"));
    }

    #[test]
    fn discovery_prefers_compose_yaml_and_adds_its_override() {
        let names = ["docker-compose.yml", "compose.yaml", "compose.override.yaml", "docker-compose.override.yml"];
        assert_eq!(discovered_files(&names, None), ["compose.yaml", "compose.override.yaml"]);
        assert_eq!(
            discovered_files(&["docker-compose.yml", "docker-compose.override.yml"], None),
            ["docker-compose.yml", "docker-compose.override.yml"]
        );
        assert_eq!(discovered_files(&["docker-compose.yml", "compose.override.yaml"], None), ["docker-compose.yml"]);
        assert!(discovered_files(&["README.md"], None).is_empty());
    }

    #[test]
    fn compose_file_in_dotenv_names_the_files() {
        let env = "A=1\nCOMPOSE_FILE=base.yml;prod.yml\nCOMPOSE_PATH_SEPARATOR=;\n";
        assert_eq!(discovered_files(&["compose.yaml"], Some(env)), ["base.yml", "prod.yml"]);
        assert_eq!(discovered_files(&["compose.yaml"], Some("export COMPOSE_FILE=\"x.yml\"")), ["x.yml"]);
    }
}
