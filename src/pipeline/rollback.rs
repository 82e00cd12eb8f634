//! `rollback`: after a failed recreate or verify, brings back what ran before: the checkout
//! returns to the commit whose Compose configuration ran, the services' tags to the image IDs that
//! ran, and those are recreated and verified the same way — so a plain `docker compose up -d`
//! afterwards changes nothing. The deploy's own `verify` object keeps what failed. A rollback that
//! cannot restore every service (one added by this deploy had nothing before) fails.

use std::time::Duration;

use super::{apply_images, DeployCtx, StepOutcome};
use crate::model::now_rfc3339;
use crate::target::Limits;

/// A failure of this step is rolled back: no, a failed rollback is the end: there is nothing further to go back to.
pub const ROLLS_BACK: bool = false;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    if ctx.previous_images.is_empty() {
        return StepOutcome::Skipped("nothing ran before this deploy, so there is nothing to go back to".into());
    }
    let previous = ctx.previous_images.clone();
    super::wait_for_recorded_recreate(ctx).await;
    let mut back_to = String::new();
    if let Some(commit) = ctx.previous_commit.clone() {
        let head = ctx.git.head().await.ok();
        if head.as_ref() != Some(&commit) {
            // Not stopped by shutdown: a checkout is quick, and half a rollback is worse.
            let never = tokio_util::sync::CancellationToken::new();
            if let Err(e) = ctx.git.checkout(&ctx.app.branch, &commit, &never, ctx.sink()).await {
                return StepOutcome::Failed(format!("cannot return the checkout to {}: {e}", commit.short()));
            }
        }
        back_to = format!(" with the Compose configuration of {}", commit.short());
    }
    // The configuration (image names) is the commit's now checked out.
    if let Err(e) = ctx.target.resolve(&ctx.app.services, &tokio_util::sync::CancellationToken::new(), ctx.sink()).await
    {
        return StepOutcome::Failed(format!("cannot read the Compose configuration to roll back to: {e}"));
    }
    let since = now_rfc3339();
    if let Err(stop) = apply_images(ctx, &previous).await {
        return stop;
    }
    let limits = Limits {
        timeout: Duration::from_secs(ctx.app.verify.timeout_s),
        stable: Duration::from_secs(ctx.app.verify.stable_s),
    };
    match ctx.target.verify(&previous, &since, limits, &ctx.cancel, ctx.sink()).await {
        Ok(o) if o.failure.is_none() => {
            let list: Vec<String> = previous.iter().map(|(s, id)| format!("{s}={}", id.short())).collect();
            let back = format!("the previous images run again{back_to}: {}", list.join(" "));
            // A service added by this deploy had nothing before it: it still runs the new image
            // that failed, so the rollback is not whole and the deploy must not say rolled_back.
            let new_ones: Vec<&str> =
                ctx.app.services.iter().filter(|s| !previous.contains_key(*s)).map(|s| s.as_str()).collect();
            if new_ones.is_empty() {
                StepOutcome::Succeeded(back)
            } else {
                StepOutcome::Failed(format!(
                    "{back}; but {} had no earlier container and still run(s) the new image",
                    new_ones.join(", ")
                ))
            }
        }
        Ok(o) => StepOutcome::Failed(format!("the previous images did not verify: {}", o.failure.unwrap_or_default())),
        Err(e) => e.into(),
    }
}
