//! `migration_gate`: lists the files under the app's migration paths that changed between the
//! commit last deployed and the target, and applies the policy (allow, block, run).

use super::{DeployCtx, StepOutcome};
use crate::config::MigrationPolicy;

/// A failure of this step is rolled back: no, it only reads.
pub const ROLLS_BACK: bool = false;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let Some(migrations) = ctx.app.migrations.clone() else {
        return StepOutcome::Succeeded("no migrations configured for this app: the gate passes".into());
    };
    let Some(target) = ctx.commit.clone() else {
        return StepOutcome::Failed("no target commit was recorded by git_pull".into());
    };
    // What runs is the last verified deploy, not HEAD: a deploy that moved the checkout and then
    // stopped (cancelled at the gate, failed build) has not applied its migrations.
    let deployed = match ctx.last_succeeded_commit() {
        Ok(c) => c.or(ctx.commit_before.clone()),
        Err(e) => return StepOutcome::Failed(e),
    };
    let Some(deployed) = deployed else {
        return StepOutcome::Failed("no deployed commit to compare with".into());
    };
    let changed = match ctx.git.changed_files(&deployed, &target, &migrations.paths, &ctx.cancel).await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    if changed.is_empty() {
        return StepOutcome::Succeeded(format!(
            "no migration changed between {} and {}",
            deployed.short(),
            target.short()
        ));
    }
    for f in &changed {
        ctx.log.info(&format!("migration changed: {f}"));
    }
    let list = summary(&changed);
    match migrations.policy {
        MigrationPolicy::Allow => StepOutcome::Succeeded(format!("policy allow: {list}")),
        MigrationPolicy::Run { .. } => {
            StepOutcome::Succeeded(format!("policy run, the migrate step runs them: {list}"))
        }
        MigrationPolicy::Block => match ctx.migrations_approved() {
            Ok(true) => StepOutcome::Succeeded(format!("policy block, approved by the trigger: {list}")),
            Ok(false) => StepOutcome::AwaitApproval(format!(
                "policy block: {list}; approve with POST /api/v1/deploys/{}/approve",
                ctx.id
            )),
            Err(e) => StepOutcome::Failed(e),
        },
    }
}

fn summary(files: &[String]) -> String {
    let shown: Vec<&str> = files.iter().take(3).map(String::as_str).collect();
    let more = files.len().saturating_sub(shown.len());
    let tail = if more > 0 { format!(" and {more} more") } else { String::new() };
    format!("{} migration file(s) changed ({}{tail})", files.len(), shown.join(", "))
}
