//! `docker compose` for one app: build its services, recreate them pinned to exact image IDs, and
//! run one-off commands. Pinning goes through an override file on stdin (`-f -`), so nothing is
//! written into the app's checkout and a tag moved by someone else's build changes nothing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{Docker, DockerError};
use crate::host::{Cmd, Host, LogSink, Output, RunError};
use crate::model::{ImageId, Images, ProjectName, ServiceName};

const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
const UP_TIMEOUT: Duration = Duration::from_secs(5 * 60);
const CONFIG_TIMEOUT: Duration = Duration::from_secs(60);

/// One Compose project as the registry describes it.
#[derive(Clone)]
pub struct Compose {
    host: Host,
    repo: PathBuf,
    project: ProjectName,
    files: Vec<String>,
}

impl Compose {
    pub fn new(host: Host, repo: PathBuf, project: ProjectName, files: Vec<String>) -> Self {
        Self { host, repo, project, files }
    }

    pub fn project(&self) -> &ProjectName {
        &self.project
    }

    pub fn docker(&self) -> Docker {
        Docker::new(self.host.clone())
    }

    /// `docker compose -p P -f a.yml [-f b.yml] [-f -] <args>`, run in the checkout.
    fn cmd(&self, with_override: Option<String>, args: &[&str]) -> Cmd {
        let mut argv =
            vec!["docker".to_owned(), "compose".to_owned(), "--project-name".to_owned(), self.project.to_string()];
        for f in &self.files {
            argv.push("--file".to_owned());
            argv.push(f.clone());
        }
        if with_override.is_some() {
            argv.push("--file".to_owned());
            argv.push("-".to_owned());
        }
        argv.extend(args.iter().map(|s| s.to_string()));
        let mut cmd = Cmd::new(argv).cwd(&self.repo);
        if let Some(yaml) = with_override {
            cmd = cmd.stdin(yaml);
        }
        cmd
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
    /// Also proves the Compose files exist and parse.
    pub async fn image_names(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<BTreeMap<ServiceName, String>, DockerError> {
        let out = self
            .ok(
                "reading the Compose configuration",
                self.cmd(None, &["config", "--format", "json"]).timeout(CONFIG_TIMEOUT),
                cancel,
                &QuietOnSuccess(log),
            )
            .await?;
        let config: serde_json::Value = serde_json::from_str(&out.stdout)
            .map_err(|e| DockerError::BadOutput { what: "docker compose config".into(), detail: e.to_string() })?;
        let mut names = BTreeMap::new();
        for s in services {
            let Some(svc) = config["services"].get(s.as_str()) else {
                return Err(DockerError::Failed {
                    what: "reading the Compose configuration".into(),
                    detail: format!("service {s} is not defined in the Compose files {}", self.files.join(", ")),
                });
            };
            if svc.get("build").is_none() {
                return Err(DockerError::Failed {
                    what: "reading the Compose configuration".into(),
                    detail: format!("service {s} has no `build:` section, so there is nothing to build"),
                });
            }
            let name = svc["image"].as_str().map(str::to_owned).unwrap_or_else(|| format!("{}-{}", self.project, s));
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
        self.ok("docker compose build", self.cmd(None, &args).timeout(BUILD_TIMEOUT), cancel, log).await.map(drop)
    }

    /// Recreates exactly `images`' services with exactly those image IDs; other services of the
    /// project are not touched (`--no-deps`).
    pub async fn up_pinned(
        &self,
        images: &Images,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), DockerError> {
        self.remove_interrupted_recreates(images, log).await?;
        let mut args = vec!["up", "--detach", "--no-deps", "--no-build", "--force-recreate", "--pull", "never"];
        args.extend(images.keys().map(|s| s.as_str()));
        self.ok("docker compose up", self.cmd(Some(pin_override(images)), &args).timeout(UP_TIMEOUT), cancel, log)
            .await
            .map(drop)
    }

    /// Compose recreates a container by creating the new one as `<old id>_<name>`, then removing the
    /// old one and renaming. Killed in between (a cancelled or interrupted deploy), it leaves that
    /// never-started container behind, and every later `up` fails on its name. It never ran, so
    /// removing it loses nothing.
    async fn remove_interrupted_recreates(&self, images: &Images, log: &dyn LogSink) -> Result<(), DockerError> {
        let docker = self.docker();
        for (id, name, service) in docker.created_containers(&self.project).await? {
            let ours = ServiceName::parse(&service).is_ok_and(|s| images.contains_key(&s));
            if ours && is_interrupted_recreate_name(&name) {
                log.line(crate::host::Stream::Info, &format!("removing {name}, left by an interrupted recreate"));
                docker.remove_container(&id).await?;
            }
        }
        Ok(())
    }

    /// Runs `command` in a one-off container of `service` from `image`, removed afterwards.
    pub async fn run_oneoff(
        &self,
        service: &ServiceName,
        image: &ImageId,
        command: &[String],
        timeout: Duration,
        cancel: &CancellationToken,
        log: &dyn LogSink,
    ) -> Result<(), DockerError> {
        let pin: Images = [(service.clone(), image.clone())].into();
        // Named, so that a cancel or timeout can stop the container too: killing the `compose run`
        // client alone would leave the migration running on its own.
        let name =
            format!("{}-{service}-kua-migrate-{}", self.project, &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let mut args = vec!["run", "--rm", "--no-deps", "-T", "--name", &name, service.as_str()];
        args.extend(command.iter().map(String::as_str));
        let result = self
            .ok(
                &format!("the migration command in a one-off {service} container"),
                self.cmd(Some(pin_override(&pin)), &args).timeout(timeout),
                cancel,
                log,
            )
            .await;
        if let Err(DockerError::Run(RunError::Cancelled { .. } | RunError::TimedOut { .. })) = &result {
            log.line(crate::host::Stream::Info, &format!("removing the migration container {name}"));
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

/// The override that pins each service to an image ID. JSON is YAML, so serde_json writes it.
fn pin_override(images: &Images) -> String {
    let services: serde_json::Map<String, serde_json::Value> = images
        .iter()
        .map(|(s, id)| (s.to_string(), serde_json::json!({ "image": id.as_str(), "pull_policy": "never" })))
        .collect();
    serde_json::json!({ "services": services }).to_string()
}

/// Passes output to the log only when the command fails: `config` prints the whole project,
/// which would drown the log on every deploy.
struct QuietOnSuccess<'a>(&'a dyn LogSink);

impl LogSink for QuietOnSuccess<'_> {
    fn line(&self, stream: crate::host::Stream, text: &str) {
        if stream == crate::host::Stream::Stderr {
            self.0.line(stream, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_compose_recreate_leftover_names_are_recognised() {
        assert!(is_interrupted_recreate_name("812ffb37a179_exp-web-1"));
        assert!(!is_interrupted_recreate_name("exp-web-1"));
        assert!(!is_interrupted_recreate_name("my_app-web-1"));
        assert!(!is_interrupted_recreate_name("812ffb37a179_"));
    }

    #[test]
    fn the_pin_override_names_each_service_with_its_image_id_and_never_pulls() {
        let id = ImageId::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        let images: Images = [(ServiceName::parse("web").unwrap(), id.clone())].into();
        let v: serde_json::Value = serde_json::from_str(&pin_override(&images)).unwrap();
        assert_eq!(v["services"]["web"]["image"], id.as_str());
        assert_eq!(v["services"]["web"]["pull_policy"], "never");
    }
}
