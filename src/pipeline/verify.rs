//! `verify`: every recreated service runs the built image ID, started after the recreate began,
//! is running (healthy, with a healthcheck) and stays up for `stable_s`.

use std::time::Duration;

use super::{DeployCtx, StepOutcome};
use crate::docker::watch::{verify_services, Limits};

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let Some(since) = ctx.recreate_started_at.clone() else {
        return StepOutcome::Failed("recreate did not record when it began".into());
    };
    let limits = Limits {
        timeout: Duration::from_secs(ctx.app.verify.timeout_s),
        stable: Duration::from_secs(ctx.app.verify.stable_s),
    };
    let outcome = match verify_services(
        &ctx.compose.docker(),
        ctx.compose.project(),
        &ctx.images,
        &since,
        limits,
        &ctx.cancel,
        &ctx.log,
    )
    .await
    {
        Ok(o) => o,
        Err(e) => return e.into(),
    };
    if let Err(e) = ctx.store.set_verify(&ctx.id, &outcome.report) {
        return StepOutcome::Failed(format!("cannot record the verify result: {e}"));
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
