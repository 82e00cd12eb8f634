//! `verify`: every recreated service runs the built image ID, started after the recreate began,
//! is running (healthy, with a healthcheck) and stays up for `stable_s`.

use super::{DeployCtx, Fact, Runtime, StepOutcome};
use crate::model::Images;
use crate::target::Verified;

/// A failure of this step is rolled back: yes, the new containers run and did not prove themselves.
pub const ROLLS_BACK: bool = true;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let Some(since) = ctx.recreate_started_at.clone() else {
        return StepOutcome::Failed("recreate did not record when it began".into());
    };
    let verified = match watch(&ctx.runtime(), &ctx.images, &since).await {
        Ok(v) => v,
        Err(stop) => return stop,
    };
    if let Err(e) = ctx.record(Fact::Verified(verified.report.clone())) {
        return StepOutcome::Failed(e);
    }
    outcome(&verified, ctx.app.verify.stable_s)
}

/// Watches `images`' services, recreated after `since`, through the runtime — for a deploy's
/// verify and rollback, and for the self-deploy's transient container alike.
pub(super) async fn watch(rt: &Runtime<'_>, images: &Images, since: &str) -> Result<Verified, StepOutcome> {
    rt.target.verify(images, since, rt.limits, rt.cancel, rt.log).await.map_err(StepOutcome::from)
}

/// The step's outcome from what the watch saw.
pub(super) fn outcome(verified: &Verified, stable_s: u64) -> StepOutcome {
    match &verified.failure {
        None => StepOutcome::Succeeded(format!(
            "{} container(s) run the built images, up for {stable_s}s",
            verified.report.services.len(),
        )),
        Some(why) => StepOutcome::Failed(why.clone()),
    }
}
