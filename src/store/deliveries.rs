//! Webhook deliveries, one row per app a delivery concerned, and the lookups that recognise a
//! redelivery: the same delivery id, or the same ref and commit (the one a deploy asked for, or
//! the one it resolved) as a live deploy or the app's last success.

use rusqlite::{params, OptionalExtension};

use super::deploys::{insert_deploy_in, NewDeploy, ACTIVE};
use super::lifecycle::supersede_in;
use super::Store;
use crate::model::{AppName, Delivery, DeployId, Phase};

/// What recording a push did.
#[derive(Debug)]
pub enum PushRecord {
    /// A new deploy was queued; `superseded` are the deploys it replaced (now `cancelled`).
    Queued { deploy_id: DeployId, superseded: Vec<DeployId> },
    /// A redelivery: `deploy_id` is the deploy the first delivery caused.
    Duplicate { deploy_id: DeployId, reason: String },
}

impl Store {
    pub fn insert_delivery(&self, app: &AppName, d: &Delivery) -> rusqlite::Result<()> {
        insert_delivery_in(&self.conn(), app.as_str(), d)
    }

    /// The app's deliveries, newest first.
    pub fn deliveries(&self, app: &AppName, limit: usize) -> rusqlite::Result<Vec<Delivery>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT delivery_id, provider, event, repository, ref, after, outcome, reason, deploy_id, received_at
             FROM deliveries WHERE app = ?1 ORDER BY seq DESC LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![app.as_str(), limit as i64], |r| {
            let deploy: Option<String> = r.get(8)?;
            Ok(Delivery {
                id: r.get(0)?,
                provider: r.get(1)?,
                event: r.get(2)?,
                repository: r.get(3)?,
                git_ref: r.get(4)?,
                after: r.get(5)?,
                outcome: r.get(6)?,
                reason: r.get(7)?,
                deploy_id: deploy.and_then(|s| DeployId::parse(&s).ok()),
                received_at: r.get(9)?,
            })
        })?;
        rows.collect()
    }

    /// Records a push in one transaction, so no reader ever sees it half done (two deploys queued)
    /// and a burst costs one commit per delivery: answers a redelivery (same delivery id, or the
    /// same ref and commit — asked for or resolved — as a deploy that is live or the app's last
    /// success) with its deploy; otherwise queues `new`, supersedes the deploys still queued or
    /// awaiting approval, and records the delivery.
    pub fn record_push(&self, new: &NewDeploy, mut delivery: Delivery) -> rusqlite::Result<PushRecord> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let app = new.app.as_str();
        // A deploy counts as "already done" for a redelivery while it is live, or when it is what
        // the app last deployed successfully. After it failed (or was superseded, or a later
        // deploy succeeded — a push back to an earlier commit), the push deploys again.
        let counts = format!(
            "(d.phase IN {ACTIVE} OR d.id = (SELECT id FROM deploys WHERE app = ?2 AND phase = 'succeeded'
                                             ORDER BY seq DESC LIMIT 1))"
        );
        let earlier: Option<(String, String)> = match &delivery.id {
            Some(did) => tx
                .prepare_cached(&format!(
                    "SELECT d.id, d.phase FROM deliveries l JOIN deploys d ON d.id = l.deploy_id
                     WHERE l.delivery_id = ?1 AND l.app = ?2 AND {counts} ORDER BY l.seq LIMIT 1"
                ))?
                .query_row(params![did, app], |r| {
                    let phase: String = r.get(1)?;
                    Ok((r.get(0)?, format!("this delivery id was accepted before, and its deploy is {phase}")))
                })
                .optional()?,
            None => None,
        };
        // The commit a deploy asked for, or the one it resolved in git_pull (an API deploy without a
        // commit takes the branch tip): a push of what the app already runs is not a new release.
        // Only the live deploys and the last success are candidates, read through (app, phase).
        let earlier = match (earlier, &new.trigger.requested_commit) {
            (Some(e), _) => Some(e),
            (None, Some(commit)) => tx
                .prepare_cached(&format!(
                    "SELECT d.id, d.phase, d.trigger_source FROM deploys d
                     WHERE d.id IN (SELECT id FROM deploys WHERE app = ?2 AND phase IN {ACTIVE}
                                    UNION ALL
                                    SELECT id FROM (SELECT id FROM deploys WHERE app = ?2 AND phase = 'succeeded'
                                                    ORDER BY seq DESC LIMIT 1))
                       AND d.trigger_ref = ?1 AND (d.requested_commit = ?3 OR d.commit_sha = ?3)
                     ORDER BY d.seq DESC LIMIT 1"
                ))?
                .query_row(params![new.trigger.git_ref, app, commit.as_str()], |r| {
                    let (phase, source): (String, String) = (r.get(1)?, r.get(2)?);
                    Ok((
                        r.get(0)?,
                        if phase == "succeeded" {
                            format!("the app already runs this commit, from its last successful deploy (triggered by {source})")
                        } else {
                            format!("a deploy of this ref and commit (triggered by {source}) is already {phase}")
                        },
                    ))
                })
                .optional()?,
            (None, None) => None,
        };
        let result = if let Some((id, why)) = earlier {
            let deploy_id = DeployId::parse(&id).map_err(|e| rusqlite::Error::InvalidParameterName(e.to_string()))?;
            delivery.outcome = "duplicate".into();
            delivery.reason = format!("{why}: answered with deploy {deploy_id}");
            delivery.deploy_id = Some(deploy_id.clone());
            PushRecord::Duplicate { deploy_id, reason: delivery.reason.clone() }
        } else {
            let replaced: Vec<String> = tx
                .prepare_cached("SELECT id FROM deploys WHERE app = ?1 AND phase IN ('queued', 'awaiting_approval')")?
                .query_map([app], |r| r.get(0))?
                .collect::<Result<_, _>>()?;
            let deploy_id = insert_deploy_in(&tx, new)?;
            let msg = format!("superseded by deploy {deploy_id} of a newer push");
            let mut superseded = Vec::new();
            for old in replaced.iter().filter_map(|s| DeployId::parse(s).ok()) {
                if supersede_in(&tx, &old, &deploy_id, &msg)? {
                    superseded.push(old);
                }
            }
            delivery.outcome = "queued".into();
            delivery.reason = match superseded.as_slice() {
                [] => format!("queued deploy {deploy_id}"),
                ids => format!(
                    "queued deploy {deploy_id}, replacing {}",
                    ids.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
                ),
            };
            delivery.deploy_id = Some(deploy_id.clone());
            PushRecord::Queued { deploy_id, superseded }
        };
        insert_delivery_in(&tx, app, &delivery)?;
        tx.commit()?;
        drop(conn);
        if let PushRecord::Queued { superseded, .. } = &result {
            self.inner.events.fleet_changed();
            for id in superseded {
                self.notify(id, super::Change::Phase);
                self.ended(id, Phase::Cancelled);
            }
        }
        Ok(result)
    }
}

fn insert_delivery_in(conn: &rusqlite::Connection, app: &str, d: &Delivery) -> rusqlite::Result<()> {
    conn.prepare_cached(
        "INSERT INTO deliveries (delivery_id, provider, event, app, repository, ref, after, outcome, reason, deploy_id, received_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?
    .execute(params![
        d.id,
        d.provider,
        d.event,
        app,
        d.repository,
        d.git_ref,
        d.after,
        d.outcome,
        d.reason,
        d.deploy_id.as_ref().map(|i| i.as_str()),
        d.received_at
    ])?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{now_rfc3339, CommitSha, StepName, Trigger, TriggerSource};

    const X: &str = "1111111111111111111111111111111111111111";
    const Y: &str = "2222222222222222222222222222222222222222";

    fn sha(s: &str) -> CommitSha {
        CommitSha::parse(s).unwrap()
    }

    fn deploy(source: TriggerSource, requested: Option<&str>) -> NewDeploy {
        NewDeploy {
            app: AppName::parse("hello").unwrap(),
            trigger: Trigger {
                source,
                delivery: None,
                git_ref: "refs/heads/main".into(),
                requested_commit: requested.map(sha),
            },
            approve_migrations: false,
            reason: None,
            steps: vec![StepName::GitPull],
        }
    }

    /// A push of `after` under a fresh delivery id.
    fn push(store: &Store, after: &str) -> PushRecord {
        let delivery = Delivery {
            id: Some(crate::model::DeployId::new().to_string()),
            provider: "forgejo".into(),
            event: "push".into(),
            repository: "kua/hello".into(),
            git_ref: Some("refs/heads/main".into()),
            after: Some(after.into()),
            outcome: String::new(),
            reason: String::new(),
            deploy_id: None,
            received_at: now_rfc3339(),
        };
        store.record_push(&deploy(TriggerSource::Webhook, Some(after)), delivery).unwrap()
    }

    /// An API deploy without a commit that resolved `commit` in git_pull and is now `phase`.
    fn api_deploy(store: &Store, commit: &str, phase: Phase) -> DeployId {
        let id = store.insert_deploy(&deploy(TriggerSource::Api, None)).unwrap().deploy_id;
        store.start(&id).unwrap();
        store.set_commits(&id, None, &sha(commit)).unwrap();
        if phase != Phase::Running {
            store.finish(&id, phase, None, &[], "").unwrap();
        }
        id
    }

    #[test]
    fn a_deploy_superseded_by_a_newer_push_ends_cancelled_and_the_end_hook_sees_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let ended: std::sync::Arc<std::sync::Mutex<Vec<(DeployId, Phase)>>> = Default::default();
        let e = ended.clone();
        store.on_deploy_end(std::sync::Arc::new(move |id, phase| e.lock().unwrap().push((id.clone(), phase))));
        let PushRecord::Queued { deploy_id: first, .. } = push(&store, X) else { panic!("queued") };
        let PushRecord::Queued { superseded, .. } = push(&store, Y) else { panic!("queued") };
        assert_eq!(superseded, std::slice::from_ref(&first));
        let d = store.deploy(&first).unwrap().unwrap();
        assert_eq!(d.phase, Phase::Cancelled);
        assert!(d.superseded_by.is_some());
        assert_eq!(ended.lock().unwrap().clone(), [(first, Phase::Cancelled)]);
    }

    #[test]
    fn a_push_of_the_commit_an_api_deploy_resolved_is_a_duplicate_while_it_runs_and_once_it_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = api_deploy(&store, X, Phase::Running);
        match push(&store, X) {
            PushRecord::Duplicate { deploy_id, reason } => {
                assert_eq!(deploy_id, id);
                assert!(reason.contains("running") && reason.contains("api"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        store.finish(&id, Phase::Succeeded, None, &[], "").unwrap();
        match push(&store, X) {
            PushRecord::Duplicate { deploy_id, reason } => {
                assert_eq!(deploy_id, id);
                assert!(reason.contains("already runs this commit"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(push(&store, Y), PushRecord::Queued { .. }), "another commit deploys");
    }

    #[test]
    fn a_push_of_that_commit_deploys_after_its_deploy_failed_or_a_later_one_succeeded() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        api_deploy(&store, X, Phase::Failed);
        assert!(matches!(push(&store, X), PushRecord::Queued { .. }), "after a failure, the push deploys");

        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        api_deploy(&store, X, Phase::Succeeded);
        api_deploy(&store, Y, Phase::Succeeded);
        assert!(matches!(push(&store, X), PushRecord::Queued { .. }), "a push back to X is a revert");
    }
}
