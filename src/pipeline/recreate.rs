//! `recreate`: records what runs now (images, and the commit whose Compose configuration they run
//! with, for rollback) and when the recreate began (for verify), then recreates exactly the app's
//! services with exactly the image IDs this deploy built. For kua-deploy's own app it hands the
//! recreate over to a transient container instead. Resumed after a restart, it waits for the
//! recreate the previous process started and redoes it only if it did not complete.

use super::{apply_images, DeployCtx, Fact, Runtime, StepOutcome};
use crate::model::now_rfc3339;
use crate::model::Images;

/// A failure of this step is rolled back: yes, a half-done recreate may have removed the old containers.
pub const ROLLS_BACK: bool = true;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    if ctx.declared_self && ctx.self_handoff.is_none() {
        return StepOutcome::Failed(
            "the registry's `self` names this app, but kua-deploy did not find itself in one of its containers \
             (is it running in the app's Compose service, with the engine reachable?); recreating it the ordinary \
             way would stop kua-deploy halfway, so nothing was recreated"
                .into(),
        );
    }
    if ctx.images.len() != ctx.app.services.len() {
        return StepOutcome::Failed("the build step did not record an image for every service".into());
    }
    if ctx.resuming {
        return resume(ctx).await;
    }
    let previous = match ctx.target.snapshot(&ctx.app.services).await {
        Ok(p) => p,
        Err(e) => return StepOutcome::NotStarted(format!("cannot read what runs now: {e}")),
    };
    // What runs came from the last deploy that ended well; without one, from what was checked out.
    let previous_commit = match ctx.running_commit() {
        Ok(c) => c.or_else(|| ctx.commit_before.clone()),
        Err(e) => return StepOutcome::NotStarted(e),
    };
    let at = now_rfc3339();
    let begun =
        Fact::RecreateBegun { previous: previous.clone(), previous_commit: previous_commit.clone(), at: at.clone() };
    if let Err(e) = ctx.record(begun) {
        return StepOutcome::NotStarted(e);
    }
    ctx.previous_images = previous;
    ctx.previous_commit = previous_commit;
    ctx.recreate_started_at = Some(at.clone());
    if let Some(handoff) = ctx.self_handoff.clone() {
        return ctx.hand_off_self(handoff.as_ref(), at).await;
    }
    let images = ctx.images.clone();
    if let Err(stop) = apply_images(ctx, &images).await {
        return stop;
    }
    let names: Vec<&str> = images.keys().map(|s| s.as_str()).collect();
    StepOutcome::Succeeded(format!("recreated {} with the built image IDs", names.join(", ")))
}

/// After a restart: the recreate may have finished on its own (it runs detached), or not.
async fn resume(ctx: &mut DeployCtx) -> StepOutcome {
    let images = ctx.images.clone();
    let Some(since) = ctx.recreate_started_at.clone() else {
        return StepOutcome::Failed("recreate did not record when it began".into());
    };
    super::wait_for_recorded_recreate(ctx).await;
    match ctx.target.runs(&images, &since).await {
        Ok(true) => return StepOutcome::Succeeded("the recreate begun before the restart completed".into()),
        Ok(false) => ctx.log.info("the recreate begun before the restart did not complete: recreating again"),
        Err(e) => return e.into(),
    }
    if let Err(stop) = apply_images(ctx, &images).await {
        return stop;
    }
    StepOutcome::Succeeded("recreated again after a restart, with the built image IDs".into())
}

/// Makes exactly `images` run through the runtime and waits for it — for a deploy's recreate and
/// rollback, and for the self-deploy's transient container alike.
pub(super) async fn apply(rt: &Runtime<'_>, images: &Images) -> Result<(), StepOutcome> {
    rt.target.apply(images, rt.started, rt.cancel, rt.log).await.map_err(StepOutcome::from)
}
