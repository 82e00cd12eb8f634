//! `build`: builds the app's services and records each one's image ID.

use std::time::Instant;

use super::{DeployCtx, Fact, StepOutcome};

/// A failure of this step is rolled back: no, new images are built beside the running ones.
pub const ROLLS_BACK: bool = false;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let started = Instant::now();
    let images = match ctx.target.build(&ctx.app.services, &ctx.cancel, ctx.sink()).await {
        Ok(images) => images,
        Err(e) => return e.into(),
    };
    if let Err(e) = ctx.record(Fact::Images(images.clone())) {
        return StepOutcome::Failed(e);
    }
    let list: Vec<String> = images.iter().map(|(s, id)| format!("{s}={}", id.short())).collect();
    ctx.images = images;
    StepOutcome::Succeeded(format!("built {} in {:.1}s", list.join(" "), started.elapsed().as_secs_f64()))
}
