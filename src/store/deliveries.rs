//! Webhook deliveries, one row per app a delivery concerned, and the lookups that recognise a
//! redelivery: the same delivery id, or the same ref and commit as a live or succeeded deploy.

use rusqlite::{params, OptionalExtension};

use super::deploys::ACTIVE;
use super::Store;
use crate::model::{AppName, CommitSha, Delivery, Deploy, DeployId};

impl Store {
    pub fn insert_delivery(&self, app: &AppName, d: &Delivery) -> rusqlite::Result<()> {
        self.conn().execute(
            "INSERT INTO deliveries (delivery_id, provider, event, app, repository, ref, after, outcome, reason, deploy_id, received_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![
                d.id,
                d.provider,
                d.event,
                app.as_str(),
                d.repository,
                d.git_ref,
                d.after,
                d.outcome,
                d.reason,
                d.deploy_id.as_ref().map(|i| i.as_str()),
                d.received_at
            ],
        )?;
        Ok(())
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

    /// The deploy an earlier delivery with this id queued for the app, if one did.
    pub fn deploy_of_delivery(&self, app: &AppName, delivery_id: &str) -> rusqlite::Result<Option<DeployId>> {
        let id: Option<String> = self
            .conn()
            .query_row(
                "SELECT deploy_id FROM deliveries WHERE delivery_id = ?1 AND app = ?2 AND deploy_id IS NOT NULL
                 ORDER BY seq LIMIT 1",
                params![delivery_id, app.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(id.and_then(|s| DeployId::parse(&s).ok()))
    }

    /// The newest deploy of `commit` from `git_ref` that is live or succeeded: a push of the same
    /// commit again (a replay) is answered with it instead of deploying anew.
    pub fn live_or_succeeded_deploy_of(
        &self,
        app: &AppName,
        git_ref: &str,
        commit: &CommitSha,
    ) -> rusqlite::Result<Option<Deploy>> {
        let id: Option<String> = self
            .conn()
            .query_row(
                &format!(
                    "SELECT id FROM deploys WHERE app = ?1 AND trigger_ref = ?2 AND requested_commit = ?3
                     AND (phase IN {ACTIVE} OR phase = 'succeeded') ORDER BY seq DESC LIMIT 1"
                ),
                params![app.as_str(), git_ref, commit.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        match id.and_then(|s| DeployId::parse(&s).ok()) {
            Some(id) => self.deploy(&id),
            None => Ok(None),
        }
    }
}
