//! Completion of kua-deploy's own deploy, at every start: each `self_recreate_pending` deploy is
//! judged from what its [`HandOffWitness`] saw — the transient container's verdict and what this
//! process's own container runs — and ended, its recreate, verify (and rollback) steps closed in
//! the same transaction as its phase.

use std::time::Duration;

use crate::config::Registry;
use crate::model::{parse_time, Deploy, Phase, ServiceCheck, StepName, StepStatus, VerifyReport};
use crate::store::{LogWriter, Store};
use crate::target::{HandOffSeen, HandOffWitness};

/// Ends every deploy handed over to a transient container by an earlier process.
pub async fn complete_handoffs(store: &Store, witness: &dyn HandOffWitness, registry: &Registry) {
    let pending = match store.in_phase(Phase::SelfRecreatePending) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("cannot read self-recreate markers: {e}");
            return;
        }
    };
    for deploy in pending {
        let log = LogWriter::new(store.clone(), deploy.deploy_id.clone());
        // The transient container's worst case is two `compose up` and two verifies.
        let verify_s = registry.app(&deploy.app).map_or(120, |a| a.verify.timeout_s);
        let limit = Duration::from_secs(2 * (verify_s + 5 * 60) + 60);
        let since = store.recreate_started_at(&deploy.deploy_id).ok().flatten();
        let (phase, error, report) = match witness.seen(&deploy, limit, &log).await {
            Ok(seen) => judge(&deploy, since, &seen),
            Err(why) => (Phase::Failed, Some(why), None),
        };
        end(store, &deploy, &log, phase, error, report);
    }
}

/// Records the verify object and ends the deploy, its steps closed with it.
fn end(
    store: &Store,
    deploy: &Deploy,
    log: &LogWriter,
    phase: Phase,
    error: Option<String>,
    report: Option<VerifyReport>,
) {
    log.info(&format!("self-recreate ended: {phase}{}", error.as_ref().map(|e| format!(": {e}")).unwrap_or_default()));
    if let Some(report) = &report {
        if let Err(e) = store.set_verify(&deploy.deploy_id, report) {
            tracing::error!(deploy = %deploy.deploy_id, "cannot record the verify result: {e}");
        }
    }
    let status = |ok: bool| if ok { StepStatus::Succeeded } else { StepStatus::Failed };
    // The transient container did recreate, unless the deploy failed outright.
    let recreated = phase != Phase::Failed;
    let recreate_detail = if recreated { "recreated by the transient container" } else { "see the error" };
    let verify_detail = error.clone().unwrap_or_else(|| "kua-deploy came back on the new image".into());
    let mut closing = vec![
        (StepName::Recreate, status(recreated), recreate_detail),
        (StepName::Verify, status(phase == Phase::Succeeded), verify_detail.as_str()),
    ];
    if phase == Phase::RolledBack {
        closing.push((
            StepName::Rollback,
            StepStatus::Succeeded,
            "the transient container brought the previous image back",
        ));
    }
    if let Err(e) = store.finish(&deploy.deploy_id, phase, error.as_deref(), &closing, "not run") {
        tracing::error!(deploy = %deploy.deploy_id, "cannot record the end of the self-recreate: {e}");
    }
}

/// The phase, error and verify object a handoff's outcome gives.
fn judge(deploy: &Deploy, since: Option<String>, seen: &HandOffSeen) -> (Phase, Option<String>, Option<VerifyReport>) {
    let Some(me) = &seen.own else {
        return (
            Phase::Failed,
            Some("kua-deploy came back outside the self app's container, so it cannot check what runs".into()),
            None,
        );
    };
    let Some(expected) = deploy.images.get(&me.service) else {
        return (Phase::Failed, Some("the deploy recorded no image for kua-deploy's service".into()), None);
    };
    let Some(since) = since else {
        return (Phase::Failed, Some("the deploy recorded no recreate_started_at".into()), None);
    };
    let started_after = match (parse_time(&me.started_at), parse_time(&since)) {
        (Some(a), Some(b)) => a > b,
        _ => false,
    };
    let runs_new = me.image == expected.as_str() && started_after && me.state == "running";
    let back_on_previous = deploy.previous_images.get(&me.service).is_some_and(|p| p.as_str() == me.image);
    let (phase, why) = outcome(runs_new, back_on_previous, seen.verdict);
    let report = VerifyReport {
        ok: phase == Phase::Succeeded,
        recreate_started_at: since,
        services: vec![ServiceCheck {
            service: me.service.clone(),
            container_id: Some(me.container_id.clone()),
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
/// (health, stable_s) and this process runs it. Judged from what the process that came back sees
/// (`runs_new`: its container runs the expected image, started after the recreate began;
/// `back_on_previous`: it runs the previous image) and the transient container's exit status
/// (0 verified, 1 rolled back).
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
