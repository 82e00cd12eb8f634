//! `verify`: every recreated service runs the built image ID, started after the recreate began,
//! is running (healthy, with a healthcheck) and stays up for `stable_s`.

use std::time::Duration;

use super::{DeployCtx, Fact, StepOutcome};
use crate::target::Limits;

/// A failure of this step is rolled back: yes, the new containers run and did not prove themselves.
pub const ROLLS_BACK: bool = true;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let Some(since) = ctx.recreate_started_at.clone() else {
        return StepOutcome::Failed("recreate did not record when it began".into());
    };
    let limits = Limits {
        timeout: Duration::from_secs(ctx.app.verify.timeout_s),
        stable: Duration::from_secs(ctx.app.verify.stable_s),
    };
    let outcome = match ctx.target.verify(&ctx.images, &since, limits, &ctx.cancel, ctx.sink()).await {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    if let Err(e) = ctx.record(Fact::Verified(outcome.report.clone())) {
        return StepOutcome::Failed(e);
    }
    match outcome.failure {
        None => StepOutcome::Succeeded(format!(
            "{} container(s) run the built images, up for {}s",
            outcome.report.services.len(),
            ctx.app.verify.stable_s
        )),
        Some(why) => StepOutcome::Failed(why),
    }
}
