//! `build`: builds the app's services with Compose and records each one's image ID.

use std::time::Instant;

use super::{DeployCtx, StepOutcome};
use crate::docker::compose::Compose;
use crate::model::Images;

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    let started = Instant::now();
    // Reading the Compose configuration (for the image names) does not depend on the build, so
    // both run at once; a configuration error is the clearer of the two when both fail.
    let (resolved, built) = tokio::join!(
        ctx.compose.resolve(&ctx.cancel, ctx.sink()),
        ctx.compose.build(&ctx.app.services, &ctx.cancel, ctx.sink())
    );
    let names = match (resolved, built) {
        (Err(e), _) | (Ok(_), Err(e)) => return e.into(),
        (Ok(resolved), Ok(())) => match Compose::image_names(&resolved, &ctx.app.services) {
            Ok(names) => names,
            Err(e) => return e.into(),
        },
    };
    // Read each tag right after the build, so the ID is this build's; from here on only the ID is used.
    let docker = ctx.compose.docker();
    let mut images = Images::new();
    ctx.image_names = Some(names.clone());
    for (service, name) in names {
        match docker.image_id(&name).await {
            Ok(id) => {
                ctx.log.info(&format!("built {service}: {name} = {id}"));
                images.insert(service, id);
            }
            Err(e) => return e.into(),
        }
    }
    if let Err(e) = ctx.store.set_images(&ctx.id, &images) {
        return StepOutcome::Failed(format!("cannot record the image IDs: {e}"));
    }
    let list: Vec<String> = images.iter().map(|(s, id)| format!("{s}={}", id.short())).collect();
    ctx.images = images;
    StepOutcome::Succeeded(format!("built {} in {:.1}s", list.join(" "), started.elapsed().as_secs_f64()))
}
