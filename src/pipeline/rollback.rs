//! `rollback`: after a failed recreate or verify, recreates the image IDs that ran before and
//! verifies them the same way. The deploy's own `verify` object keeps what failed. A rollback that
//! cannot restore every service (one added by this deploy had nothing before) fails.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{DeployCtx, StepOutcome};
use crate::docker::watch::{verify_services, Limits};
use crate::model::now_rfc3339;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    if ctx.previous_images.is_empty() {
        return StepOutcome::Skipped("nothing ran before this deploy, so there is nothing to go back to".into());
    }
    let previous = ctx.previous_images.clone();
    let since = now_rfc3339();
    // Not cancelled by shutdown: stopping `compose up` halfway could leave the app without a container.
    if let Err(e) = ctx.compose.up_pinned(&previous, &CancellationToken::new(), ctx.sink()).await {
        return e.into();
    }
    let limits = Limits {
        timeout: Duration::from_secs(ctx.app.verify.timeout_s),
        stable: Duration::from_secs(ctx.app.verify.stable_s),
    };
    match verify_services(&ctx.compose.docker(), ctx.compose.project(), &previous, &since, limits, &ctx.cancel).await {
        Ok(o) if o.failure.is_none() => {
            let list: Vec<String> = previous.iter().map(|(s, id)| format!("{s}={}", id.short())).collect();
            let back = format!("the previous images run again: {}", list.join(" "));
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
