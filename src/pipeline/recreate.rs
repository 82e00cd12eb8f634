//! `recreate`: records what runs now (for rollback) and when the recreate began (for verify),
//! then recreates exactly the app's services with exactly the image IDs this deploy built. For
//! kua-deploy's own app it hands the recreate over to a transient container instead.

use tokio_util::sync::CancellationToken;

use super::{DeployCtx, StepOutcome};
use crate::model::{now_rfc3339, ImageId, Images};
use crate::selfupdate::{hand_off, Handoff, HandoffEnd};

pub async fn run(ctx: &mut DeployCtx) -> StepOutcome {
    if ctx.declared_self && ctx.self_target.is_none() {
        return StepOutcome::Failed(
            "the registry's `self` names this app, but kua-deploy did not find itself in one of its containers \
             (is it running in the app's Compose service, with the engine reachable?); recreating it the ordinary \
             way would stop kua-deploy halfway, so nothing was recreated"
                .into(),
        );
    }
    if ctx.images.len() != ctx.app.services.len() {
        return StepOutcome::Failed("the build step did not record an image for every service".into());
    }
    let docker = ctx.compose.docker();
    let mut previous = Images::new();
    for service in &ctx.app.services {
        match docker.service_containers(ctx.compose.project(), service).await {
            Ok(containers) => {
                let running = containers.iter().find(|c| c.state == "running").or(containers.first());
                if let Some(id) = running.and_then(|c| ImageId::parse(&c.image).ok()) {
                    previous.insert(service.clone(), id);
                }
            }
            Err(e) => return e.into(),
        }
    }
    let at = now_rfc3339();
    if let Err(e) =
        ctx.store.set_previous_images(&ctx.id, &previous).and_then(|()| ctx.store.set_recreate_started_at(&ctx.id, &at))
    {
        return StepOutcome::Failed(format!("cannot record the previous images: {e}"));
    }
    ctx.previous_images = previous;
    ctx.recreate_started_at = Some(at.clone());
    if let Some(target) = ctx.self_target.clone() {
        let Some(image) = ctx.images.get(&target.service).cloned() else {
            return StepOutcome::Failed("the build did not record an image for kua-deploy's own service".into());
        };
        let handoff = Handoff {
            store: &ctx.store,
            id: &ctx.id,
            app: &ctx.app,
            image,
            previous: ctx.previous_images.get(&target.service).cloned(),
            recreate_started_at: at,
            cancel: &ctx.cancel,
            log: &ctx.log,
        };
        return match hand_off(handoff, &target).await {
            HandoffEnd::Replaced => StepOutcome::HandedOff,
            HandoffEnd::Failed(why) => StepOutcome::Failed(why),
        };
    }
    let images = ctx.images.clone();
    // Cancel is refused from here on, and shutdown waits: `compose up` stopped halfway could leave
    // the app without a container.
    if let Err(e) = ctx.compose.up_pinned(&images, &CancellationToken::new(), ctx.sink()).await {
        return e.into();
    }
    let names: Vec<&str> = images.keys().map(|s| s.as_str()).collect();
    StepOutcome::Succeeded(format!("recreated {} with the built image IDs", names.join(", ")))
}
