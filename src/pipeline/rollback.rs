//! `rollback`: after a failed recreate or verify, brings back what ran before: the checkout
//! returns to the commit whose Compose configuration ran, the services' tags to the image IDs that
//! ran, and those are recreated and verified the same way — so a plain `docker compose up -d`
//! afterwards changes nothing. The deploy's own `verify` object keeps what failed. A rollback that
//! cannot restore every service (one added by this deploy had nothing before) fails.

use tokio_util::sync::CancellationToken;

use super::{recreate, secrets, verify, DeployCtx, Runtime, StepOutcome};
use crate::model::{now_rfc3339, BranchName, CommitSha, Images, ServiceName};

/// A failure of this step is rolled back: no, a failed rollback is the end: there is nothing further to go back to.
pub const ROLLS_BACK: bool = false;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    if ctx.previous_images.is_empty() {
        return StepOutcome::Skipped("nothing ran before this deploy, so there is nothing to go back to".into());
    }
    let previous = ctx.previous_images.clone();
    super::wait_for_recorded_recreate(ctx).await;
    // The previous configuration gets its secrets as the release did: fetched now, nothing kept.
    if let Err(e) = secrets::fetch_again(ctx).await {
        return StepOutcome::Failed(format!("cannot fetch the secrets again for the rollback: {e}"));
    }
    let back_to = ctx.previous_commit.clone().map(|c| (ctx.app.branch.clone(), c));
    let restored = restore(&ctx.runtime(), &ctx.app.services, &previous, back_to.as_ref()).await;
    super::clear_recorded_recreate(ctx);
    let StepOutcome::Succeeded(back) = restored else { return restored };
    // A service added by this deploy had nothing before it: it still runs the new image that
    // failed, so the rollback is not whole and the deploy must not say rolled_back.
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

/// Returns the checkout to `back_to` (its branch and commit), reads that configuration, makes
/// `previous` run and verifies it — for a deploy's rollback, and for the self-deploy's transient
/// container alike.
pub(super) async fn restore(
    rt: &Runtime<'_>,
    services: &[ServiceName],
    previous: &Images,
    back_to: Option<&(BranchName, CommitSha)>,
) -> StepOutcome {
    // Not stopped by shutdown: a checkout and a config read are quick, and half a rollback is worse.
    let never = CancellationToken::new();
    let mut with = String::new();
    if let Some((branch, commit)) = back_to {
        if rt.git.head().await.ok().as_ref() != Some(commit) {
            if let Err(e) = rt.git.checkout(branch, commit, &never, rt.log).await {
                return StepOutcome::Failed(format!("cannot return the checkout to {}: {e}", commit.short()));
            }
        }
        with = format!(" with the Compose configuration of {}", commit.short());
    }
    // The configuration (image names) is the commit's now checked out.
    if let Err(e) = rt.target.resolve(services, &never, rt.log).await {
        return StepOutcome::Failed(format!("cannot read the Compose configuration to roll back to: {e}"));
    }
    let since = now_rfc3339();
    if let Err(stop) = recreate::apply(rt, previous).await {
        return stop;
    }
    match verify::watch(rt, previous, &since).await {
        Ok(v) => match v.failure {
            None => {
                let list: Vec<String> = previous.iter().map(|(s, id)| format!("{s}={}", id.short())).collect();
                StepOutcome::Succeeded(format!("the previous images run again{with}: {}", list.join(" ")))
            }
            Some(why) => StepOutcome::Failed(format!("the previous images did not verify: {why}")),
        },
        Err(stop) => stop,
    }
}
