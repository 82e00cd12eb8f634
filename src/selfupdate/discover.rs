//! Finding the self app: the container this process runs in (from its bind mounts), matched to
//! the registry's `self` app or, without one, by its Compose project and service labels.

use std::time::Duration;

use crate::config::{AppConfig, HostSpec, Registry};
use crate::docker::{Docker, OwnContainer};
use crate::model::{AppName, ServiceName};

/// The self app as this process found it at start: the app, its service, and this container.
#[derive(Debug, Clone)]
pub struct SelfTarget {
    pub app: AppName,
    pub service: ServiceName,
    pub container: OwnContainer,
    /// How long the old process waits to be replaced before it calls the handoff failed.
    pub ceiling: Duration,
}

/// The id of the container this process runs in, from the engine's bind mounts of
/// `/etc/hostname` and friends (`…/containers/<id>/…`); None outside a container.
fn own_container_id() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let rest = &line[line.find("/containers/")? + "/containers/".len()..];
        let id: String = rest.chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        (id.len() == 64).then_some(id)
    })
}

/// Finds the self app: the registry's `self`, or the app whose Compose project and service are
/// this container's labels. Only an app on the local host can be this process's own.
pub async fn discover(registry: &Registry, docker: &Docker, ceiling: Duration) -> Option<SelfTarget> {
    let own = docker.own_container(&own_container_id()?).await.ok()?;
    // A one-off (`compose run`) or transient container of the image is not the service.
    if own.labels.get("com.docker.compose.oneoff").map(String::as_str) != Some("False") {
        return None;
    }
    let project = own.labels.get("com.docker.compose.project")?;
    let working_dir = own.labels.get("com.docker.compose.project.working_dir");
    let service = ServiceName::parse(own.labels.get("com.docker.compose.service")?).ok()?;
    // An app without a `project` is the one Compose resolved in its checkout: the container's
    // working-dir label names that checkout.
    let same_project = |a: &AppConfig| match &a.project {
        Some(p) => p.as_str() == project,
        None => working_dir.is_some_and(|w| std::path::Path::new(w) == a.repo),
    };
    let app = match &registry.self_app {
        Some(name) => registry.app(name)?,
        None => registry.apps.values().find(|a| same_project(a) && a.services.contains(&service))?,
    };
    let ours = app.host == HostSpec::Local && same_project(app) && app.services.contains(&service);
    ours.then(|| SelfTarget { app: app.name.clone(), service, container: own, ceiling })
}

/// Where `inside` (a path in this container) is on the engine's host, through the bind mounts.
pub(super) fn host_path(own: &OwnContainer, inside: &str) -> Option<String> {
    own.mounts
        .iter()
        .filter(|(_, dest)| inside == dest || inside.starts_with(&format!("{}/", dest.trim_end_matches('/'))))
        .max_by_key(|(_, dest)| dest.len())
        .map(|(src, dest)| format!("{src}{}", &inside[dest.len()..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(mounts: &[(&str, &str)]) -> OwnContainer {
        OwnContainer {
            id: "c".into(),
            image: "i".into(),
            labels: Default::default(),
            path: "/kua-deploy".into(),
            mounts: mounts.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect(),
            user: String::new(),
            group_add: Vec::new(),
            read_only: Vec::new(),
        }
    }

    #[test]
    fn paths_inside_the_container_map_to_the_host_through_the_longest_mount() {
        let c = own(&[("/srv", "/srv"), ("/data/kua", "/srv/kua"), ("/run/docker.sock", "/var/run/docker.sock")]);
        assert_eq!(host_path(&c, "/srv/kua/app").as_deref(), Some("/data/kua/app"));
        assert_eq!(host_path(&c, "/srv/other").as_deref(), Some("/srv/other"));
        assert_eq!(host_path(&c, "/var/run/docker.sock").as_deref(), Some("/run/docker.sock"));
        assert_eq!(host_path(&c, "/srvx"), None);
        assert_eq!(host_path(&c, "/etc"), None);
    }
}
