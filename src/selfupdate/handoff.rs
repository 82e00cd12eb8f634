//! Step 1, in the old process: pre-mark the deploy `self_recreate_pending`, start the transient
//! container of the new image, and wait (at most [`HANDOFF_CEILING`]) to be replaced.

use std::time::Duration;

use super::discover::host_path;
use super::SelfTarget;
use crate::config::SecretsFormat;
use crate::docker::Docker;
use crate::host::Stream;
use crate::model::{DeployId, ServiceName};
use crate::target::{HandOffEnd, HandOffRequest, SelfHandOff};

/// How long the old process waits to be replaced before it calls the handoff failed, unless
/// `serve --handoff-ceiling` says otherwise.
pub const HANDOFF_CEILING: Duration = Duration::from_secs(90);

pub(super) const SOCKET: &str = "/var/run/docker.sock";

/// The transient container's name: found again by the process that comes back.
pub fn transient_name(deploy: &DeployId) -> String {
    format!("kua-self-recreate-{}", deploy.as_str().replace('-', ""))
}

#[async_trait::async_trait]
impl SelfHandOff for SelfTarget {
    fn service(&self) -> &ServiceName {
        &self.service
    }

    async fn hand_off(&self, req: HandOffRequest<'_>) -> HandOffEnd {
        hand_off(req, self).await
    }
}

/// Step 1: pre-mark, start the transient container, wait to be replaced.
pub async fn hand_off(h: HandOffRequest<'_>, target: &SelfTarget) -> HandOffEnd {
    let repo = h.app.repo.to_string_lossy().into_owned();
    let (Some(socket), Some(repo_on_host)) =
        (host_path(&target.container, SOCKET), host_path(&target.container, &repo))
    else {
        return HandOffEnd::Failed(format!(
            "kua-deploy's container must have the engine socket ({SOCKET}) and the checkout ({repo}) bind-mounted to hand its recreate over"
        ));
    };
    if repo_on_host != repo {
        return HandOffEnd::Failed(format!(
            "the checkout is mounted from {repo_on_host} at {repo}: mount it at the same path as on the host, since Compose resolves the project's paths from it"
        ));
    }
    if h.app.services.len() > 1 {
        return HandOffEnd::Failed(format!(
            "the self app lists {} services; it must list only kua-deploy's own ({}), since the handoff recreates and judges that one alone",
            h.app.services.len(),
            target.service
        ));
    }
    // The binary running now is where the new image has it too; the container's entrypoint may be
    // a wrapper (tini) that would not know `self-recreate`.
    let entrypoint = match std::env::current_exe() {
        Ok(p) => p.to_string_lossy().into_owned(),
        Err(_) => target.container.path.clone(),
    };
    let name = transient_name(h.id);
    let mut args: Vec<String> = vec![
        "--name".into(),
        name.clone(),
        // The new image carries Compose's labels; these make the transient container nobody's service.
        "--label".into(),
        "com.docker.compose.project=kua-deploy-transient".into(),
        "--label".into(),
        "com.docker.compose.service=self-recreate".into(),
        "--label".into(),
        "com.docker.compose.oneoff=True".into(),
        "--volume".into(),
        format!("{socket}:{SOCKET}"),
        "--volume".into(),
        format!("{repo}:{repo}"),
        "--workdir".into(),
        repo.clone(),
        "--entrypoint".into(),
        entrypoint,
    ];
    // Every other bind mount of this container too (the vault client and its files, SSH keys):
    // the transient container fetches the secrets and runs Compose as this one would.
    for (source, dest) in &target.container.mounts {
        if dest != SOCKET && *dest != repo {
            let ro = if target.container.read_only.contains(dest) { ":ro" } else { "" };
            args.extend(["--volume".into(), format!("{source}:{dest}{ro}")]);
        }
    }
    // The same user and groups as this container (the socket's group among them), so that the
    // transient container can reach the engine and write the checkout as this one does.
    if !target.container.user.is_empty() {
        args.extend(["--user".into(), target.container.user.clone()]);
    }
    for group in &target.container.group_add {
        args.extend(["--group-add".into(), group.clone()]);
    }
    args.extend([
        h.image.to_string(),
        "self-recreate".into(),
        "--project".into(),
        h.project.to_string(),
        "--service".into(),
        target.service.to_string(),
        "--image".into(),
        h.image.to_string(),
        "--since".into(),
        h.recreate_started_at.clone(),
        "--timeout".into(),
        h.app.verify.timeout_s.to_string(),
        "--stable".into(),
        h.app.verify.stable_s.to_string(),
    ]);
    if let Some(prev) = &h.previous {
        args.extend(["--previous".into(), prev.to_string()]);
    }
    if let Some(commit) = &h.previous_commit {
        args.extend(["--previous-commit".into(), commit.to_string(), "--branch".into(), h.app.branch.to_string()]);
    }
    for f in h.app.compose_files.iter().flatten() {
        args.extend(["--file".into(), f.clone()]);
    }
    if let Some(s) = &h.app.secrets {
        // The command, never a value: the transient container runs the vault itself.
        let format = match s.format {
            SecretsFormat::Dotenv => "dotenv",
            SecretsFormat::Json => "json",
        };
        args.extend([
            "--app".into(),
            h.app.name.to_string(),
            "--secrets-command".into(),
            serde_json::to_string(&s.command).unwrap_or_default(),
            "--secrets-format".into(),
            format.into(),
            "--secrets-timeout".into(),
            s.timeout_s.to_string(),
        ]);
    }
    match h.store.hand_off(h.id, &format!("handed over to transient container {name}")) {
        Ok(true) => {}
        other => return HandOffEnd::Failed(format!("cannot pre-mark the deploy self_recreate_pending: {other:?}")),
    }
    let docker = Docker::new(h.host.clone());
    if let Err(e) = docker.run_detached(args, h.log).await {
        // `docker run` may have timed out after the container started: make sure it is gone.
        let _ = docker.remove_container(&name).await;
        let _ = h.store.take_back(h.id);
        return HandOffEnd::Failed(format!("could not start the transient container: {e}"));
    }
    h.log.line(
        Stream::Info,
        &format!("handed the recreate of {} over to {name}; waiting to be replaced", target.service),
    );
    tokio::select! {
        _ = tokio::time::sleep(target.ceiling) => {}
        // The engine stopping this container is the handoff working: leave the marker as it is.
        _ = h.cancel.cancelled() => return HandOffEnd::Replaced,
    }
    let report = docker.container_logs(&name, 20).await.unwrap_or_default();
    // Still here: stop the transient container before it replaces this process after all, then
    // end the deploy — unless the engine began stopping this process meanwhile.
    let _ = docker.remove_container(&name).await;
    if h.cancel.is_cancelled() {
        return HandOffEnd::Replaced;
    }
    let _ = h.store.take_back(h.id);
    HandOffEnd::Failed(format!(
        "kua-deploy was still running {}s after the handoff; the transient container reported: {}",
        target.ceiling.as_secs(),
        last_lines(&report, 5)
    ))
}

pub(super) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_transient_name_is_derived_from_the_deploy() {
        let id = DeployId::parse("0190a0b0-0000-7000-8000-000000000001").unwrap();
        assert_eq!(transient_name(&id), "kua-self-recreate-0190a0b0000070008000000000000001");
    }
}
