//! Typed wrappers over the `docker` CLI on a host: the containers Compose made for a service, and
//! image IDs. [`compose`] drives `docker compose`; [`watch`] observes recreated containers until
//! they prove themselves (verify).

pub mod compose;
pub mod events;
pub mod watch;

use std::time::Duration;

use serde::Deserialize;

use tokio_util::sync::CancellationToken;

use crate::host::{Cmd, Host, NoLog, RunError};
use crate::model::{ImageId, ProjectName, ServiceName};

const QUERY_TIMEOUT: Duration = Duration::from_secs(30);

/// The labels Compose puts on the containers it creates.
const PROJECT_LABEL: &str = "com.docker.compose.project";
const SERVICE_LABEL: &str = "com.docker.compose.service";
const ONEOFF_LABEL: &str = "com.docker.compose.oneoff";

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(transparent)]
    Run(#[from] RunError),
    #[error("{what} failed: {detail}")]
    Failed { what: String, detail: String },
    #[error("{what}: unexpected output from docker: {detail}")]
    BadOutput { what: String, detail: String },
}

/// What kua-deploy needs to know of one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerInfo {
    pub id: String,
    pub name: String,
    pub image: String,
    pub state: String,
    pub health: String,
    pub started_at: String,
    pub restart_count: i64,
    /// The exit status of a container that has exited (0 while it runs).
    pub exit_code: i64,
    /// The Compose service it was created for (`com.docker.compose.service`) when Compose created
    /// it as one (`com.docker.compose.oneoff=False`); None for one-off and transient containers,
    /// which may carry the service label only because they inherited it from the image.
    pub service: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectContainer {
    id: String,
    name: String,
    image: String,
    state: InspectState,
    restart_count: i64,
    #[serde(default)]
    config: Option<InspectConfig>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectState {
    status: String,
    started_at: String,
    health: Option<InspectHealth>,
    #[serde(default)]
    exit_code: i64,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectHealth {
    status: String,
}

/// What kua-deploy needs to know of the container it runs in, to hand its own recreate over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnContainer {
    pub id: String,
    pub image: String,
    pub labels: std::collections::BTreeMap<String, String>,
    /// The program the container runs (its entrypoint), also in the new image.
    pub path: String,
    /// `(source on the engine's host, destination inside)` of each bind mount.
    pub mounts: Vec<(String, String)>,
    /// The destinations of the bind mounts that are read-only.
    pub read_only: Vec<String>,
    /// The user it runs as (`user:`; empty: the image's), and its supplementary groups
    /// (`group_add:`, e.g. the engine socket's group).
    pub user: String,
    pub group_add: Vec<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectOwn {
    id: String,
    image: String,
    path: String,
    config: InspectConfig,
    #[serde(default)]
    host_config: Option<InspectHostConfig>,
    #[serde(default)]
    mounts: Vec<InspectMount>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectHostConfig {
    #[serde(default)]
    group_add: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectConfig {
    #[serde(default)]
    labels: Option<std::collections::BTreeMap<String, String>>,
    #[serde(default)]
    user: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct InspectMount {
    #[serde(default)]
    source: String,
    #[serde(default)]
    destination: String,
    #[serde(default, rename = "Type")]
    kind: String,
    #[serde(default = "yes", rename = "RW")]
    rw: bool,
}

fn yes() -> bool {
    true
}

/// The engine a host's `docker` CLI talks to.
#[derive(Clone)]
pub struct Docker {
    host: Host,
}

impl Docker {
    pub fn new(host: Host) -> Self {
        Self { host }
    }

    async fn query(&self, what: &str, argv: Vec<String>) -> Result<String, DockerError> {
        let cmd = Cmd::new(argv).timeout(QUERY_TIMEOUT);
        Ok(self.host.run_ok(what, &cmd, &CancellationToken::new(), &NoLog).await?.stdout)
    }

    /// The containers Compose created for `service` of `project` — running or not, and never the
    /// one-off or transient ones that merely inherited the labels from a Compose-built image.
    pub async fn service_containers(
        &self,
        project: &ProjectName,
        service: &ServiceName,
    ) -> Result<Vec<ContainerInfo>, DockerError> {
        let filters = [
            format!("label=com.docker.compose.project={project}"),
            format!("label=com.docker.compose.service={service}"),
            "label=com.docker.compose.oneoff=False".to_owned(),
        ];
        let ids = self.ps(&filters, "{{.ID}}").await?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.inspect_containers(&ids).await
    }

    /// Every container Compose created for a service of `project` (see [`Self::service_containers`]),
    /// in two commands whatever the number of services.
    pub async fn project_containers(&self, project: &ProjectName) -> Result<Vec<ContainerInfo>, DockerError> {
        let filters = [format!("label={PROJECT_LABEL}={project}"), format!("label={ONEOFF_LABEL}=False")];
        let ids = self.ps(&filters, "{{.ID}}").await?;
        let ids: Vec<&str> = ids.split_whitespace().collect();
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        self.inspect_containers(&ids).await
    }

    /// `docker ps --all` with these filters, each container printed with `format`.
    async fn ps(&self, filters: &[String], format: &str) -> Result<String, DockerError> {
        let mut args = argv(["docker", "ps", "--all", "--no-trunc", "--format", format]);
        for f in filters {
            args.extend(["--filter".to_owned(), f.clone()]);
        }
        self.query("listing containers", args).await
    }

    pub async fn inspect_containers(&self, ids: &[&str]) -> Result<Vec<ContainerInfo>, DockerError> {
        let mut args = argv(["docker", "container", "inspect"]);
        args.extend(ids.iter().map(|s| s.to_string()));
        let out = self.host.query(&Cmd::new(args).timeout(QUERY_TIMEOUT)).await?;
        // A container removed between `ps` and `inspect` makes inspect fail for that id but still
        // print the others; only an answer with nothing in it is an error.
        let parsed: Vec<InspectContainer> =
            serde_json::from_str(out.stdout.trim()).map_err(|e| DockerError::BadOutput {
                what: "docker container inspect".into(),
                detail: if out.success() { e.to_string() } else { out.last_line() },
            })?;
        Ok(parsed
            .into_iter()
            .map(|c| ContainerInfo {
                id: c.id,
                name: c.name.trim_start_matches('/').to_owned(),
                image: c.image,
                state: c.state.status,
                health: c.state.health.map(|h| h.status).unwrap_or_else(|| "none".to_owned()),
                started_at: c.state.started_at,
                restart_count: c.restart_count,
                exit_code: c.state.exit_code,
                service: c.config.and_then(|c| c.labels).and_then(|mut l| {
                    let created_by_compose = l.get(ONEOFF_LABEL).is_some_and(|v| v == "False");
                    l.remove(SERVICE_LABEL).filter(|_| created_by_compose)
                }),
            })
            .collect())
    }

    /// `(id, name, service)` of the project's containers that were created and never started.
    pub async fn created_containers(
        &self,
        project: &ProjectName,
    ) -> Result<Vec<(String, String, String)>, DockerError> {
        let filters = [format!("label=com.docker.compose.project={project}"), "status=created".to_owned()];
        let out = self.ps(&filters, "{{.ID}}\t{{.Names}}\t{{.Label \"com.docker.compose.service\"}}").await?;
        Ok(out
            .lines()
            .filter_map(|l| {
                let mut f = l.split('\t');
                Some((f.next()?.to_owned(), f.next()?.to_owned(), f.next()?.to_owned()))
            })
            .collect())
    }

    /// The container `id` as [`OwnContainer`].
    pub async fn own_container(&self, id: &str) -> Result<OwnContainer, DockerError> {
        let what = format!("inspecting container {id}");
        let out = self.query(&what, argv(["docker", "container", "inspect", id])).await?;
        let mut parsed: Vec<InspectOwn> = serde_json::from_str(out.trim())
            .map_err(|e| DockerError::BadOutput { what: what.clone(), detail: e.to_string() })?;
        let c = parsed.pop().ok_or(DockerError::BadOutput { what, detail: "no container".into() })?;
        Ok(OwnContainer {
            id: c.id,
            image: c.image,
            labels: c.config.labels.unwrap_or_default(),
            path: c.path,
            read_only: c.mounts.iter().filter(|m| m.kind == "bind" && !m.rw).map(|m| m.destination.clone()).collect(),
            mounts: c.mounts.into_iter().filter(|m| m.kind == "bind").map(|m| (m.source, m.destination)).collect(),
            user: c.config.user,
            group_add: c.host_config.and_then(|h| h.group_add).unwrap_or_default(),
        })
    }

    /// The output a container printed (stdout and stderr), at most its last `tail` lines.
    pub async fn container_logs(&self, id: &str, tail: usize) -> Result<String, DockerError> {
        let cmd = Cmd::new(argv(["docker", "logs", "--tail", &tail.to_string(), id])).timeout(QUERY_TIMEOUT);
        let out = self.host.run(&cmd, &CancellationToken::new(), &NoLog).await?;
        Ok(format!("{}{}", out.stdout, out.stderr))
    }

    /// Starts a detached container; `argv` is everything after `docker run -d`.
    pub async fn run_detached(&self, args: Vec<String>, log: &dyn crate::host::LogSink) -> Result<String, DockerError> {
        let mut full = argv(["docker", "run", "--detach"]);
        full.extend(args);
        let cmd = Cmd::new(full).timeout(QUERY_TIMEOUT);
        let out = self.host.run_ok("starting the transient container", &cmd, &CancellationToken::new(), log).await?;
        Ok(out.stdout.trim().to_owned())
    }

    /// Waits until the container `id` has stopped (at most `limit`); its exit status.
    pub async fn wait_container(&self, id: &str, limit: Duration) -> Result<i64, DockerError> {
        let what = format!("waiting for container {id}");
        let cmd = Cmd::new(argv(["docker", "wait", id])).timeout(limit);
        let out = self.host.run_ok(&what, &cmd, &CancellationToken::new(), &NoLog).await?;
        out.stdout.trim().parse().map_err(|_| DockerError::BadOutput { what, detail: out.stdout.trim().to_owned() })
    }

    pub async fn remove_container(&self, id: &str) -> Result<(), DockerError> {
        self.query(&format!("removing container {id}"), argv(["docker", "rm", "--force", "--volumes", id]))
            .await
            .map(drop)
    }

    /// Points the tag `name` at the image `id`.
    pub async fn tag(&self, id: &ImageId, name: &str) -> Result<(), DockerError> {
        self.query(&format!("tagging {} as {name}", id.short()), argv(["docker", "tag", id.as_str(), name]))
            .await
            .map(drop)
    }

    /// The ID of the image a name (or ID) refers to now.
    pub async fn image_id(&self, image: &str) -> Result<ImageId, DockerError> {
        let what = format!("inspecting image {image}");
        let out = self.query(&what, argv(["docker", "image", "inspect", "--format", "{{.Id}}", image])).await?;
        ImageId::parse(out.trim()).map_err(|e| DockerError::BadOutput { what, detail: e.to_string() })
    }
}

pub(crate) fn argv<const N: usize>(words: [&str; N]) -> Vec<String> {
    words.iter().map(|s| s.to_string()).collect()
}
