//! Watches recreated service containers until they prove themselves: each runs the expected image
//! ID, started after the recreate began, is running (and healthy, with a healthcheck), and stays
//! so for `stable_s` without a restart. A container that exits, restarts or turns unhealthy fails
//! the watch without waiting out the timeout.
//!
//! It follows the engine's events rather than asking on a timer: the project's containers are
//! listed once, then only a container an event names (start, die, health_status, ...) is
//! inspected, and every container once more when the hold ends (or the timeout passes), so that
//! the verdict rests on a look taken then even if an event went astray. On an SSH host a verify
//! is a handful of commands, where a poll opened a connection every 50 ms. When the events cannot
//! be followed (an engine without them, a dropped connection), the deploy's log says so and the
//! watch looks at every container every 500 ms instead.
//!
//! [`Watch`] holds the judgement and the timers and does no I/O; [`verify_services`] feeds it
//! looks and events.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::events::{ContainerEvent, EventStream};
use super::{ContainerInfo, Docker, DockerError};
use crate::host::{LogSink, Stream};
use crate::model::{parse_time, Images, ProjectName, ServiceCheck, ServiceName, VerifyReport};

/// How often the watch looks at the containers when it cannot follow the engine's events.
const POLL_FALLBACK: Duration = Duration::from_millis(500);
/// How much longer than the watch can last its events command may run.
const EVENTS_MARGIN: Duration = Duration::from_secs(60);

/// How long to wait, and how long a container must hold.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub timeout: Duration,
    pub stable: Duration,
}

/// The watch's answer: the report for the deploy record, and why it failed if it did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub report: VerifyReport,
    pub failure: Option<String>,
}

enum Verdict {
    Ready,
    Waiting(String),
    Broken(String),
}

fn judge(c: &ContainerInfo, expected: &str, recreate_started_at: DateTime<Utc>) -> Verdict {
    if c.image != expected {
        return Verdict::Broken(format!("container {} runs image {}, expected {}", c.name, c.image, expected));
    }
    match parse_time(&c.started_at) {
        Some(t) if t > recreate_started_at => {}
        _ if c.state == "created" => return Verdict::Waiting(format!("container {} has not started yet", c.name)),
        _ => {
            return Verdict::Broken(format!(
                "container {} started at {}, before the recreate began: it was not recreated",
                c.name, c.started_at
            ))
        }
    }
    if c.restart_count > 0 || c.state == "restarting" {
        return Verdict::Broken(format!(
            "container {} restarted ({} restarts, state {})",
            c.name, c.restart_count, c.state
        ));
    }
    match c.state.as_str() {
        "running" => {}
        "created" => return Verdict::Waiting(format!("container {} has not started yet", c.name)),
        other => return Verdict::Broken(format!("container {} is {other}, not running", c.name)),
    }
    match c.health.as_str() {
        "none" | "healthy" => Verdict::Ready,
        "unhealthy" => Verdict::Broken(format!("container {} reports unhealthy", c.name)),
        other => Verdict::Waiting(format!("container {} health is {other}", c.name)),
    }
}

/// A container as the engine last described it, and when it was asked.
struct Seen {
    info: ContainerInfo,
    looked: Instant,
}

/// What the watch wants to look at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Look {
    /// List the project's containers: some service has none the watch knows of.
    List,
    /// Inspect these containers.
    Inspect(Vec<String>),
}

/// What to do after a look or an event.
enum Next {
    Done(Outcome),
    Look(Look),
    /// Wait for an event until then, and ask again.
    Wait(Instant),
}

/// What an engine event asks of the watch.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Interest {
    Inspect(String),
    /// The container was removed: it is no longer one of the service's.
    Forget(String),
}

/// The judgement and the timers of one verify, fed by looks and events; no I/O, and the clock is
/// whatever instant the caller passes.
struct Watch<'a> {
    expected: &'a Images,
    recreate_started_at: &'a str,
    since: DateTime<Utc>,
    limits: Limits,
    deadline: Instant,
    /// The containers of each expected service, as last seen.
    services: BTreeMap<ServiceName, Vec<Seen>>,
    /// When the project's containers were last listed: a service with none was seen empty then.
    listed: Instant,
    /// When what the watch knows last changed.
    changed: Instant,
    /// Since when every container has been ready.
    stable_since: Option<Instant>,
}

impl<'a> Watch<'a> {
    fn new(expected: &'a Images, recreate_started_at: &'a str, limits: Limits, start: Instant) -> Self {
        Self {
            expected,
            recreate_started_at,
            since: parse_time(recreate_started_at).unwrap_or_else(Utc::now),
            limits,
            deadline: start + limits.timeout,
            services: BTreeMap::new(),
            listed: start,
            changed: start,
            stable_since: None,
        }
    }

    /// The project's containers as listed at `at`: everything known before is replaced.
    fn listed(&mut self, at: Instant, containers: Vec<ContainerInfo>) {
        self.services.clear();
        for c in containers {
            self.put(at, c);
        }
        self.listed = at;
        self.changed = at;
    }

    /// The containers `asked` as inspected at `at`; one the engine no longer has is forgotten.
    fn inspected(&mut self, at: Instant, asked: &[String], found: Vec<ContainerInfo>) {
        for id in asked.iter().filter(|id| !found.iter().any(|c| &c.id == *id)) {
            self.drop_container(id);
        }
        for c in found {
            self.put(at, c);
        }
        self.changed = at;
    }

    /// The container `id` was removed at `at`.
    fn forget(&mut self, at: Instant, id: &str) {
        self.drop_container(id);
        self.changed = at;
    }

    fn drop_container(&mut self, id: &str) {
        for seen in self.services.values_mut() {
            seen.retain(|s| s.info.id != id);
        }
    }

    /// Keeps `c` if Compose created it for one of the expected services.
    fn put(&mut self, at: Instant, c: ContainerInfo) {
        let Some(service) = self.expected_service(c.service.as_deref().unwrap_or_default()) else { return };
        let seen = self.services.entry(service).or_default();
        match seen.iter_mut().find(|s| s.info.id == c.id) {
            Some(s) => *s = Seen { info: c, looked: at },
            None => seen.push(Seen { info: c, looked: at }),
        }
    }

    fn expected_service(&self, name: &str) -> Option<ServiceName> {
        self.expected.keys().find(|s| s.as_str() == name).cloned()
    }

    fn knows(&self, id: &str) -> bool {
        self.services.values().flatten().any(|s| s.info.id == id)
    }

    /// What an engine event asks for: a container the watch knows is inspected when its state can
    /// have changed and forgotten when it is removed; one it does not know is inspected once it
    /// starts, if Compose created it for an expected service (a recreate still under way, or one
    /// run again by hand).
    fn interest(&self, ev: &ContainerEvent) -> Option<Interest> {
        let known = self.knows(&ev.id);
        let inspect = Some(Interest::Inspect(ev.id.clone()));
        match ev.action.as_str() {
            "destroy" if known => Some(Interest::Forget(ev.id.clone())),
            "start" | "restart" | "die" | "oom" | "pause" | "unpause" | "health_status" if known => inspect,
            "start" | "restart" | "unpause" | "health_status"
                if ev.oneoff == "False" && self.expected_service(&ev.service).is_some() =>
            {
                inspect
            }
            _ => None,
        }
    }

    /// A look at every container: a listing while some service has none known.
    fn full_look(&self) -> Look {
        if self.expected.keys().any(|s| self.services.get(s).is_none_or(Vec::is_empty)) {
            Look::List
        } else {
            Look::Inspect(self.services.values().flatten().map(|s| s.info.id.clone()).collect())
        }
    }

    /// When the least recent look that what the watch knows rests on was taken.
    fn oldest_look(&self) -> Instant {
        let empty = self.expected.keys().any(|s| self.services.get(s).is_none_or(Vec::is_empty));
        let looks = self.services.values().flatten().map(|s| s.looked);
        looks.chain(empty.then_some(self.listed)).min().unwrap_or(self.listed)
    }

    /// Judges what is known at `now`. A hold ends well only on a look at every container taken
    /// after it was complete; a timeout is declared only on one taken after it passed.
    fn next(&mut self, now: Instant) -> Next {
        let mut checks = Vec::new();
        let mut waiting = None;
        let mut broken = None;
        for (service, image) in self.expected {
            let containers = self.services.get(service).map(Vec::as_slice).unwrap_or_default();
            if containers.is_empty() {
                waiting.get_or_insert_with(|| format!("service {service} has no container"));
                checks.push(ServiceCheck {
                    service: service.clone(),
                    container_id: None,
                    expected_image: image.clone(),
                    running_image: None,
                    state: "missing".into(),
                    health: "none".into(),
                    started_at: None,
                });
            }
            for Seen { info: c, .. } in containers {
                match judge(c, image.as_str(), self.since) {
                    Verdict::Ready => {}
                    Verdict::Waiting(why) => {
                        waiting.get_or_insert(why);
                    }
                    Verdict::Broken(why) => {
                        broken.get_or_insert(why);
                    }
                }
                checks.push(ServiceCheck {
                    service: service.clone(),
                    container_id: Some(c.id.clone()),
                    expected_image: image.clone(),
                    running_image: Some(c.image.clone()),
                    state: c.state.clone(),
                    health: c.health.clone(),
                    started_at: Some(c.started_at.clone()),
                });
            }
        }
        let report =
            |ok| VerifyReport { ok, recreate_started_at: self.recreate_started_at.to_owned(), services: checks };
        if let Some(why) = broken {
            return Next::Done(Outcome { report: report(false), failure: Some(why) });
        }
        let oldest = self.oldest_look();
        match waiting {
            None => {
                let until = *self.stable_since.get_or_insert(self.changed) + self.limits.stable;
                if oldest >= until {
                    Next::Done(Outcome { report: report(true), failure: None })
                } else if now >= until {
                    Next::Look(self.full_look())
                } else {
                    Next::Wait(until)
                }
            }
            Some(why) => {
                self.stable_since = None;
                if now < self.deadline {
                    Next::Wait(self.deadline)
                } else if oldest >= self.deadline {
                    let why = format!("not verified within {}s: {why}", self.limits.timeout.as_secs());
                    Next::Done(Outcome { report: report(false), failure: Some(why) })
                } else {
                    Next::Look(self.full_look())
                }
            }
        }
    }
}

/// Watches `expected`'s services of `project` until they all hold for `limits.stable`, one of them
/// breaks, the timeout passes, or `cancel` fires. `log` hears of a fall back to looking on a timer.
pub async fn verify_services(
    docker: &Docker,
    project: &ProjectName,
    expected: &Images,
    recreate_started_at: &str,
    limits: Limits,
    cancel: &CancellationToken,
    log: &dyn LogSink,
) -> Result<Outcome, DockerError> {
    let start = Instant::now();
    // Followed before the listing, and from when the recreate began: whatever happens after the
    // listing arrives as an event, even if the command took a while to connect.
    let within = limits.timeout + limits.stable + EVENTS_MARGIN;
    let mut events = Some(docker.container_events(project, recreate_started_at, within));
    let mut watch = Watch::new(expected, recreate_started_at, limits, start);
    let mut look = Some(Look::List);
    let mut next_poll = start;
    loop {
        if let Some(l) = look.take() {
            let at = Instant::now();
            match l {
                Look::List => watch.listed(at, docker.project_containers(project).await?),
                Look::Inspect(ids) => {
                    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
                    let found = docker.inspect_containers(&refs).await?;
                    watch.inspected(at, &ids, found);
                }
            }
        }
        let until = match watch.next(Instant::now()) {
            Next::Done(outcome) => return Ok(outcome),
            Next::Look(l) => {
                look = Some(l);
                continue;
            }
            Next::Wait(until) => until,
        };
        let polling = events.is_none();
        tokio::select! {
            ev = next_event(&mut events) => match ev {
                Some(ev) => {
                    // Events that arrived together (the replay since the recreate began, a
                    // restart's die and start) cost one inspect.
                    let mut ids = BTreeSet::new();
                    let mut take = |ev: ContainerEvent| match watch.interest(&ev) {
                        Some(Interest::Inspect(id)) => {
                            ids.insert(id);
                        }
                        Some(Interest::Forget(id)) => {
                            ids.remove(&id);
                            watch.forget(Instant::now(), &id);
                        }
                        None => {}
                    };
                    take(ev);
                    while let Some(ev) = events.as_mut().and_then(EventStream::try_next) {
                        take(ev);
                    }
                    if !ids.is_empty() {
                        look = Some(Look::Inspect(ids.into_iter().collect()));
                    }
                }
                None => {
                    let why = match events.take() {
                        Some(mut stream) => stream.ended().await,
                        None => String::new(),
                    };
                    let msg = format!(
                        "verify cannot follow the engine's events ({why}); it looks at the containers every {} ms instead",
                        POLL_FALLBACK.as_millis()
                    );
                    tracing::warn!(project = %project, "{msg}");
                    log.line(Stream::Info, &msg);
                }
            },
            _ = tokio::time::sleep_until(if polling { until.min(next_poll) } else { until }) => {
                if polling && Instant::now() >= next_poll {
                    look = Some(watch.full_look());
                    next_poll = Instant::now() + POLL_FALLBACK;
                }
            }
            _ = cancel.cancelled() => {
                return Err(DockerError::Run(crate::host::RunError::Cancelled { program: "verify".into() }));
            }
        }
    }
}

/// The next event, or never once the events cannot be followed.
async fn next_event(events: &mut Option<EventStream>) -> Option<ContainerEvent> {
    match events {
        Some(stream) => stream.next().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(state: &str, health: &str, started: &str, restarts: i64) -> ContainerInfo {
        ContainerInfo {
            id: "c1".into(),
            name: "app-web-1".into(),
            image: "sha256:new".into(),
            state: state.into(),
            health: health.into(),
            started_at: started.into(),
            restart_count: restarts,
            exit_code: 0,
            service: Some("web".into()),
        }
    }

    fn since() -> DateTime<Utc> {
        parse_time("2026-01-01T00:00:00Z").unwrap()
    }

    #[test]
    fn a_running_healthy_recreated_container_of_the_right_image_is_ready() {
        let c = container("running", "healthy", "2026-01-01T00:00:01.5Z", 0);
        assert!(matches!(judge(&c, "sha256:new", since()), Verdict::Ready));
    }

    #[test]
    fn a_container_of_another_image_is_broken() {
        let c = container("running", "none", "2026-01-01T00:00:01Z", 0);
        assert!(matches!(judge(&c, "sha256:old", since()), Verdict::Broken(_)));
    }

    #[test]
    fn a_container_started_before_the_recreate_is_broken() {
        let c = container("running", "none", "2025-12-31T23:59:59Z", 0);
        assert!(matches!(judge(&c, "sha256:new", since()), Verdict::Broken(_)));
    }

    #[test]
    fn starting_health_waits_and_unhealthy_or_exited_or_restarted_breaks() {
        let t = "2026-01-01T00:00:02Z";
        assert!(matches!(judge(&container("running", "starting", t, 0), "sha256:new", since()), Verdict::Waiting(_)));
        assert!(matches!(judge(&container("running", "unhealthy", t, 0), "sha256:new", since()), Verdict::Broken(_)));
        assert!(matches!(judge(&container("exited", "none", t, 0), "sha256:new", since()), Verdict::Broken(_)));
        assert!(matches!(judge(&container("running", "none", t, 2), "sha256:new", since()), Verdict::Broken(_)));
    }

    // The watch itself, on a clock of its own: every instant is `t(seconds)` after the start.

    const RECREATE: &str = "2026-01-01T00:00:00Z";

    fn t0() -> Instant {
        Instant::now()
    }

    fn at(start: Instant, secs: f64) -> Instant {
        start + Duration::from_secs_f64(secs)
    }

    fn web(id: &str, state: &str, health: &str) -> ContainerInfo {
        ContainerInfo {
            id: id.into(),
            name: format!("app-web-{id}"),
            ..container(state, health, "2026-01-01T00:00:02Z", 0)
        }
    }

    fn images(services: &[&str]) -> Images {
        services
            .iter()
            .map(|s| {
                (
                    ServiceName::parse(s).unwrap(),
                    crate::model::ImageId::parse(&format!("sha256:{}", "a".repeat(64))).unwrap(),
                )
            })
            .collect()
    }

    fn with_image(mut c: ContainerInfo) -> ContainerInfo {
        c.image = format!("sha256:{}", "a".repeat(64));
        c
    }

    fn limits(timeout: u64, stable: u64) -> Limits {
        Limits { timeout: Duration::from_secs(timeout), stable: Duration::from_secs(stable) }
    }

    fn event(id: &str, action: &str, service: &str, oneoff: &str) -> ContainerEvent {
        ContainerEvent { id: id.into(), action: action.into(), service: service.into(), oneoff: oneoff.into() }
    }

    fn done(next: Next) -> Outcome {
        match next {
            Next::Done(o) => o,
            Next::Look(l) => panic!("expected an end, the watch wants to look: {l:?}"),
            Next::Wait(_) => panic!("expected an end, the watch waits"),
        }
    }

    fn waits_until(next: Next) -> Instant {
        match next {
            Next::Wait(until) => until,
            Next::Done(o) => panic!("expected a wait, the watch ended: {:?}", o.failure),
            Next::Look(l) => panic!("expected a wait, the watch wants to look: {l:?}"),
        }
    }

    fn looks(next: Next) -> Look {
        match next {
            Next::Look(l) => l,
            Next::Done(o) => panic!("expected a look, the watch ended: {:?}", o.failure),
            Next::Wait(_) => panic!("expected a look, the watch waits"),
        }
    }

    #[test]
    fn a_ready_container_holds_for_stable_s_and_is_verified_on_a_look_taken_when_the_hold_ends() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(at(start, 0.1), vec![with_image(web("c1", "running", "healthy"))]);
        assert_eq!(waits_until(w.next(at(start, 0.2))), at(start, 5.1));
        assert_eq!(looks(w.next(at(start, 5.1))), Look::Inspect(vec!["c1".into()]));
        w.inspected(at(start, 5.2), &["c1".into()], vec![with_image(web("c1", "running", "healthy"))]);
        let outcome = done(w.next(at(start, 5.3)));
        assert!(outcome.failure.is_none() && outcome.report.ok);
        assert_eq!(outcome.report.services[0].container_id.as_deref(), Some("c1"));
    }

    #[test]
    fn with_stable_s_zero_the_look_that_finds_everything_ready_ends_the_watch() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 0), start);
        w.listed(at(start, 0.1), vec![with_image(web("c1", "running", "starting"))]);
        w.next(at(start, 0.1));
        w.inspected(at(start, 1.0), &["c1".into()], vec![with_image(web("c1", "running", "healthy"))]);
        assert!(done(w.next(at(start, 1.1))).report.ok);
    }

    #[test]
    fn only_events_that_can_change_a_verdict_ask_for_an_inspect() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(start, vec![with_image(web("c1", "running", "starting"))]);
        for action in ["start", "restart", "die", "oom", "pause", "unpause", "health_status"] {
            assert_eq!(
                w.interest(&event("c1", action, "web", "False")),
                Some(Interest::Inspect("c1".into())),
                "{action}"
            );
        }
        assert_eq!(w.interest(&event("c1", "destroy", "web", "False")), Some(Interest::Forget("c1".into())));
        assert_eq!(w.interest(&event("c1", "exec_die", "web", "False")), None);
        assert_eq!(w.interest(&event("c1", "rename", "web", "False")), None);
        // A container not yet known counts once it starts, if Compose made it for an expected service.
        assert_eq!(w.interest(&event("c2", "start", "web", "False")), Some(Interest::Inspect("c2".into())));
        assert_eq!(w.interest(&event("c2", "start", "db", "False")), None, "another service");
        assert_eq!(w.interest(&event("c2", "start", "web", "True")), None, "a one-off container");
        assert_eq!(
            w.interest(&event("c2", "start", "web", "")),
            None,
            "a transient container that inherited the label"
        );
        assert_eq!(w.interest(&event("c0", "die", "web", "False")), None, "the old container stopping");
        assert_eq!(w.interest(&event("c0", "destroy", "web", "False")), None);
    }

    #[test]
    fn a_container_that_dies_during_the_hold_fails_the_watch_at_once() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(start, vec![with_image(web("c1", "running", "none"))]);
        waits_until(w.next(at(start, 0.1)));
        w.inspected(at(start, 2.0), &["c1".into()], vec![with_image(web("c1", "exited", "none"))]);
        let outcome = done(w.next(at(start, 2.1)));
        assert!(outcome.failure.unwrap().contains("is exited, not running"));
        assert!(!outcome.report.ok);
    }

    #[test]
    fn a_container_still_waiting_at_the_timeout_is_looked_at_once_more_then_fails() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(at(start, 0.1), vec![with_image(web("c1", "running", "starting"))]);
        assert_eq!(waits_until(w.next(at(start, 0.2))), at(start, 30.0));
        assert_eq!(looks(w.next(at(start, 30.0))), Look::Inspect(vec!["c1".into()]));
        w.inspected(at(start, 30.0), &["c1".into()], vec![with_image(web("c1", "running", "starting"))]);
        let why = done(w.next(at(start, 30.1))).failure.unwrap();
        assert_eq!(why, "not verified within 30s: container app-web-c1 health is starting");
    }

    #[test]
    fn a_container_turning_healthy_on_the_last_look_starts_its_hold_even_past_the_timeout() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(at(start, 0.1), vec![with_image(web("c1", "running", "starting"))]);
        looks(w.next(at(start, 30.0)));
        w.inspected(at(start, 30.0), &["c1".into()], vec![with_image(web("c1", "running", "healthy"))]);
        assert_eq!(waits_until(w.next(at(start, 30.1))), at(start, 35.0));
    }

    #[test]
    fn a_hold_starts_again_when_a_container_waits_again() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(at(start, 1.0), vec![with_image(web("c1", "running", "healthy"))]);
        assert_eq!(waits_until(w.next(at(start, 1.0))), at(start, 6.0));
        w.inspected(at(start, 3.0), &["c1".into()], vec![with_image(web("c1", "running", "starting"))]);
        waits_until(w.next(at(start, 3.0)));
        w.inspected(at(start, 4.0), &["c1".into()], vec![with_image(web("c1", "running", "healthy"))]);
        assert_eq!(waits_until(w.next(at(start, 4.0))), at(start, 9.0));
    }

    #[test]
    fn a_service_without_a_container_waits_for_one_to_start() {
        let (start, expected) = (t0(), images(&["api", "web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 0), start);
        let mut api = with_image(web("a1", "running", "none"));
        api.service = Some("api".into());
        w.listed(at(start, 0.1), vec![api.clone()]);
        assert_eq!(waits_until(w.next(at(start, 0.2))), at(start, 30.0));
        assert_eq!(w.interest(&event("w1", "start", "web", "False")), Some(Interest::Inspect("w1".into())));
        w.inspected(at(start, 5.0), &["w1".into()], vec![with_image(web("w1", "running", "none"))]);
        // Everything is ready, but the other service was last seen before that: one more look.
        assert_eq!(looks(w.next(at(start, 5.0))), Look::Inspect(vec!["a1".into(), "w1".into()]));
        w.inspected(at(start, 5.1), &["a1".into(), "w1".into()], vec![api, with_image(web("w1", "running", "none"))]);
        assert!(done(w.next(at(start, 5.2))).report.ok);
    }

    #[test]
    fn a_service_still_without_a_container_at_the_timeout_is_listed_again_before_the_watch_fails() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(at(start, 0.1), vec![]);
        assert_eq!(looks(w.next(at(start, 30.0))), Look::List);
        w.listed(at(start, 30.0), vec![with_image(web("c1", "created", "none"))]);
        let why = done(w.next(at(start, 30.1))).failure.unwrap();
        assert_eq!(why, "not verified within 30s: container app-web-c1 has not started yet");
    }

    #[test]
    fn a_removed_container_leaves_its_service_waiting_and_one_gone_when_inspected_is_forgotten() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        w.listed(start, vec![with_image(web("c1", "running", "none"))]);
        w.forget(at(start, 1.0), "c1");
        assert_eq!(waits_until(w.next(at(start, 1.0))), at(start, 30.0));
        w.listed(at(start, 2.0), vec![with_image(web("c2", "running", "none"))]);
        w.inspected(at(start, 3.0), &["c2".into()], vec![]);
        assert_eq!(looks(w.next(at(start, 30.0))), Look::List);
        w.listed(at(start, 30.0), vec![]);
        let outcome = done(w.next(at(start, 30.0)));
        assert_eq!(outcome.failure.unwrap(), "not verified within 30s: service web has no container");
        assert_eq!(outcome.report.services[0].state, "missing");
    }

    #[test]
    fn a_broken_container_fails_the_watch_whatever_the_others_do() {
        let (start, expected) = (t0(), images(&["api", "web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 5), start);
        let mut api = with_image(web("a1", "running", "starting"));
        api.service = Some("api".into());
        w.listed(start, vec![api, with_image(web("w1", "running", "unhealthy"))]);
        assert_eq!(done(w.next(start)).failure.unwrap(), "container app-web-w1 reports unhealthy");
    }

    #[test]
    fn containers_compose_did_not_create_for_an_expected_service_are_not_judged() {
        let (start, expected) = (t0(), images(&["web"]));
        let mut w = Watch::new(&expected, RECREATE, limits(30, 0), start);
        let mut transient = web("t1", "exited", "none");
        transient.service = None;
        let mut other = web("d1", "exited", "none");
        other.service = Some("db".into());
        w.listed(start, vec![transient, other, with_image(web("c1", "running", "none"))]);
        let outcome = done(w.next(start));
        assert!(outcome.report.ok, "{:?}", outcome.failure);
        assert_eq!(outcome.report.services.len(), 1);
    }
}
