//! How many deploys run at once: the registry's `limits` as semaphores the queue owns. A deploy
//! takes a slot of its host, then one of the whole server, before it leaves `queued`, and holds
//! both (a [`Held`]) until its run ends or parks; dropping the `Held` frees them on every path.
//! The host's slot comes first, so a deploy waiting for a global slot blocks only its own host,
//! whose next deploy would need a global slot too; a deploy holding a global slot holds every
//! slot it needs and runs, so waits always end. Tokio's semaphores are fair: deploys get slots
//! in the order they asked, and a busy host cannot starve another one of global slots.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{DeployLimits, HostSpec};

/// The slots of every host and of the whole server.
pub struct Slots {
    limits: DeployLimits,
    global: Arc<Semaphore>,
    /// By host label; made when a host's first deploy asks.
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
}

/// The slots one deploy holds; dropping it frees them.
#[derive(Debug)]
pub struct Held {
    _host: OwnedSemaphorePermit,
    _global: OwnedSemaphorePermit,
}

impl Slots {
    pub fn new(limits: DeployLimits) -> Self {
        Self { global: Arc::new(Semaphore::new(limits.deploys)), limits, hosts: Mutex::new(HashMap::new()) }
    }

    fn host(&self, host: &HostSpec) -> Arc<Semaphore> {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.entry(host.label()).or_insert_with(|| Arc::new(Semaphore::new(self.limits.for_host(host)))).clone()
    }

    /// How many deploys hold a slot of `host` now.
    #[cfg(test)]
    pub fn running_on(&self, host: &HostSpec) -> usize {
        self.limits.for_host(host) - self.host(host).available_permits()
    }

    /// Waits for a slot of `host` and a global one. `say` is told once of each wait (what the
    /// deploy waits for, and how many deploys hold the slots), and once when the wait is over.
    /// Dropping the future gives up its place in line.
    pub async fn acquire(&self, host: &HostSpec, say: impl Fn(&str)) -> Held {
        let began = Instant::now();
        let mut waited = false;
        let sem = self.host(host);
        let limit = self.limits.for_host(host);
        let why = || {
            let running = limit - sem.available_permits();
            format!(
                "waiting for a free slot on host {}: {running} deploy{} running there (limit {limit})",
                host.label(),
                plural(running)
            )
        };
        let host_permit = take(sem.clone(), why, &say, &mut waited).await;
        let limit = self.limits.deploys;
        let why = || {
            let running = limit - self.global.available_permits();
            format!(
                "waiting for a free deploy slot: {running} deploy{} running on all hosts (limit {limit})",
                plural(running)
            )
        };
        let global_permit = take(self.global.clone(), why, &say, &mut waited).await;
        if waited {
            say(&format!("got a slot after waiting {:.1}s", began.elapsed().as_secs_f64()));
        }
        Held { _host: host_permit, _global: global_permit }
    }
}

/// A permit of `sem`: at once when one is free, else after telling `say` why it waits.
async fn take(
    sem: Arc<Semaphore>,
    why: impl Fn() -> String,
    say: &impl Fn(&str),
    waited: &mut bool,
) -> OwnedSemaphorePermit {
    if let Ok(p) = sem.clone().try_acquire_owned() {
        return p;
    }
    say(&why());
    *waited = true;
    // The semaphores are never closed.
    sem.acquire_owned().await.expect("a deploy slot semaphore is never closed")
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use super::*;
    use crate::host::SshHost;

    fn ssh(name: &str) -> HostSpec {
        HostSpec::Ssh(SshHost {
            name: name.into(),
            user: "deploy".into(),
            host: format!("{name}.example"),
            port: 22,
            identity_file: None,
            known_hosts_file: None,
        })
    }

    fn limits(deploys: usize, per_host: usize) -> DeployLimits {
        DeployLimits { deploys, deploys_per_host: per_host, per_host: BTreeMap::new() }
    }

    /// Whether `acquire` is still waiting after a moment.
    async fn waits(slots: &Slots, host: &HostSpec) -> bool {
        tokio::time::timeout(Duration::from_millis(50), slots.acquire(host, |_| {})).await.is_err()
    }

    #[tokio::test]
    async fn a_limit_of_one_per_host_makes_a_second_deploy_there_wait_while_another_host_goes_on() {
        let slots = Slots::new(limits(8, 1));
        let said = Mutex::new(Vec::new());
        let first = slots.acquire(&ssh("bruno"), |_| {}).await;
        assert!(waits(&slots, &ssh("bruno")).await, "a second deploy on bruno waits");
        let _other = slots.acquire(&ssh("edge"), |_| {}).await;
        assert_eq!(slots.running_on(&ssh("bruno")), 1);
        let bruno = ssh("bruno");
        let second = slots.acquire(&bruno, |m| said.lock().unwrap().push(m.to_owned()));
        tokio::pin!(second);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut second).await.is_err());
        drop(first);
        let _second = tokio::time::timeout(Duration::from_secs(1), second).await.expect("freed by the first");
        let said = said.lock().unwrap();
        assert_eq!(said[0], "waiting for a free slot on host bruno: 1 deploy running there (limit 1)");
        assert!(said[1].starts_with("got a slot after waiting "), "{said:?}");
        assert_eq!(said.len(), 2, "each wait is told once: {said:?}");
    }

    #[tokio::test]
    async fn the_global_limit_holds_across_hosts_and_a_freed_slot_goes_to_the_one_waiting() {
        let slots = Slots::new(limits(2, 2));
        let a = slots.acquire(&ssh("a"), |_| {}).await;
        let _b = slots.acquire(&ssh("b"), |_| {}).await;
        let said = Mutex::new(Vec::new());
        let host_c = ssh("c");
        let c = slots.acquire(&host_c, |m| said.lock().unwrap().push(m.to_owned()));
        tokio::pin!(c);
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut c).await.is_err(), "a third deploy waits");
        assert_eq!(said.lock().unwrap()[0], "waiting for a free deploy slot: 2 deploys running on all hosts (limit 2)");
        drop(a);
        tokio::time::timeout(Duration::from_secs(1), c).await.expect("the freed slot goes to host c");
    }

    #[tokio::test]
    async fn a_hosts_own_max_deploys_overrides_the_default_and_local_is_a_host_too() {
        let mut l = limits(8, 1);
        l.per_host.insert("big".into(), 2);
        let slots = Slots::new(l);
        let _one = slots.acquire(&ssh("big"), |_| {}).await;
        let _two = slots.acquire(&ssh("big"), |_| {}).await;
        assert!(waits(&slots, &ssh("big")).await);
        let _local = slots.acquire(&HostSpec::Local, |_| {}).await;
        assert!(waits(&slots, &HostSpec::Local).await);
    }

    #[tokio::test]
    async fn a_wait_given_up_frees_its_place_and_holds_nothing() {
        let slots = Slots::new(limits(1, 1));
        let first = slots.acquire(&ssh("a"), |_| {}).await;
        assert!(waits(&slots, &ssh("b")).await, "waits for the global slot, holding b's");
        assert_eq!(slots.running_on(&ssh("b")), 0, "the abandoned wait gave b's slot back");
        drop(first);
        let _ = tokio::time::timeout(Duration::from_secs(1), slots.acquire(&ssh("b"), |_| {})).await.expect("free");
    }
}
