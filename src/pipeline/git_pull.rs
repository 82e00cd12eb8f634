//! `git_pull`: fetch `origin`, pick the target (the commit the trigger named, or the branch tip),
//! refuse a commit not on the branch, a checkout with local changes or local commits, then check
//! the target out.

use super::{DeployCtx, Fact, StepOutcome};
use crate::git::GitError;
use crate::host::RunError;

/// A failure of this step is rolled back: no, the checkout is all it changed, and a failure leaves it as it was.
pub const ROLLS_BACK: bool = false;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let branch = ctx.app.branch.clone();
    let before = match ctx.git.head().await {
        Ok(c) => c,
        // Cannot run git there at all (host unreachable, no such directory): say that instead.
        Err(e) if matches!(&e, GitError::Run(run) if !matches!(run, RunError::Failed { .. })) => return e.into(),
        Err(e) => {
            return StepOutcome::Failed(format!(
                "{} is not a usable git checkout: {e}; clone the app's repository there",
                ctx.app.repo.display()
            ))
        }
    };
    let changes = match ctx.git.local_changes().await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    if !changes.is_empty() {
        return StepOutcome::Failed(format!(
            "the checkout {} has local changes to tracked files ({}); commit, stash or revert them — nothing was changed",
            ctx.app.repo.display(),
            changes.iter().take(5).cloned().collect::<Vec<_>>().join(", ")
        ));
    }
    if let Err(e) = ctx.git.fetch(&branch, &ctx.cancel, ctx.sink()).await {
        return e.into();
    }
    let target = match &ctx.requested_commit {
        Some(c) => match ctx.git.is_on_branch(c, &branch).await {
            Ok(true) => c.clone(),
            Ok(false) => {
                return StepOutcome::Failed(format!(
                    "commit {c} is not on branch {branch} of origin; only commits of the app's branch are deployed"
                ))
            }
            Err(e) => return e.into(),
        },
        None => match ctx.git.remote_tip(&branch).await {
            Ok(c) => c,
            Err(e) => return e.into(),
        },
    };
    if let Err(e) = ctx.record(Fact::Commits { before: before.clone(), commit: target.clone() }) {
        return StepOutcome::Failed(e);
    }
    ctx.commit_before = Some(before.clone());
    ctx.commit = Some(target.clone());
    if before == target {
        return resolve_compose(ctx, format!("{branch} already at {}", target.short())).await;
    }
    // Moving the branch would hide commits made in the checkout itself (they would live on only
    // in the reflog). HEAD is safe to move when origin has it, or when a deploy put it there.
    let known = match ctx.git.is_on_branch(&before, &branch).await {
        Ok(true) => true,
        Ok(false) => ctx.was_deployed(&before).unwrap_or(false),
        Err(e) => return e.into(),
    };
    if !known {
        return StepOutcome::Failed(format!(
            "the checkout's HEAD {} is not on origin/{branch} and no deploy put it there: it holds local commits; \
             push them or reset the checkout to origin/{branch} — nothing was changed",
            before.short()
        ));
    }
    if let Err(e) = ctx.git.checkout(&branch, &target, &ctx.cancel, ctx.sink()).await {
        return e.into();
    }
    ctx.checked_out = true;
    resolve_compose(ctx, format!("{branch}: {} → {}", before.short(), target.short())).await
}

/// Says, and records, which project and files the checked-out commit gives: what every later
/// step (and a rollback, and a restarted server) works on.
async fn resolve_compose(ctx: &mut DeployCtx, pulled: String) -> StepOutcome {
    let plan = match ctx.target.resolve(&ctx.app.services, &ctx.cancel, ctx.sink()).await {
        Ok(p) => p,
        Err(e) => return e.into(),
    };
    if let Err(e) = ctx.record(Fact::Plan { project: plan.project.clone(), files: plan.files.clone() }) {
        return StepOutcome::Failed(e);
    }
    ctx.project = Some(plan.project.clone());
    let files = if plan.files.is_empty() { "as Compose finds them".to_owned() } else { plan.files.join(", ") };
    StepOutcome::Succeeded(format!("{pulled}; Compose project {}, files {files}", plan.project))
}
