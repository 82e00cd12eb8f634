//! An in-memory [`Target`] for the pipeline's unit tests: builds count up image IDs, what runs is
//! a map, and each operation can be told to fail, an image to fail verify, or an apply to block
//! until it is stopped (a recreate in flight when the server stops) or let go (a cancel that
//! comes during it), a build to run until cancelled. It records every call. [`FakeHandOff`] and
//! [`FakeWitness`] stand in for the self-deploy's transient container.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::{
    Container, HandOffEnd, HandOffRequest, HandOffSeen, HandOffWitness, Limits, Plan, SelfHandOff, Started, Target,
    TargetError, Targets, Verified,
};
use crate::config::AppConfig;
use crate::host::{Host, LogSink};
use crate::model::{Deploy, ImageId, Images, ProjectName, ServiceCheck, ServiceName, VerifyReport};

/// What the fake runtime holds and how it is told to misbehave.
#[derive(Debug, Default)]
pub struct FakeState {
    /// The image each service runs.
    pub running: Images,
    /// Operations that fail: "resolve", "build", "snapshot", "apply", "oneoff".
    pub failing: BTreeSet<&'static str>,
    /// Images that fail verify once they run.
    pub broken: BTreeSet<ImageId>,
    /// Images whose apply fails (the runtime refuses to start them).
    pub unstartable: BTreeSet<ImageId>,
    /// The next build's images fail verify.
    pub next_build_broken: bool,
    /// An apply blocks until it is stopped, then goes on "detached": the images run.
    pub apply_blocks: bool,
    /// An apply waits for this to be notified before it completes (a recreate in flight).
    pub apply_gate: Option<Arc<tokio::sync::Notify>>,
    /// A build runs until it is cancelled (a long build a cancel kills).
    pub build_blocks: bool,
    /// A build waits for this to be notified (or a cancel) before it completes (a deploy in flight).
    pub build_gate: Option<Arc<tokio::sync::Notify>>,
    /// Variables the configuration uses and nobody set (reported by resolve).
    pub unset: Vec<String>,
    /// The secret variables given to it, names and values, as the runtime would hold them.
    pub secrets: Vec<(String, String)>,
    /// Every call, in order: "build", "apply sha256:…", "restore", …
    pub calls: Vec<String>,
    builds: u32,
}

#[derive(Debug, Default)]
pub struct FakeTarget {
    pub state: Mutex<FakeState>,
}

impl FakeTarget {
    /// A runtime where `running` runs.
    pub fn running(running: Images) -> Self {
        Self { state: Mutex::new(FakeState { running, ..FakeState::default() }) }
    }

    pub fn with(&self, f: impl FnOnce(&mut FakeState)) {
        f(&mut self.state.lock().unwrap());
    }

    pub fn calls(&self) -> Vec<String> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The image ID build number `n` gives.
    pub fn image(n: u32) -> ImageId {
        ImageId::parse(&format!("sha256:{n:064x}")).expect("valid")
    }

    fn call(&self, what: &str, op: &'static str) -> Result<(), TargetError> {
        let mut s = self.state.lock().unwrap();
        s.calls.push(what.to_owned());
        if s.failing.contains(op) {
            return Err(TargetError::Failed(format!("{op} failed (as the test asked)")));
        }
        Ok(())
    }
}

/// The images as the call log names them: the last 12 hex digits of each ID.
fn list(images: &Images) -> String {
    images.values().map(|i| &i.as_str()[i.as_str().len() - 12..]).collect::<Vec<_>>().join(",")
}

#[async_trait]
impl Target for FakeTarget {
    async fn resolve(
        &self,
        services: &[ServiceName],
        _: &CancellationToken,
        _: &dyn LogSink,
    ) -> Result<Plan, TargetError> {
        self.call("resolve", "resolve")?;
        Ok(Plan {
            project: ProjectName::parse("fake").expect("valid"),
            files: vec!["compose.yaml".into()],
            image_names: services.iter().map(|s| (s.clone(), format!("fake-{s}"))).collect(),
            unset: self.state.lock().unwrap().unset.clone(),
        })
    }

    async fn build(
        &self,
        services: &[ServiceName],
        cancel: &CancellationToken,
        _: &dyn LogSink,
    ) -> Result<Images, TargetError> {
        self.call("build", "build")?;
        if self.state.lock().unwrap().build_blocks {
            cancel.cancelled().await;
            return Err(TargetError::Stopped);
        }
        let gate = self.state.lock().unwrap().build_gate.clone();
        if let Some(gate) = gate {
            tokio::select! {
                _ = gate.notified() => {}
                _ = cancel.cancelled() => return Err(TargetError::Stopped),
            }
        }
        let mut s = self.state.lock().unwrap();
        let mut images = Images::new();
        for service in services {
            s.builds += 1;
            let id = Self::image(s.builds);
            if s.next_build_broken {
                s.broken.insert(id.clone());
            }
            images.insert(service.clone(), id);
        }
        s.next_build_broken = false;
        Ok(images)
    }

    async fn snapshot(&self, services: &[ServiceName]) -> Result<Images, TargetError> {
        self.call("snapshot", "snapshot")?;
        let s = self.state.lock().unwrap();
        Ok(s.running.iter().filter(|(k, _)| services.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect())
    }

    async fn apply(
        &self,
        images: &Images,
        started: Started<'_>,
        stop: &CancellationToken,
        _: &dyn LogSink,
    ) -> Result<(), TargetError> {
        self.call(&format!("apply {}", list(images)), "apply")?;
        if images.values().any(|i| self.state.lock().unwrap().unstartable.contains(i)) {
            return Err(TargetError::Failed("the runtime could not start the image".into()));
        }
        started("fake-process".into());
        let gate = self.state.lock().unwrap().apply_gate.clone();
        if let Some(gate) = gate {
            gate.notified().await;
        }
        let blocks = self.state.lock().unwrap().apply_blocks;
        if blocks {
            stop.cancelled().await;
        }
        // Like a detached `compose up`, it finishes even when the caller stops waiting.
        self.state.lock().unwrap().running.extend(images.clone());
        if blocks {
            return Err(TargetError::Stopped);
        }
        Ok(())
    }

    async fn wait_applied(&self, process: &str, _: &dyn LogSink) {
        self.state.lock().unwrap().calls.push(format!("wait {process}"));
    }

    async fn runs(&self, images: &Images, _: &str) -> Result<bool, TargetError> {
        let s = self.state.lock().unwrap();
        Ok(images.iter().all(|(k, v)| s.running.get(k) == Some(v)))
    }

    async fn verify(
        &self,
        images: &Images,
        since: &str,
        _: Limits,
        cancel: &CancellationToken,
        _: &dyn LogSink,
    ) -> Result<Verified, TargetError> {
        if cancel.is_cancelled() {
            return Err(TargetError::Stopped);
        }
        let s = self.state.lock().unwrap();
        let mut failure = None;
        let mut checks = Vec::new();
        for (service, expected) in images {
            let running = s.running.get(service).cloned();
            if running.as_ref() != Some(expected) {
                failure.get_or_insert(format!("{service} does not run {}", expected.short()));
            } else if s.broken.contains(expected) {
                failure.get_or_insert(format!("{service} exited"));
            }
            checks.push(ServiceCheck {
                service: service.clone(),
                container_id: Some(format!("fake-{service}")),
                expected_image: expected.clone(),
                running_image: running.map(|r| r.to_string()),
                state: "running".into(),
                health: "none".into(),
                started_at: Some(since.to_owned()),
            });
        }
        drop(s);
        self.state.lock().unwrap().calls.push(format!("verify {}", list(images)));
        let report = VerifyReport { ok: failure.is_none(), recreate_started_at: since.to_owned(), services: checks };
        Ok(Verified { report, failure })
    }

    async fn restore(&self, snapshot: &Images, _: &dyn LogSink) -> Result<(), TargetError> {
        self.call(&format!("restore {}", list(snapshot)), "restore")
    }

    async fn containers(&self, services: &[ServiceName]) -> Result<BTreeMap<ServiceName, Vec<Container>>, TargetError> {
        self.call("containers", "containers")?;
        let s = self.state.lock().unwrap();
        let of = |service: &ServiceName| -> Vec<Container> {
            s.running
                .get(service)
                .map(|image| Container {
                    id: format!("fake-{service}"),
                    name: format!("fake-{service}-1"),
                    image: image.to_string(),
                    state: "running".into(),
                    health: if s.broken.contains(image) { "unhealthy" } else { "none" }.into(),
                    started_at: String::new(),
                })
                .into_iter()
                .collect()
        };
        Ok(services.iter().map(|svc| (svc.clone(), of(svc))).collect())
    }

    fn use_secrets(&self, vars: &[(String, String)]) {
        let mut s = self.state.lock().unwrap();
        let names: Vec<&str> = vars.iter().map(|(k, _)| k.as_str()).collect();
        s.calls.push(format!("secrets {}", names.join(",")));
        s.secrets = vars.to_vec();
    }

    async fn run_oneoff(
        &self,
        service: &ServiceName,
        command: &[String],
        _: Duration,
        _: &CancellationToken,
        _: &dyn LogSink,
    ) -> Result<(), TargetError> {
        self.call(&format!("oneoff {service} {}", command.join(" ")), "oneoff")
    }
}

/// Hands every deploy the same [`FakeTarget`].
pub struct FakeTargets(pub Arc<FakeTarget>);

impl Targets for FakeTargets {
    fn target(&self, _: &AppConfig, _: Option<ProjectName>, _: &str, _: Host) -> Arc<dyn Target> {
        self.0.clone()
    }
}

/// A [`SelfHandOff`] that marks the deploy handed over, as the real one does before it starts the
/// transient container, or fails as told.
#[derive(Debug)]
pub struct FakeHandOff {
    pub service: ServiceName,
    /// Why the handoff fails, if it should.
    pub fails: Option<String>,
}

#[async_trait]
impl SelfHandOff for FakeHandOff {
    fn service(&self) -> &ServiceName {
        &self.service
    }

    async fn hand_off(&self, req: HandOffRequest<'_>) -> HandOffEnd {
        if let Some(why) = &self.fails {
            return HandOffEnd::Failed(why.clone());
        }
        match req.store.hand_off(req.id, "handed over to a fake") {
            Ok(true) => HandOffEnd::Replaced,
            other => HandOffEnd::Failed(format!("cannot mark the deploy handed over: {other:?}")),
        }
    }
}

/// A [`HandOffWitness`] that saw what the test says.
#[derive(Debug)]
pub struct FakeWitness(pub Result<HandOffSeen, String>);

#[async_trait]
impl HandOffWitness for FakeWitness {
    async fn seen(&self, _: &Deploy, _: Duration, log: &dyn LogSink) -> Result<HandOffSeen, String> {
        log.line(crate::host::Stream::Info, "[transient] (fake)");
        self.0.clone()
    }
}
