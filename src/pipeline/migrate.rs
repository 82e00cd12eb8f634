//! `migrate` (policy `run`): runs the migration command in a one-off container of the new image,
//! before anything is recreated; its failure fails the deploy with the old containers untouched.

use std::time::Duration;

use super::{DeployCtx, StepOutcome};
use crate::config::MigrationPolicy;

const MIGRATE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// A failure of this step is rolled back: no, it runs before anything is recreated.
pub const ROLLS_BACK: bool = false;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let Some(MigrationPolicy::Run { service, command }) = ctx.app.migrations.as_ref().map(|m| m.policy.clone()) else {
        return StepOutcome::Skipped("the migration policy is not run".into());
    };
    if !ctx.images.contains_key(&service) {
        return StepOutcome::Failed(format!("service {service} has no image from the build step"));
    }
    match ctx.target.run_oneoff(&service, &command, MIGRATE_TIMEOUT, &ctx.cancel, ctx.sink()).await {
        Ok(()) => StepOutcome::Succeeded(format!("ran {} in a one-off {service} container", command.join(" "))),
        Err(e) => e.into(),
    }
}
