//! Step 3's eyes, at every start: for a `self_recreate_pending` deploy, waits for the transient
//! container's verdict (`docker wait`, no polling), hands on its output, removes it and inspects
//! this process's own container. The pipeline's completion judges what it saw.

use std::time::Duration;

use async_trait::async_trait;

use super::{transient_name, SelfTarget};
use crate::docker::Docker;
use crate::host::{Host, LogSink, Stream};
use crate::model::Deploy;
use crate::target::{HandOffSeen, HandOffWitness, SelfRuns};

/// Looks through the local engine; `own` is this process's container, if it found itself.
pub struct Witness {
    docker: Docker,
    own: Option<SelfTarget>,
}

impl Witness {
    pub fn new(host: Host, own: Option<SelfTarget>) -> Self {
        Self { docker: Docker::new(host), own }
    }
}

#[async_trait]
impl HandOffWitness for Witness {
    async fn seen(&self, deploy: &Deploy, limit: Duration, log: &dyn LogSink) -> Result<HandOffSeen, String> {
        let docker = &self.docker;
        let name = transient_name(&deploy.deploy_id);
        let started = std::time::Instant::now();
        // The transient container may still be watching this process or rolling back: its verdict
        // comes first. Engine errors are retried until `limit`.
        let verdict = loop {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(format!(
                    "the transient container {name} gave no verdict within {}s; it was left running",
                    limit.as_secs()
                ));
            }
            match docker.inspect_containers(&[&name]).await {
                Ok(c) => match c.first() {
                    // Between `docker run` creating it and starting it: a moment.
                    Some(c) if c.state == "created" => tokio::time::sleep(Duration::from_millis(200)).await,
                    Some(c) if c.state == "running" || c.state == "restarting" => {
                        match docker.wait_container(&name, left).await {
                            Ok(code) => break Some(code),
                            Err(e) => {
                                tracing::warn!("waiting for {name} (retrying): {e}");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                    Some(c) => break Some(c.exit_code),
                    None => break None,
                },
                Err(e) => {
                    tracing::warn!("inspecting {name} (retrying): {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        };
        if let Ok(report) = docker.container_logs(&name, 200).await {
            for line in report.lines() {
                log.line(Stream::Info, &format!("[transient] {line}"));
            }
        }
        let _ = docker.remove_container(&name).await;
        let Some(own) = self.own.as_ref().filter(|t| t.app == deploy.app) else {
            return Ok(HandOffSeen { verdict, own: None });
        };
        let me = docker
            .inspect_containers(&[&own.container.id])
            .await
            .ok()
            .and_then(|mut c| c.pop())
            .ok_or_else(|| "cannot inspect kua-deploy's own container".to_owned())?;
        let own = SelfRuns {
            service: own.service.clone(),
            container_id: me.id,
            image: me.image,
            state: me.state,
            health: me.health,
            started_at: me.started_at,
        };
        Ok(HandOffSeen { verdict, own: Some(own) })
    }
}
