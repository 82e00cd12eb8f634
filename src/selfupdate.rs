//! Deploying kua-deploy itself. Recreating its own container kills the process doing it, so the
//! recreate is handed to a transient container of the new image, and the process that comes back
//! (new, or old after a rollback) writes the deploy's end:
//!
//! 1. [`hand_off`] pre-marks the deploy `self_recreate_pending` (with images, previous images and
//!    `recreate_started_at` already recorded), starts the transient container (`kua-deploy
//!    self-recreate`, engine socket and checkout mounted, Compose labels overridden so nothing
//!    takes it for a service container) and waits, at most 90 s, to be killed. Still alive after
//!    that: the deploy fails with what the transient container reported. A SIGTERM meanwhile
//!    leaves the marker as it is.
//! 2. [`run_transient`] (inside the transient container) recreates the service pinned to the new
//!    image ID and verifies it; if it does not verify, it brings the previous image back.
//! 3. [`complete_self_recreate`] runs at every start: for a pending deploy it waits for the
//!    transient container to finish, inspects its own container and ends the deploy `succeeded`,
//!    `rolled_back` or `failed`, with the verify object. No marker: nothing to do; a second start
//!    changes nothing.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::{AppConfig, HostSpec, Registry};
use crate::docker::compose::Compose;
use crate::docker::watch::{verify_services, Limits};
use crate::docker::{Docker, OwnContainer};
use crate::host::{Host, LogSink, Redactor, Stream};
use crate::model::{
    now_rfc3339, parse_time, AppName, Deploy, DeployId, ImageId, Images, Phase, ProjectName, ServiceCheck, ServiceName,
    StepName, StepStatus, VerifyReport,
};
use crate::store::{LogWriter, Store};

/// How long the old process waits to be replaced before it calls the handoff failed.
pub const HANDOFF_CEILING: Duration = Duration::from_secs(90);
const SOCKET: &str = "/var/run/docker.sock";

/// The self app as this process found it at start: the app, its service, and this container.
#[derive(Debug, Clone)]
pub struct SelfTarget {
    pub app: AppName,
    pub service: ServiceName,
    pub container: OwnContainer,
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
pub async fn discover(registry: &Registry, docker: &Docker) -> Option<SelfTarget> {
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
    ours.then(|| SelfTarget { app: app.name.clone(), service, container: own })
}

/// The transient container's name: found again by the process that comes back.
pub fn transient_name(deploy: &DeployId) -> String {
    format!("kua-self-recreate-{}", deploy.as_str().replace('-', ""))
}

/// Where `inside` (a path in this container) is on the engine's host, through the bind mounts.
fn host_path(own: &OwnContainer, inside: &str) -> Option<String> {
    own.mounts
        .iter()
        .filter(|(_, dest)| inside == dest || inside.starts_with(&format!("{}/", dest.trim_end_matches('/'))))
        .max_by_key(|(_, dest)| dest.len())
        .map(|(src, dest)| format!("{src}{}", &inside[dest.len()..]))
}

/// What the handoff needs of the deploy.
pub struct Handoff<'a> {
    pub store: &'a Store,
    pub id: &'a DeployId,
    pub app: &'a AppConfig,
    /// The Compose project the deploy resolved.
    pub project: ProjectName,
    /// The local host, with the server's redaction and secret variables kept out.
    pub host: Host,
    pub image: ImageId,
    pub previous: Option<ImageId>,
    pub recreate_started_at: String,
    pub cancel: &'a CancellationToken,
    pub log: &'a dyn LogSink,
}

/// How step 1 ended for the old process.
#[derive(Debug)]
pub enum HandoffEnd {
    /// The engine is stopping this process: the transient container has taken over.
    Replaced,
    /// The handoff did not happen; the deploy is `running` again, with this reason.
    Failed(String),
}

/// Step 1: pre-mark, start the transient container, wait to be replaced.
pub async fn hand_off(h: Handoff<'_>, target: &SelfTarget) -> HandoffEnd {
    let repo = h.app.repo.to_string_lossy().into_owned();
    let (Some(socket), Some(repo_on_host)) =
        (host_path(&target.container, SOCKET), host_path(&target.container, &repo))
    else {
        return HandoffEnd::Failed(format!(
            "kua-deploy's container must have the engine socket ({SOCKET}) and the checkout ({repo}) bind-mounted to hand its recreate over"
        ));
    };
    if repo_on_host != repo {
        return HandoffEnd::Failed(format!(
            "the checkout is mounted from {repo_on_host} at {repo}: mount it at the same path as on the host, since Compose resolves the project's paths from it"
        ));
    }
    if h.app.services.len() > 1 {
        return HandoffEnd::Failed(format!(
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
    ];
    if let Some(prev) = &h.previous {
        args.extend(["--previous".into(), prev.to_string()]);
    }
    for f in h.app.compose_files.iter().flatten() {
        args.extend(["--file".into(), f.clone()]);
    }
    match h.store.transition(h.id, &[Phase::Running], Phase::SelfRecreatePending, None) {
        Ok(true) => {}
        other => return HandoffEnd::Failed(format!("cannot pre-mark the deploy self_recreate_pending: {other:?}")),
    }
    let _ = h.store.step_detail(h.id, StepName::Recreate, &format!("handed over to transient container {name}"));
    let docker = Docker::new(h.host.clone());
    if let Err(e) = docker.run_detached(args, h.log).await {
        // `docker run` may have timed out after the container started: make sure it is gone.
        let _ = docker.remove_container(&name).await;
        let _ = h.store.transition(h.id, &[Phase::SelfRecreatePending], Phase::Running, None);
        return HandoffEnd::Failed(format!("could not start the transient container: {e}"));
    }
    h.log.line(
        Stream::Info,
        &format!("handed the recreate of {} over to {name}; waiting to be replaced", target.service),
    );
    tokio::select! {
        _ = tokio::time::sleep(HANDOFF_CEILING) => {}
        // The engine stopping this container is the handoff working: leave the marker as it is.
        _ = h.cancel.cancelled() => return HandoffEnd::Replaced,
    }
    let report = docker.container_logs(&name, 20).await.unwrap_or_default();
    // Still here: stop the transient container before it replaces this process after all, then
    // end the deploy — unless the engine began stopping this process meanwhile.
    let _ = docker.remove_container(&name).await;
    if h.cancel.is_cancelled() {
        return HandoffEnd::Replaced;
    }
    let _ = h.store.transition(h.id, &[Phase::SelfRecreatePending], Phase::Running, None);
    HandoffEnd::Failed(format!(
        "kua-deploy was still running {}s after the handoff; the transient container reported: {}",
        HANDOFF_CEILING.as_secs(),
        last_lines(&report, 5)
    ))
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

/// `kua-deploy self-recreate` options: what the transient container does.
#[derive(Debug, Clone, clap::Args)]
pub struct TransientArgs {
    #[arg(long)]
    pub project: ProjectName,
    #[arg(long)]
    pub service: ServiceName,
    #[arg(long)]
    pub image: ImageId,
    #[arg(long)]
    pub previous: Option<ImageId>,
    /// When the deploy recorded the recreate as begun (RFC 3339).
    #[arg(long)]
    pub since: String,
    /// The Compose files; none: Compose discovers them in the checkout.
    #[arg(long = "file")]
    pub files: Vec<String>,
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
    #[arg(long, default_value_t = 5)]
    pub stable: u64,
}

/// Prints every line, for `docker logs` of the transient container.
struct Print;

impl LogSink for Print {
    fn line(&self, _: Stream, text: &str) {
        println!("{text}");
    }
}

/// Step 2, inside the transient container: recreate, verify, and roll back if it does not hold.
/// Exit status: 0 the new image runs; 1 rolled back to the previous one; 2 neither.
pub async fn run_transient(args: TransientArgs) -> i32 {
    let cwd = std::env::current_dir().unwrap_or_default();
    let files = (!args.files.is_empty()).then(|| args.files.clone());
    let compose = Compose::new(Host::local(), cwd, Some(args.project.clone()), files);
    let limits = Limits { timeout: Duration::from_secs(args.timeout), stable: Duration::from_secs(args.stable) };
    let never = CancellationToken::new();
    let attempt = |image: ImageId, since: String| {
        let compose = compose.clone();
        let never = never.clone();
        let service = args.service.clone();
        async move {
            let resolved = compose.resolve(&never, &Print).await.map_err(|e| e.to_string())?;
            let names = Compose::image_names(&resolved, std::slice::from_ref(&service)).map_err(|e| e.to_string())?;
            compose.docker().tag(&image, &names[&service]).await.map_err(|e| e.to_string())?;
            let output = std::env::temp_dir().join("kua-self-recreate.log");
            let up = compose
                .start_recreate(std::slice::from_ref(&service), &output, &Print)
                .await
                .map_err(|e| e.to_string())?;
            let out = up
                .wait(&Redactor::default(), Duration::from_secs(5 * 60), &never, &Print)
                .await
                .map_err(|e| e.to_string())?;
            if !out.success() {
                return Err(format!("docker compose up failed: {}", out.last_line()));
            }
            let images: Images = [(service, image)].into();
            let outcome =
                verify_services(&compose.docker(), compose.project(), &images, &since, limits, &never, &Print)
                    .await
                    .map_err(|e| e.to_string())?;
            outcome.failure.map_or(Ok(()), Err)
        }
    };
    println!("recreating {} with {}", args.service, args.image);
    match attempt(args.image.clone(), args.since.clone()).await {
        Ok(()) => {
            println!("verified: {} runs {}", args.service, args.image);
            0
        }
        Err(why) => {
            println!("the new image did not verify: {why}");
            let Some(previous) = args.previous else {
                println!("nothing ran before; nothing to bring back");
                return 2;
            };
            println!("bringing back {previous}");
            match attempt(previous.clone(), now_rfc3339()).await {
                Ok(()) => {
                    println!("rolled back: {} runs {previous} again", args.service);
                    1
                }
                Err(why) => {
                    println!("the previous image did not verify either: {why}");
                    2
                }
            }
        }
    }
}

/// Step 3, at every start: ends each `self_recreate_pending` deploy from what runs now.
pub async fn complete_self_recreate(store: &Store, target: Option<&SelfTarget>, registry: &Registry, host: &Host) {
    let pending = match store.in_phase(Phase::SelfRecreatePending) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot read self-recreate markers: {e}");
            return;
        }
    };
    for deploy in pending {
        let log = LogWriter::new(store.clone(), deploy.deploy_id.clone());
        let (phase, error, report) = judge(store, &deploy, target, registry, host, &log).await;
        log.info(&format!(
            "self-recreate ended: {phase}{}",
            error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
        ));
        if let Some(report) = &report {
            let _ = store.set_verify(&deploy.deploy_id, report);
        }
        let status = |ok: bool| if ok { StepStatus::Succeeded } else { StepStatus::Failed };
        // The transient container did recreate, unless the deploy failed outright.
        let recreated = phase != Phase::Failed;
        let recreate_detail = if recreated { "recreated by the transient container" } else { "see the error" };
        let _ = store.step_finish(&deploy.deploy_id, StepName::Recreate, status(recreated), recreate_detail);
        let verify_detail = error.clone().unwrap_or_else(|| "kua-deploy came back on the new image".into());
        let _ =
            store.step_finish(&deploy.deploy_id, StepName::Verify, status(phase == Phase::Succeeded), &verify_detail);
        if phase == Phase::RolledBack {
            let _ = store.step_finish(
                &deploy.deploy_id,
                StepName::Rollback,
                StepStatus::Succeeded,
                "the transient container brought the previous image back",
            );
        }
        let _ = store.close_open_steps(&deploy.deploy_id, "not run");
        let _ = store.transition(&deploy.deploy_id, &[Phase::SelfRecreatePending], phase, error.as_deref());
    }
}

async fn judge(
    store: &Store,
    deploy: &Deploy,
    target: Option<&SelfTarget>,
    registry: &Registry,
    host: &Host,
    log: &LogWriter,
) -> (Phase, Option<String>, Option<VerifyReport>) {
    let docker = Docker::new(host.clone());
    let name = transient_name(&deploy.deploy_id);
    // The transient container may still be watching this process or rolling back: its verdict
    // comes first. Its worst case is two `compose up` and two verifies; engine errors are retried.
    let verify_s = registry.app(&deploy.app).map_or(120, |a| a.verify.timeout_s);
    let limit = Duration::from_secs(2 * (verify_s + 5 * 60) + 60);
    let started = std::time::Instant::now();
    let verdict = loop {
        match docker.inspect_containers(&[&name]).await {
            Ok(c) => match c.first() {
                Some(c) if c.state == "running" || c.state == "created" || c.state == "restarting" => {}
                Some(c) => break Some(c.exit_code),
                None => break None,
            },
            Err(e) => tracing::warn!("inspecting {name} (retrying): {e}"),
        }
        if started.elapsed() > limit {
            let why = format!(
                "the transient container {name} gave no verdict within {}s; it was left running",
                limit.as_secs()
            );
            return (Phase::Failed, Some(why), None);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    if let Ok(report) = docker.container_logs(&name, 200).await {
        for line in report.lines() {
            log.line(Stream::Info, &format!("[transient] {line}"));
        }
    }
    let _ = docker.remove_container(&name).await;

    let Some(target) = target.filter(|t| t.app == deploy.app) else {
        return (
            Phase::Failed,
            Some("kua-deploy came back outside the self app's container, so it cannot check what runs".into()),
            None,
        );
    };
    let Some(expected) = deploy.images.get(&target.service) else {
        return (Phase::Failed, Some("the deploy recorded no image for kua-deploy's service".into()), None);
    };
    let Some(since) = store.recreate_started_at(&deploy.deploy_id).ok().flatten() else {
        return (Phase::Failed, Some("the deploy recorded no recreate_started_at".into()), None);
    };
    let me = match docker.inspect_containers(&[&target.container.id]).await.ok().and_then(|mut c| c.pop()) {
        Some(c) => c,
        None => return (Phase::Failed, Some("cannot inspect kua-deploy's own container".into()), None),
    };
    let started_after = match (parse_time(&me.started_at), parse_time(&since)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    };
    let runs_new = me.image == expected.as_str() && started_after && me.state == "running";
    let back_on_previous = deploy.previous_images.get(&target.service).is_some_and(|p| p.as_str() == me.image);
    let (phase, why) = outcome(runs_new, back_on_previous, verdict);
    let report = VerifyReport {
        ok: phase == Phase::Succeeded,
        recreate_started_at: since,
        services: vec![ServiceCheck {
            service: target.service.clone(),
            container_id: Some(me.id.clone()),
            expected_image: expected.clone(),
            running_image: Some(me.image.clone()),
            state: me.state.clone(),
            health: me.health.clone(),
            started_at: Some(me.started_at.clone()),
        }],
    };
    let why = why.map(|w| match phase {
        Phase::Failed if !runs_new && !back_on_previous => {
            format!(
                "{w}: kua-deploy came back on image {} (expected {expected}), started at {}",
                me.image, me.started_at
            )
        }
        _ => w,
    });
    (phase, why, Some(report))
}

/// How a self-recreate ended. Succeeded needs both: the transient container verified the new image
/// (health, stable_s) and this process runs it. Judged from what the process that came back sees (`runs_new`: its container
/// runs the expected image, started after the recreate began; `back_on_previous`: it runs the
/// previous image) and the transient container's exit status (0 verified, 1 rolled back).
fn outcome(runs_new: bool, back_on_previous: bool, verdict: Option<i64>) -> (Phase, Option<String>) {
    match (runs_new, back_on_previous, verdict) {
        (true, _, Some(0)) => (Phase::Succeeded, None),
        (true, _, None) => (Phase::Failed, Some("the transient container left no verdict (it was removed)".into())),
        (true, _, Some(code)) => {
            (Phase::Failed, Some(format!("the transient container did not verify the new image (exit status {code})")))
        }
        (false, true, Some(1)) => (
            Phase::RolledBack,
            Some("the new image did not verify; the transient container brought the previous image back".into()),
        ),
        _ => (Phase::Failed, Some("the self-recreate did not end on the new image".into())),
    }
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

    #[test]
    fn succeeded_needs_the_new_image_running_and_the_transient_verdict() {
        assert_eq!(outcome(true, false, Some(0)).0, Phase::Succeeded);
        assert_eq!(outcome(true, false, Some(2)).0, Phase::Failed, "running but never verified healthy");
        assert_eq!(outcome(true, false, None).0, Phase::Failed, "no verdict is no success");
        assert_eq!(outcome(false, true, Some(1)).0, Phase::RolledBack);
        assert_eq!(outcome(false, true, Some(2)).0, Phase::Failed, "back on the old image, but not by a rollback");
        assert_eq!(outcome(false, false, Some(0)).0, Phase::Failed, "some third image runs");
    }

    #[test]
    fn the_transient_name_is_derived_from_the_deploy() {
        let id = DeployId::parse("0190a0b0-0000-7000-8000-000000000001").unwrap();
        assert_eq!(transient_name(&id), "kua-self-recreate-0190a0b0000070008000000000000001");
    }
}
