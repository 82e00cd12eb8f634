//! The one owner of a deploy's lifecycle. Every change of a deploy's phase is a named
//! [`Transition`], checked against [`TABLE`] and written in one transaction together with the step
//! changes that belong to it (closing the open steps of a deploy that ends, the gate's detail of
//! one that parks). Nothing else writes `deploys.phase`. The step changes of a running deploy
//! (start, finish, detail) live here too.
//!
//! A transition that ends a deploy calls the store's end hooks ([`Store::on_deploy_end`]) once it
//! is committed. The guarded update succeeds once per deploy, so each hook sees each deploy end
//! once, whatever ended it: the runner, a cancel, a newer push, startup recovery, the
//! self-deploy's completion, a storage failure recorded late. A crash between the commit and the
//! call loses the call, never the end (the record is right). A hook must be quick and must not
//! call into the queue: a superseded deploy's end is reported under the queue's lock.

use rusqlite::{params, Connection};

use super::Store;
use crate::model::{now_rfc3339, DeployId, Phase, StepName, StepStatus};

/// The named changes of a deploy's phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// A worker takes a queued deploy.
    Start,
    /// The migration gate stops it until someone approves.
    Park,
    /// Someone approved: it is queued again, to go on from the build.
    Approve,
    /// Cancelled before a worker runs it.
    Cancel,
    /// A newer push replaces it while it waits.
    Supersede,
    /// kua-deploy's own recreate went to a transient container.
    HandOff,
    /// The handoff did not happen: the old process runs the deploy again.
    TakeBack,
    /// The runner (or the self-deploy's completion) ends it.
    Finish,
    /// Stopped before its recreate, by shutdown or a dead process.
    Interrupt,
    /// Its state could not be written, or its app left the registry.
    Fail,
    /// A restarted process takes over a deploy left in recreate, verify or rollback.
    Resume,
}

use Phase::*;

/// Which phases each transition leaves from, and which it may lead to.
pub const TABLE: &[(Transition, &[Phase], &[Phase])] = &[
    (Transition::Start, &[Queued], &[Running]),
    (Transition::Park, &[Running], &[AwaitingApproval]),
    (Transition::Approve, &[AwaitingApproval], &[Queued]),
    (Transition::Cancel, &[Queued, AwaitingApproval], &[Cancelled]),
    (Transition::Supersede, &[Queued, AwaitingApproval], &[Cancelled]),
    (Transition::HandOff, &[Running], &[SelfRecreatePending]),
    (Transition::TakeBack, &[SelfRecreatePending], &[Running]),
    (Transition::Finish, &[Running, SelfRecreatePending], &[Succeeded, Failed, RolledBack, Interrupted, Cancelled]),
    (Transition::Interrupt, &[Queued, Running], &[Interrupted]),
    (Transition::Fail, &[Queued, Running], &[Failed]),
    (Transition::Resume, &[Running], &[Running]),
];

/// A step's own changes: which statuses a step may be started or finished from (a step the
/// deploy did not plan — rollback — is added when it starts or finishes). A succeeded or skipped
/// step is never changed again; a running one may start again (resumed after a restart), a failed
/// one too (a rollback that a restart interrupted).
pub const STEP_TABLE: &[(&str, &[StepStatus], &[StepStatus])] = &[
    ("start", &[StepStatus::Pending, StepStatus::Running, StepStatus::Failed], &[StepStatus::Running]),
    (
        "finish",
        &[StepStatus::Pending, StepStatus::Running, StepStatus::Failed],
        &[StepStatus::Succeeded, StepStatus::Failed, StepStatus::Skipped],
    ),
];

/// `status IN (…)` for the statuses `change` may leave, from [`STEP_TABLE`].
fn step_from_sql(change: &str) -> String {
    let (_, from, _) = STEP_TABLE.iter().find(|(c, _, _)| *c == change).expect("a step change in the table");
    from.iter().map(|s| format!("'{}'", s.as_str())).collect::<Vec<_>>().join(",")
}

/// Called with each deploy that ends, once.
pub type EndHook = std::sync::Arc<dyn Fn(&DeployId, Phase) + Send + Sync>;

/// The phases `t` may leave from to reach `to`; None if the table does not allow `to` at all.
fn from_phases(t: Transition, to: Phase) -> Option<&'static [Phase]> {
    TABLE.iter().find(|(tt, _, tos)| *tt == t && tos.contains(&to)).map(|(_, from, _)| *from)
}

fn not_allowed(t: Transition, to: Phase) -> rusqlite::Error {
    rusqlite::Error::InvalidParameterName(format!("{t:?} cannot lead to {to}"))
}

/// Moves the deploy from one of the phases `t` leaves from to `to`, inside the caller's
/// transaction; whether it moved (it was in one of them).
fn move_phase(
    conn: &Connection,
    id: &DeployId,
    t: Transition,
    to: Phase,
    error: Option<&str>,
    superseded_by: Option<&DeployId>,
) -> rusqlite::Result<bool> {
    let from = from_phases(t, to).ok_or_else(|| not_allowed(t, to))?;
    let froms = from.iter().map(|p| format!("'{}'", p.as_str())).collect::<Vec<_>>().join(",");
    let now = now_rfc3339();
    let changed = if to.is_terminal() {
        conn.execute(
            &format!(
                "UPDATE deploys SET phase = ?1, finished_at = ?2, error = COALESCE(?3, error),
                     superseded_by = COALESCE(?4, superseded_by) WHERE id = ?5 AND phase IN ({froms})"
            ),
            params![to.as_str(), now, error, superseded_by.map(|d| d.as_str()), id.as_str()],
        )?
    } else if t == Transition::Start {
        conn.execute(
            &format!(
                "UPDATE deploys SET phase = ?1, started_at = COALESCE(started_at, ?2) WHERE id = ?3 AND phase IN ({froms})"
            ),
            params![to.as_str(), now, id.as_str()],
        )?
    } else {
        conn.execute(
            &format!("UPDATE deploys SET phase = ?1 WHERE id = ?2 AND phase IN ({froms})"),
            params![to.as_str(), id.as_str()],
        )?
    };
    Ok(changed == 1)
}

/// A step still running ends `failed` with `detail`; pending ones end `skipped` (keeping a detail
/// they already have).
fn close_open_steps_in(conn: &Connection, id: &DeployId, detail: &str) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE steps SET
             status = CASE status WHEN 'running' THEN 'failed' ELSE 'skipped' END,
             finished_at = CASE status WHEN 'running' THEN ?1 ELSE finished_at END,
             detail = CASE WHEN status = 'running' OR detail = '' THEN ?2 ELSE detail END
         WHERE deploy_id = ?3 AND status IN ('pending', 'running')",
        params![now_rfc3339(), detail, id.as_str()],
    )?;
    Ok(())
}

fn step_finish_in(
    conn: &Connection,
    id: &DeployId,
    step: StepName,
    status: StepStatus,
    detail: &str,
) -> rusqlite::Result<bool> {
    let ends_in = |c: &&(&str, &[StepStatus], &[StepStatus])| c.0 == "finish" && c.2.contains(&status);
    if !STEP_TABLE.iter().any(|c| ends_in(&c)) {
        return Ok(false);
    }
    let now = now_rfc3339();
    let changed = conn.execute(
        &format!(
            "INSERT INTO steps (deploy_id, idx, name, status, started_at, finished_at, detail)
             VALUES (?1, (SELECT COALESCE(MAX(idx), -1) + 1 FROM steps WHERE deploy_id = ?1), ?2, ?3, ?4, ?4, ?5)
             ON CONFLICT (deploy_id, name) DO UPDATE SET status = excluded.status, finished_at = excluded.finished_at,
                 detail = excluded.detail, started_at = COALESCE(steps.started_at, excluded.started_at)
             WHERE steps.status IN ({})",
            step_from_sql("finish")
        ),
        params![id.as_str(), step.as_str(), status.as_str(), now, detail],
    )?;
    Ok(changed == 1)
}

/// Supersedes `old` by `by` inside the caller's transaction (the push that replaces it is recorded
/// in the same one); the caller calls [`Store::ended`] with it once committed.
pub(super) fn supersede_in(conn: &Connection, old: &DeployId, by: &DeployId, why: &str) -> rusqlite::Result<bool> {
    let moved = move_phase(conn, old, Transition::Supersede, Cancelled, Some(why), Some(by))?;
    if moved {
        // A gate awaiting approval shows as running; it ends failed, the rest skipped.
        close_open_steps_in(conn, old, why)?;
    }
    Ok(moved)
}

impl Store {
    /// Registers `hook`, called once for every deploy that ends from now on.
    pub fn on_deploy_end(&self, hook: EndHook) {
        self.inner.end_hooks.lock().unwrap_or_else(|e| e.into_inner()).push(hook);
    }

    /// Tells the end hooks that `id` ended in `phase`; called after the transaction committed and
    /// with no lock held, so a hook may read the store.
    pub(super) fn ended(&self, id: &DeployId, phase: Phase) {
        let hooks: Vec<EndHook> = self.inner.end_hooks.lock().unwrap_or_else(|e| e.into_inner()).clone();
        for hook in hooks {
            hook(id, phase);
        }
    }

    /// Registers `hook`, called with every deploy a worker starts (`queued → running`, again after
    /// an approval), after the commit and with no lock held, like the end hooks.
    pub fn on_deploy_started(&self, hook: EndHook) {
        self.inner.phase_hooks.lock().unwrap_or_else(|e| e.into_inner()).push((Transition::Start, hook));
    }

    /// Registers `hook`, called with every deploy the migration gate parks (`awaiting_approval`).
    pub fn on_deploy_parked(&self, hook: EndHook) {
        self.inner.phase_hooks.lock().unwrap_or_else(|e| e.into_inner()).push((Transition::Park, hook));
    }

    /// Tells the hooks registered for `t` that `id` moved to `phase`.
    fn moved(&self, t: Transition, id: &DeployId, phase: Phase) {
        let hooks: Vec<EndHook> = (self.inner.phase_hooks.lock().unwrap_or_else(|e| e.into_inner()).iter())
            .filter(|(ht, _)| *ht == t)
            .map(|(_, h)| h.clone())
            .collect();
        for hook in hooks {
            hook(id, phase);
        }
    }

    /// One transition in one transaction, with `also` (step changes) when it moves.
    fn apply(
        &self,
        id: &DeployId,
        t: Transition,
        to: Phase,
        error: Option<&str>,
        also: impl FnOnce(&Connection) -> rusqlite::Result<()>,
    ) -> rusqlite::Result<bool> {
        let moved = {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let moved = move_phase(&tx, id, t, to, error, None)?;
            if moved {
                also(&tx)?;
            }
            tx.commit()?;
            moved
        };
        if moved {
            self.notify(id, super::Change::Phase);
        }
        if moved && to.is_terminal() {
            self.ended(id, to);
        }
        if moved && matches!(t, Transition::Start | Transition::Park) {
            self.moved(t, id, to);
        }
        Ok(moved)
    }

    /// `Start`: queued → running; false if it is no longer queued (a cancel won).
    pub fn start(&self, id: &DeployId) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Start, Running, None, |_| Ok(()))
    }

    /// `Park`: running → awaiting_approval; `step` stays running (it holds the deploy) with `detail`.
    pub fn park(&self, id: &DeployId, step: StepName, detail: &str) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Park, AwaitingApproval, None, |c| {
            c.execute(
                "UPDATE steps SET detail = ?1 WHERE deploy_id = ?2 AND name = ?3",
                params![detail, id.as_str(), step.as_str()],
            )
            .map(drop)
        })
    }

    /// `Approve`: awaiting_approval → queued, the migration gate succeeded with `detail`.
    pub fn approve(&self, id: &DeployId, detail: &str) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Approve, Queued, None, |c| {
            step_finish_in(c, id, StepName::MigrationGate, StepStatus::Succeeded, detail).map(drop)
        })
    }

    /// `Cancel`: a deploy no worker runs (queued, awaiting approval) → cancelled.
    pub fn cancel_waiting(&self, id: &DeployId, why: &str) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Cancel, Cancelled, Some(why), |c| close_open_steps_in(c, id, why))
    }

    /// `HandOff`: running → self_recreate_pending; the recreate step says to whom.
    pub fn hand_off(&self, id: &DeployId, detail: &str) -> rusqlite::Result<bool> {
        self.apply(id, Transition::HandOff, SelfRecreatePending, None, |c| {
            c.execute(
                "UPDATE steps SET detail = ?1 WHERE deploy_id = ?2 AND name = ?3",
                params![detail, id.as_str(), StepName::Recreate.as_str()],
            )
            .map(drop)
        })
    }

    /// `TakeBack`: self_recreate_pending → running, when the handoff did not happen.
    pub fn take_back(&self, id: &DeployId) -> rusqlite::Result<bool> {
        self.apply(id, Transition::TakeBack, Running, None, |_| Ok(()))
    }

    /// `Finish`: a running (or handed-off) deploy ends in `phase`. The steps in `closing` end as
    /// they say, in the same transaction (the step that ended the deploy, and the end the deploy
    /// came to are never seen apart); the other open steps are closed with `skip_detail`.
    pub fn finish(
        &self,
        id: &DeployId,
        phase: Phase,
        error: Option<&str>,
        closing: &[(StepName, StepStatus, &str)],
        skip_detail: &str,
    ) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Finish, phase, error, |c| {
            for (step, status, detail) in closing {
                step_finish_in(c, id, *step, *status, detail)?;
            }
            close_open_steps_in(c, id, skip_detail)
        })
    }

    /// `Interrupt`: stopped before its recreate; the running step fails with `msg`.
    pub fn interrupt(&self, id: &DeployId, msg: &str) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Interrupt, Interrupted, Some(msg), |c| close_open_steps_in(c, id, msg))
    }

    /// `Fail`: queued or running → failed, for a reason outside the steps (storage, registry).
    pub fn fail(&self, id: &DeployId, msg: &str) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Fail, Failed, Some(msg), |c| close_open_steps_in(c, id, msg))
    }

    /// `Resume`: checks that the deploy is still running, for a process that takes it over.
    pub fn resume(&self, id: &DeployId) -> rusqlite::Result<bool> {
        self.apply(id, Transition::Resume, Running, None, |_| Ok(()))
    }

    /// Starts a step; a step the deploy did not plan (rollback) is added at the end. A step started
    /// again (resumed after a restart) keeps its first start time.
    /// Whether it started: a succeeded or skipped step is not started again ([`STEP_TABLE`]).
    pub fn step_start(&self, id: &DeployId, step: StepName, detail: &str) -> rusqlite::Result<bool> {
        let changed = self.conn().execute(
            &format!(
                "INSERT INTO steps (deploy_id, idx, name, status, started_at, detail)
                 VALUES (?1, (SELECT COALESCE(MAX(idx), -1) + 1 FROM steps WHERE deploy_id = ?1), ?2, 'running', ?3, ?4)
                 ON CONFLICT (deploy_id, name) DO UPDATE SET status = 'running',
                     started_at = COALESCE(steps.started_at, excluded.started_at), finished_at = NULL,
                     detail = excluded.detail
                 WHERE steps.status IN ({})",
                step_from_sql("start")
            ),
            params![id.as_str(), step.as_str(), now_rfc3339(), detail],
        )?;
        Ok(changed == 1)
    }

    /// Ends a step; a step the deploy did not plan (rollback) is added at the end. Whether it
    /// changed: a succeeded or skipped step keeps its end ([`STEP_TABLE`]).
    pub fn step_finish(
        &self,
        id: &DeployId,
        step: StepName,
        status: StepStatus,
        detail: &str,
    ) -> rusqlite::Result<bool> {
        step_finish_in(&self.conn(), id, step, status, detail)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::model::{AppName, Trigger, TriggerSource};
    use crate::store::NewDeploy;

    const ALL: &[Transition] = &[
        Transition::Start,
        Transition::Park,
        Transition::Approve,
        Transition::Cancel,
        Transition::Supersede,
        Transition::HandOff,
        Transition::TakeBack,
        Transition::Finish,
        Transition::Interrupt,
        Transition::Fail,
        Transition::Resume,
    ];

    fn deploy_in(store: &Store, phase: Phase) -> DeployId {
        let id = store
            .insert_deploy(&NewDeploy {
                app: AppName::parse("hello").unwrap(),
                trigger: Trigger {
                    source: TriggerSource::Api,
                    delivery: None,
                    git_ref: "refs/heads/main".into(),
                    requested_commit: None,
                },
                approve_migrations: false,
                reason: None,
                steps: vec![StepName::GitPull, StepName::MigrationGate],
            })
            .unwrap()
            .deploy_id;
        // Set up directly: the test is of the transitions, not of how a deploy got here.
        store
            .conn()
            .execute("UPDATE deploys SET phase = ?1 WHERE id = ?2", params![phase.as_str(), id.as_str()])
            .unwrap();
        id
    }

    /// Runs `t` towards `to` on a deploy in `from`, as the named function for it would.
    fn attempt(store: &Store, t: Transition, from: Phase, to: Phase) -> rusqlite::Result<bool> {
        let id = deploy_in(store, from);
        let moved = if t == Transition::Supersede {
            let by = deploy_in(store, Queued);
            let mut conn = store.conn();
            let tx = conn.transaction()?;
            let moved = from_phases(t, to)
                .ok_or_else(|| not_allowed(t, to))
                .and_then(|_| supersede_in(&tx, &id, &by, "newer"))?;
            tx.commit()?;
            drop(conn);
            if moved {
                store.ended(&id, Cancelled);
            }
            moved
        } else {
            store.apply(&id, t, to, None, |_| Ok(()))?
        };
        if moved {
            assert_eq!(store.deploy(&id).unwrap().unwrap().phase, to, "{t:?} {from} → {to}");
        } else {
            assert_eq!(store.deploy(&id).unwrap().unwrap().phase, from, "a refused {t:?} changed nothing");
        }
        Ok(moved)
    }

    #[test]
    fn every_transition_in_the_table_works_and_every_other_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for &t in ALL {
            for &from in Phase::ALL {
                for &to in Phase::ALL {
                    let allowed = TABLE.iter().any(|(tt, fs, tos)| *tt == t && fs.contains(&from) && tos.contains(&to));
                    let result = attempt(&store, t, from, to);
                    match result {
                        Ok(moved) => assert_eq!(moved, allowed, "{t:?} from {from} to {to}"),
                        Err(e) => assert!(!allowed, "{t:?} from {from} to {to} is allowed but failed: {e}"),
                    }
                }
            }
        }
    }

    #[test]
    fn no_other_module_writes_a_phase_or_a_step() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut stack = vec![root];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| e == "rs") && !path.ends_with("store/lifecycle.rs") {
                    let text = std::fs::read_to_string(&path).unwrap().replace(char::is_whitespace, " ");
                    for needle in ["SET phase", "UPDATE steps", "INTO steps (deploy_id, idx, name, status, started_at"]
                    {
                        assert!(
                            !text.contains(needle),
                            "{} writes `{needle}`: go through store::lifecycle",
                            path.display()
                        );
                    }
                }
            }
        }
    }

    /// The lifecycle as the spec tells it, written out independently of `TABLE`.
    #[test]
    fn the_table_says_what_the_spec_says() {
        let expected: &[(Transition, Phase, Phase)] = &[
            (Transition::Start, Queued, Running),
            (Transition::Park, Running, AwaitingApproval),
            (Transition::Approve, AwaitingApproval, Queued),
            (Transition::Cancel, Queued, Cancelled),
            (Transition::Cancel, AwaitingApproval, Cancelled),
            (Transition::Supersede, Queued, Cancelled),
            (Transition::Supersede, AwaitingApproval, Cancelled),
            (Transition::HandOff, Running, SelfRecreatePending),
            (Transition::TakeBack, SelfRecreatePending, Running),
            (Transition::Interrupt, Queued, Interrupted),
            (Transition::Interrupt, Running, Interrupted),
            (Transition::Fail, Queued, Failed),
            (Transition::Fail, Running, Failed),
            (Transition::Resume, Running, Running),
        ];
        let mut table: Vec<(Transition, Phase, Phase)> = TABLE
            .iter()
            .flat_map(|(t, froms, tos)| froms.iter().flat_map(move |f| tos.iter().map(move |to| (*t, *f, *to))))
            .filter(|(t, _, _)| *t != Transition::Finish)
            .collect();
        let mut want = expected.to_vec();
        let key = |x: &(Transition, Phase, Phase)| format!("{:?} {} {}", x.0, x.1, x.2);
        table.sort_by_key(key);
        want.sort_by_key(key);
        assert_eq!(table, want);
        // Finish: from running or handed over, to every terminal phase, and nowhere else.
        for &from in Phase::ALL {
            for &to in Phase::ALL {
                let allowed =
                    TABLE.iter().any(|(t, f, tos)| *t == Transition::Finish && f.contains(&from) && tos.contains(&to));
                assert_eq!(
                    allowed,
                    matches!(from, Running | SelfRecreatePending) && to.is_terminal(),
                    "Finish {from} → {to}"
                );
            }
        }
    }

    #[test]
    fn start_and_park_hooks_hear_each_move_after_its_commit_and_never_a_refused_one() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let heard = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        for t in ["started", "parked"] {
            let (heard, reader) = (heard.clone(), store.clone());
            let hook: EndHook = std::sync::Arc::new(move |id: &DeployId, phase: Phase| {
                // After the commit: the store already says so.
                assert_eq!(reader.deploy(id).unwrap().unwrap().phase, phase);
                heard.lock().unwrap().push((t, phase));
            });
            match t {
                "started" => store.on_deploy_started(hook),
                _ => store.on_deploy_parked(hook),
            }
        }
        let id = deploy_in(&store, Queued);
        assert!(store.start(&id).unwrap());
        assert!(!store.start(&id).unwrap(), "already running");
        assert!(store.park(&id, StepName::MigrationGate, "approve").unwrap());
        assert!(store.approve(&id, "ok").unwrap());
        assert!(store.start(&id).unwrap());
        let want = vec![("started", Running), ("parked", AwaitingApproval), ("started", Running)];
        assert_eq!(*heard.lock().unwrap(), want);
    }

    #[test]
    fn the_named_methods_make_the_transitions_they_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = deploy_in(&store, Queued);
        let phase = |id: &DeployId| store.deploy(id).unwrap().unwrap().phase;
        assert!(store.start(&id).unwrap());
        assert_eq!(phase(&id), Running);
        assert!(store.park(&id, StepName::MigrationGate, "approve").unwrap());
        assert_eq!(phase(&id), AwaitingApproval);
        assert!(store.approve(&id, "ok").unwrap());
        assert_eq!(phase(&id), Queued);
        assert!(store.start(&id).unwrap() && store.resume(&id).unwrap());
        assert!(store.hand_off(&id, "to t").unwrap());
        assert_eq!(phase(&id), SelfRecreatePending);
        assert!(!store.resume(&id).unwrap(), "a handed-over deploy is not resumed as running");
        assert!(store.take_back(&id).unwrap());
        assert!(store.finish(&id, RolledBack, Some("back"), &[], "").unwrap());
        assert_eq!(phase(&id), RolledBack);
        let other = deploy_in(&store, AwaitingApproval);
        assert!(store.cancel_waiting(&other, "no").unwrap());
        assert_eq!(phase(&other), Cancelled);
    }

    #[test]
    fn a_finish_closes_the_step_that_ended_the_deploy_with_it_and_a_refused_one_closes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = deploy_in(&store, Running);
        store.step_start(&id, StepName::GitPull, "").unwrap();
        let closing = [(StepName::GitPull, StepStatus::Failed, "no such commit")];
        assert!(store.finish(&id, Failed, Some("git_pull failed"), &closing, "not run").unwrap());
        let d = store.deploy(&id).unwrap().unwrap();
        assert_eq!(d.phase, Failed);
        let pull = d.step(StepName::GitPull).unwrap();
        assert_eq!((pull.status, pull.detail.as_str()), (StepStatus::Failed, "no such commit"));
        assert_eq!(d.step(StepName::MigrationGate).unwrap().detail, "not run");
        let late = [(StepName::MigrationGate, StepStatus::Failed, "late")];
        assert!(!store.finish(&id, Succeeded, None, &late, "").unwrap(), "a second end is refused");
        assert_eq!(store.deploy(&id).unwrap().unwrap().step(StepName::MigrationGate).unwrap().detail, "not run");
    }

    #[test]
    fn every_step_change_in_the_step_table_works_and_every_other_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for &from in StepStatus::ALL {
            for (change, to) in
                [("start", StepStatus::Running)].into_iter().chain(StepStatus::ALL.iter().map(|&to| ("finish", to)))
            {
                let id = deploy_in(&store, Running);
                store
                    .conn()
                    .execute(
                        "UPDATE steps SET status = ?1 WHERE deploy_id = ?2 AND name = 'git_pull'",
                        params![from.as_str(), id.as_str()],
                    )
                    .unwrap();
                let changed = match change {
                    "start" => store.step_start(&id, StepName::GitPull, "").unwrap(),
                    _ => store.step_finish(&id, StepName::GitPull, to, "").unwrap(),
                };
                let allowed = STEP_TABLE.iter().any(|(c, f, t)| *c == change && f.contains(&from) && t.contains(&to));
                assert_eq!(changed, allowed, "{change} {from} → {to}");
                let now = store.deploy(&id).unwrap().unwrap().step(StepName::GitPull).unwrap().status;
                assert_eq!(now, if allowed { to } else { from }, "{change} {from} → {to}");
            }
        }
        // A step the deploy did not plan is added by its first change.
        let id = deploy_in(&store, Running);
        assert!(store.step_start(&id, StepName::Rollback, "").unwrap());
        assert_eq!(store.deploy(&id).unwrap().unwrap().steps.last().unwrap().name, StepName::Rollback);
    }

    #[test]
    fn a_terminal_phase_is_left_by_no_transition() {
        for (t, from, _) in TABLE {
            assert!(from.iter().all(|p| !p.is_terminal()), "{t:?} leaves a terminal phase");
        }
    }

    #[test]
    fn the_end_hook_sees_each_deploy_end_exactly_once_whatever_ends_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let seen: Arc<Mutex<Vec<(DeployId, Phase)>>> = Arc::default();
        let s = seen.clone();
        store.on_deploy_end(Arc::new(move |id, phase| s.lock().unwrap().push((id.clone(), phase))));
        let ends: Vec<DeployId> = vec![
            {
                let id = deploy_in(&store, Running);
                assert!(store.finish(&id, Succeeded, None, &[], "").unwrap());
                assert!(!store.finish(&id, Failed, Some("late"), &[], "").unwrap(), "a second end is refused");
                id
            },
            {
                let id = deploy_in(&store, Queued);
                assert!(store.cancel_waiting(&id, "cancelled while queued").unwrap());
                assert!(!store.interrupt(&id, "late").unwrap());
                id
            },
            {
                let id = deploy_in(&store, Running);
                assert!(store.interrupt(&id, "stopped").unwrap());
                id
            },
            {
                let id = deploy_in(&store, SelfRecreatePending);
                assert!(store.finish(&id, RolledBack, Some("back"), &[], "").unwrap());
                id
            },
            {
                let id = deploy_in(&store, Queued);
                assert!(store.fail(&id, "disk full").unwrap());
                id
            },
        ];
        // Transitions that do not end a deploy are not reported.
        let id = deploy_in(&store, Queued);
        assert!(store.start(&id).unwrap() && store.park(&id, StepName::MigrationGate, "approve").unwrap());
        assert!(store.approve(&id, "approved").unwrap());
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>(), ends);
        assert_eq!(
            seen.iter().map(|(_, p)| *p).collect::<Vec<_>>(),
            [Succeeded, Cancelled, Interrupted, RolledBack, Failed]
        );
    }
}
