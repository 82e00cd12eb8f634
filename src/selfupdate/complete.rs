//! Step 3, at every start: ends each `self_recreate_pending` deploy from the transient container's
//! verdict and what this process's own container runs.

use std::time::Duration;

use super::{transient_name, SelfTarget};
use crate::config::Registry;
use crate::docker::Docker;
use crate::host::{Host, LogSink, Stream};
use crate::model::{parse_time, Deploy, Phase, ServiceCheck, StepName, StepStatus, VerifyReport};
use crate::store::{LogWriter, Store};

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
        let _ = store.finish(&deploy.deploy_id, phase, error.as_deref(), "not run");
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
    // Waited for with `docker wait`, which the engine answers when the container ends: no polling.
    let verdict = loop {
        let left = limit.saturating_sub(started.elapsed());
        if left.is_zero() {
            let why = format!(
                "the transient container {name} gave no verdict within {}s; it was left running",
                limit.as_secs()
            );
            return (Phase::Failed, Some(why), None);
        }
        match docker.inspect_containers(&[&name]).await {
            Ok(c) => match c.first() {
                // Between `docker run` creating it and starting it: a moment.
                Some(c) if c.state == "created" => tokio::time::sleep(Duration::from_millis(200)).await,
                Some(c) if c.state == "running" || c.state == "restarting" => {
                    match docker.wait_container(&name, left).await {
                        Ok(code) => break Some(code),
                        Err(e) => {
                            tracing::warn!("waiting for {name} (retrying): {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                    }
                }
                Some(c) => break Some(c.exit_code),
                None => break None,
            },
            Err(e) => {
                tracing::warn!("inspecting {name} (retrying): {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
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

    #[test]
    fn succeeded_needs_the_new_image_running_and_the_transient_verdict() {
        assert_eq!(outcome(true, false, Some(0)).0, Phase::Succeeded);
        assert_eq!(outcome(true, false, Some(2)).0, Phase::Failed, "running but never verified healthy");
        assert_eq!(outcome(true, false, None).0, Phase::Failed, "no verdict is no success");
        assert_eq!(outcome(false, true, Some(1)).0, Phase::RolledBack);
        assert_eq!(outcome(false, true, Some(2)).0, Phase::Failed, "back on the old image, but not by a rollback");
        assert_eq!(outcome(false, false, Some(0)).0, Phase::Failed, "some third image runs");
    }
}
