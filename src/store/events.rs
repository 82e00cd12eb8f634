//! Notifications of what changes in a deploy's record, so that whoever waits on it (a cancel
//! waiting for the deploy to stop, a client following its log) wakes when it changes instead of
//! reading the database on a timer. The store fires them after each write that changes a deploy's
//! phase ([`Change::Phase`]) or appends to its log ([`Change::Log`]).
//!
//! One `tokio::sync::watch` per deploy that someone waits on, holding a counter per kind of
//! change: a waiter never misses a change made after it subscribed, changes made while it was
//! busy collapse into one wake-up, and a deploy nobody waits on costs a map lookup per write.
//! A notification says only "look again"; the record itself stays the one truth.
//!
//! Besides, one fleet-wide counter moves on every new deploy and every phase written, for views of
//! all apps at once (the web page's overview) that would otherwise read the store on a timer.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::watch;

use crate::model::DeployId;

/// What changed in a deploy's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Its phase was written.
    Phase,
    /// Lines were appended to its log.
    Log,
}

/// How many changes of each kind a deploy has seen since someone began to wait on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Marks {
    phase: u64,
    log: u64,
}

/// The waiters of every deploy someone waits on.
pub(super) struct Bus {
    deploys: Mutex<HashMap<DeployId, watch::Sender<Marks>>>,
    fleet: watch::Sender<u64>,
}

impl Default for Bus {
    fn default() -> Self {
        Self { deploys: Mutex::default(), fleet: watch::channel(0).0 }
    }
}

impl Bus {
    fn deploys(&self) -> MutexGuard<'_, HashMap<DeployId, watch::Sender<Marks>>> {
        // The map holds no invariant a panic could break halfway.
        self.deploys.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Wakes whoever waits on `id`.
    pub(super) fn notify(&self, id: &DeployId, change: Change) {
        if change == Change::Phase {
            self.fleet_changed();
        }
        let mut deploys = self.deploys();
        let Some(tx) = deploys.get(id) else { return };
        if tx.receiver_count() == 0 {
            deploys.remove(id);
            return;
        }
        tx.send_modify(|m| match change {
            Change::Phase => m.phase += 1,
            Change::Log => m.log += 1,
        });
    }

    /// Wakes whoever watches the whole fleet (a deploy was added, or a phase written).
    pub(super) fn fleet_changed(&self) {
        self.fleet.send_modify(|n| *n = n.wrapping_add(1));
    }

    pub(super) fn watch_fleet(&self) -> FleetWatch {
        let mut rx = self.fleet.subscribe();
        rx.mark_unchanged();
        FleetWatch { rx }
    }

    pub(super) fn watch(self: &Arc<Self>, id: &DeployId) -> DeployWatch {
        let rx = self.deploys().entry(id.clone()).or_insert_with(|| watch::channel(Marks::default()).0).subscribe();
        let seen = *rx.borrow();
        DeployWatch { rx, seen, bus: self.clone(), id: id.clone() }
    }
}

/// Waits for changes to one deploy's record. Made before the record is read, it wakes for every
/// change written after it was made: read, then wait, then read again.
pub struct DeployWatch {
    rx: watch::Receiver<Marks>,
    seen: Marks,
    bus: Arc<Bus>,
    id: DeployId,
}

impl DeployWatch {
    /// Waits until the deploy's phase was written since this watch was made or last woke.
    pub async fn phase_changed(&mut self) {
        let seen = self.seen.phase;
        self.wait_for(|m| m.phase != seen).await;
    }

    /// Waits until anything changed (phase or log) since this watch was made or last woke.
    pub async fn changed(&mut self) {
        let seen = self.seen;
        self.wait_for(|m| *m != seen).await;
    }

    async fn wait_for(&mut self, f: impl FnMut(&Marks) -> bool) {
        let marks = self.rx.wait_for(f).await.map(|m| *m);
        match marks {
            Ok(marks) => self.seen = marks,
            // The sender lives in the bus as long as this receiver does; should it ever go,
            // nothing will change any more.
            Err(_) => std::future::pending().await,
        }
    }
}

/// Waits for any deploy to be added or change phase. Made before a read, it wakes for every
/// change after it was made; changes while its holder was busy collapse into one wake-up.
pub struct FleetWatch {
    rx: watch::Receiver<u64>,
}

impl FleetWatch {
    pub async fn changed(&mut self) {
        if self.rx.changed().await.is_err() {
            // The bus lives as long as the store; without it nothing changes any more.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for DeployWatch {
    fn drop(&mut self) {
        let mut deploys = self.bus.deploys();
        // This receiver still counts while it is being dropped.
        if deploys.get(&self.id).is_some_and(|tx| tx.receiver_count() <= 1) {
            deploys.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn id() -> DeployId {
        DeployId::new()
    }

    async fn wakes(f: impl std::future::Future<Output = ()>) -> bool {
        tokio::time::timeout(Duration::from_millis(200), f).await.is_ok()
    }

    #[tokio::test]
    async fn a_watch_wakes_for_a_change_written_after_it_was_made_even_before_it_waits() {
        let bus = Arc::new(Bus::default());
        let deploy = id();
        let mut w = bus.watch(&deploy);
        bus.notify(&deploy, Change::Phase);
        assert!(wakes(w.phase_changed()).await);
        assert!(!wakes(w.phase_changed()).await, "one change wakes a waiter once");
    }

    #[tokio::test]
    async fn a_phase_waiter_sleeps_through_log_lines_and_a_follower_wakes_for_both() {
        let bus = Arc::new(Bus::default());
        let deploy = id();
        let mut phase = bus.watch(&deploy);
        let mut any = bus.watch(&deploy);
        bus.notify(&deploy, Change::Log);
        assert!(!wakes(phase.phase_changed()).await);
        assert!(wakes(any.changed()).await);
        bus.notify(&deploy, Change::Phase);
        assert!(wakes(phase.phase_changed()).await);
        assert!(wakes(any.changed()).await);
    }

    #[tokio::test]
    async fn the_fleet_watch_wakes_for_any_deploy_s_phase_but_not_for_log_lines() {
        let bus = Arc::new(Bus::default());
        let mut fleet = bus.watch_fleet();
        assert!(!wakes(fleet.changed()).await, "nothing changed yet");
        bus.notify(&id(), Change::Log);
        assert!(!wakes(fleet.changed()).await, "a log line is not a change the fleet sees");
        bus.notify(&id(), Change::Phase);
        bus.notify(&id(), Change::Phase);
        assert!(wakes(fleet.changed()).await);
        assert!(!wakes(fleet.changed()).await, "two changes while busy wake once");
        bus.fleet_changed();
        assert!(wakes(fleet.changed()).await, "a new deploy wakes it");
    }

    #[tokio::test]
    async fn changes_to_another_deploy_do_not_wake_a_watch() {
        let bus = Arc::new(Bus::default());
        let (mine, other) = (id(), id());
        let mut w = bus.watch(&mine);
        bus.notify(&other, Change::Phase);
        assert!(!wakes(w.changed()).await);
    }

    #[tokio::test]
    async fn the_store_notifies_a_phase_write_a_supersede_and_a_log_line_but_not_a_refused_transition() {
        use crate::model::LogSink;
        use crate::model::{now_rfc3339, AppName, Delivery, Phase, StepName, Trigger, TriggerSource};
        use crate::store::{LogWriter, NewDeploy, PushRecord, Store};

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let new = |source| NewDeploy {
            app: AppName::parse("hello").unwrap(),
            trigger: Trigger { source, delivery: None, git_ref: "refs/heads/main".into(), requested_commit: None },
            approve_migrations: false,
            reason: None,
            steps: vec![StepName::GitPull],
        };
        let id = store.insert_deploy(&new(TriggerSource::Api)).unwrap().deploy_id;
        let mut w = store.watch(&id);
        assert!(!store.finish(&id, Phase::Failed, None, &[], "").unwrap());
        assert!(!wakes(w.changed()).await, "a transition that did not happen changes nothing");
        assert!(store.start(&id).unwrap() && store.park(&id, StepName::GitPull, "approve").unwrap());
        assert!(wakes(w.phase_changed()).await);

        LogWriter::new(store.clone(), id.clone()).line(crate::model::Stream::Info, "a line");
        assert!(!wakes(w.phase_changed()).await);
        assert!(wakes(w.changed()).await);

        let delivery = Delivery {
            id: Some("d-1".into()),
            provider: "forgejo".into(),
            event: "push".into(),
            repository: "kua/hello".into(),
            git_ref: Some("refs/heads/main".into()),
            after: None,
            outcome: String::new(),
            reason: String::new(),
            deploy_id: None,
            received_at: now_rfc3339(),
        };
        let record = store.record_push(&new(TriggerSource::Webhook), delivery).unwrap();
        assert!(
            matches!(&record, PushRecord::Queued { superseded, .. } if superseded.as_slice() == std::slice::from_ref(&id)),
            "{record:?}"
        );
        assert!(wakes(w.phase_changed()).await, "a deploy superseded by a push wakes its waiters");
        assert_eq!(store.deploy(&id).unwrap().unwrap().phase, Phase::Cancelled);
    }

    #[test]
    fn a_deploy_is_forgotten_when_its_last_watch_goes() {
        let bus = Arc::new(Bus::default());
        let deploy = id();
        let a = bus.watch(&deploy);
        let b = bus.watch(&deploy);
        drop(a);
        assert_eq!(bus.deploys().len(), 1, "one watch is left");
        drop(b);
        assert!(bus.deploys().is_empty());
        bus.notify(&deploy, Change::Log);
        assert!(bus.deploys().is_empty(), "a change nobody waits for leaves nothing behind");
    }
}
