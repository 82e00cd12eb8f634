//! Deploys and their steps: creation, phase transitions (guarded, so a cancel and a finish cannot
//! both win), step progress, and startup recovery.

use rusqlite::{params, OptionalExtension, Row};

use super::Store;
use crate::model::{
    now_rfc3339, AppName, CommitSha, Deploy, DeployId, Images, Phase, ProjectName, Step, StepName, StepStatus, Trigger,
    TriggerSource, VerifyReport,
};

/// What a trigger asks for.
#[derive(Debug, Clone)]
pub struct NewDeploy {
    pub app: AppName,
    pub trigger: Trigger,
    pub approve_migrations: bool,
    pub reason: Option<String>,
    pub steps: Vec<StepName>,
}

const COLUMNS: &str = "id, app, phase, trigger_source, trigger_delivery, trigger_ref, requested_commit, reason, \
     commit_before, commit_sha, created_at, started_at, finished_at, images, previous_images, verify, error, superseded_by, \
     project, compose_files, previous_commit";

/// Phases in which a deploy holds its app: another trigger must wait or coalesce.
pub const ACTIVE: &str = "('queued','running','awaiting_approval','self_recreate_pending')";

fn row_to_deploy(r: &Row<'_>) -> rusqlite::Result<Deploy> {
    let text = |i: usize| -> rusqlite::Result<Option<String>> { r.get(i) };
    let bad = |i: usize, what: &str| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, format!("bad {what} in state").into())
    };
    let id: String = r.get(0)?;
    let app: String = r.get(1)?;
    let phase: String = r.get(2)?;
    let source: String = r.get(3)?;
    let commit = |i: usize| -> rusqlite::Result<Option<CommitSha>> {
        text(i)?.map(|s| CommitSha::parse(&s).map_err(|_| bad(i, "commit"))).transpose()
    };
    let images = |i: usize| -> rusqlite::Result<Images> {
        let s: String = r.get(i)?;
        serde_json::from_str(&s).map_err(|_| bad(i, "images"))
    };
    let verify: Option<VerifyReport> =
        text(15)?.map(|s| serde_json::from_str(&s)).transpose().map_err(|_| bad(15, "verify"))?;
    Ok(Deploy {
        deploy_id: DeployId::parse(&id).map_err(|_| bad(0, "id"))?,
        app: AppName::parse(&app).map_err(|_| bad(1, "app"))?,
        phase: Phase::parse(&phase).ok_or_else(|| bad(2, "phase"))?,
        trigger: Trigger {
            source: TriggerSource::parse(&source).ok_or_else(|| bad(3, "trigger"))?,
            delivery: text(4)?,
            git_ref: r.get(5)?,
            requested_commit: commit(6)?,
        },
        reason: text(7)?,
        commit_before: commit(8)?,
        commit: commit(9)?,
        created_at: r.get(10)?,
        started_at: text(11)?,
        finished_at: text(12)?,
        images: images(13)?,
        previous_images: images(14)?,
        verify,
        error: text(16)?,
        superseded_by: text(17)?.and_then(|s| DeployId::parse(&s).ok()),
        project: text(18)?.map(|s| ProjectName::parse(&s).map_err(|_| bad(18, "project"))).transpose()?,
        compose_files: serde_json::from_str(&r.get::<_, String>(19)?).map_err(|_| bad(19, "compose files"))?,
        previous_commit: commit(20)?,
        steps: Vec::new(),
    })
}

impl Store {
    /// Records a new deploy, `queued`, with its steps `pending`.
    pub fn insert_deploy(&self, new: &NewDeploy) -> rusqlite::Result<Deploy> {
        let id = {
            let mut conn = self.conn();
            let tx = conn.transaction()?;
            let id = insert_deploy_in(&tx, new)?;
            tx.commit()?;
            id
        };
        self.inner.events.fleet_changed();
        Ok(self.deploy(&id)?.expect("just inserted"))
    }

    pub fn deploy(&self, id: &DeployId) -> rusqlite::Result<Option<Deploy>> {
        let conn = self.conn();
        let found = conn
            .query_row(&format!("SELECT {COLUMNS} FROM deploys WHERE id = ?1"), [id.as_str()], row_to_deploy)
            .optional()?;
        match found {
            Some(mut deploy) => {
                deploy.steps = load_steps(&conn, id)?;
                Ok(Some(deploy))
            }
            None => Ok(None),
        }
    }

    fn deploys_where(&self, clause: &str, params: impl rusqlite::Params) -> rusqlite::Result<Vec<Deploy>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM deploys WHERE {clause}"))?;
        let rows: Vec<Deploy> = stmt.query_map(params, row_to_deploy)?.collect::<Result<_, _>>()?;
        rows.into_iter()
            .map(|mut d| {
                d.steps = load_steps(&conn, &d.deploy_id)?;
                Ok(d)
            })
            .collect()
    }

    /// The app's deploys, newest first.
    pub fn history(&self, app: &AppName, limit: usize) -> rusqlite::Result<Vec<Deploy>> {
        self.deploys_where("app = ?1 ORDER BY seq DESC LIMIT ?2", params![app.as_str(), limit as i64])
    }

    pub fn latest(&self, app: &AppName) -> rusqlite::Result<Option<Deploy>> {
        Ok(self.history(app, 1)?.pop())
    }

    pub fn last_succeeded(&self, app: &AppName) -> rusqlite::Result<Option<Deploy>> {
        Ok(self.deploys_where("app = ?1 AND phase = 'succeeded' ORDER BY seq DESC LIMIT 1", [app.as_str()])?.pop())
    }

    /// The deploys that hold the app now (queued, running, awaiting approval, handing over), oldest first.
    pub fn active(&self, app: &AppName) -> rusqlite::Result<Vec<Deploy>> {
        self.deploys_where(&format!("app = ?1 AND phase IN {ACTIVE} ORDER BY seq"), [app.as_str()])
    }

    /// Every deploy in `phase`, oldest first.
    pub fn in_phase(&self, phase: Phase) -> rusqlite::Result<Vec<Deploy>> {
        self.deploys_where("phase = ?1 ORDER BY seq", [phase.as_str()])
    }

    /// The oldest queued deploy of the app: what its worker runs next. One whose start could not
    /// be recorded is not taken again: it ends `failed` once storage works.
    pub fn next_queued(&self, app: &AppName) -> rusqlite::Result<Option<Deploy>> {
        let queued = self.deploys_where("app = ?1 AND phase = 'queued' ORDER BY seq", [app.as_str()])?;
        Ok(queued.into_iter().find(|d| !self.is_unrecorded(&d.deploy_id)))
    }

    /// Apps with queued deploys, for startup.
    pub fn apps_with_queued(&self) -> rusqlite::Result<Vec<AppName>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT DISTINCT app FROM deploys WHERE phase = 'queued'")?;
        let names: Vec<String> = stmt.query_map([], |r| r.get(0))?.collect::<Result<_, _>>()?;
        Ok(names.into_iter().filter_map(|n| AppName::parse(&n).ok()).collect())
    }

    pub fn set_commits(&self, id: &DeployId, before: Option<&CommitSha>, commit: &CommitSha) -> rusqlite::Result<()> {
        self.conn().execute(
            "UPDATE deploys SET commit_before = ?1, commit_sha = ?2 WHERE id = ?3",
            params![before.map(|c| c.as_str()), commit.as_str(), id.as_str()],
        )?;
        Ok(())
    }

    /// Records the Compose project and files the deploy resolved in its checkout.
    pub fn set_compose(&self, id: &DeployId, project: &ProjectName, files: &[String]) -> rusqlite::Result<()> {
        let files = serde_json::to_string(files).expect("strings serialize");
        self.conn().execute(
            "UPDATE deploys SET project = ?1, compose_files = ?2 WHERE id = ?3",
            params![project.as_str(), files, id.as_str()],
        )?;
        Ok(())
    }

    /// Records what ran before the recreate, in one write: the images, the commit whose Compose
    /// configuration they ran with, and when the recreate began. A deploy with
    /// `recreate_started_at` set has (maybe) touched the app: a restart resumes it.
    pub fn set_recreate_begun(
        &self,
        id: &DeployId,
        previous: &Images,
        previous_commit: Option<&CommitSha>,
        at: &str,
    ) -> rusqlite::Result<()> {
        let images = serde_json::to_string(previous).expect("plain data serializes");
        self.conn().execute(
            "UPDATE deploys SET previous_images = ?1, previous_commit = ?2, recreate_started_at = ?3 WHERE id = ?4",
            params![images, previous_commit.map(|c| c.as_str()), at, id.as_str()],
        )?;
        Ok(())
    }

    /// The detached `compose up` a deploy started (`pid:start-ticks`), or None once it ended.
    pub fn set_recreate_process(&self, id: &DeployId, process: Option<&str>) -> rusqlite::Result<()> {
        self.conn().execute("UPDATE deploys SET recreate_process = ?1 WHERE id = ?2", params![process, id.as_str()])?;
        Ok(())
    }

    pub fn recreate_process(&self, id: &DeployId) -> rusqlite::Result<Option<String>> {
        self.conn().query_row("SELECT recreate_process FROM deploys WHERE id = ?1", [id.as_str()], |r| r.get(0))
    }

    /// The commit the app's containers were last made from by a deploy that ended well: the commit
    /// of a succeeded deploy, or the one a rolled-back deploy returned to.
    pub fn running_commit(&self, app: &AppName) -> rusqlite::Result<Option<CommitSha>> {
        let found: Option<Option<String>> = self
            .conn()
            .query_row(
                "SELECT CASE phase WHEN 'succeeded' THEN commit_sha ELSE previous_commit END FROM deploys
                 WHERE app = ?1 AND phase IN ('succeeded', 'rolled_back') ORDER BY seq DESC LIMIT 1",
                [app.as_str()],
                |r| r.get(0),
            )
            .optional()?;
        Ok(found.flatten().and_then(|s| CommitSha::parse(&s).ok()))
    }

    pub fn set_images(&self, id: &DeployId, images: &Images) -> rusqlite::Result<()> {
        self.set_json(id, "images", images)
    }

    pub fn set_verify(&self, id: &DeployId, report: &VerifyReport) -> rusqlite::Result<()> {
        self.set_json(id, "verify", report)
    }

    fn set_json<T: serde::Serialize>(&self, id: &DeployId, column: &'static str, value: &T) -> rusqlite::Result<()> {
        let json = serde_json::to_string(value).expect("plain data serializes");
        self.conn().execute(&format!("UPDATE deploys SET {column} = ?1 WHERE id = ?2"), params![json, id.as_str()])?;
        Ok(())
    }

    /// When the deploy's recreate began, as recorded before it did.
    pub fn recreate_started_at(&self, id: &DeployId) -> rusqlite::Result<Option<String>> {
        self.conn().query_row("SELECT recreate_started_at FROM deploys WHERE id = ?1", [id.as_str()], |r| r.get(0))
    }

    /// Whether some deploy of the app checked `commit` out.
    pub fn was_deployed(&self, app: &AppName, commit: &CommitSha) -> rusqlite::Result<bool> {
        self.conn().query_row(
            "SELECT EXISTS (SELECT 1 FROM deploys WHERE app = ?1 AND commit_sha = ?2)",
            params![app.as_str(), commit.as_str()],
            |r| r.get(0),
        )
    }

    /// Whether the trigger pre-approved migrations.
    pub fn migrations_approved(&self, id: &DeployId) -> rusqlite::Result<bool> {
        self.conn().query_row("SELECT approve_migrations FROM deploys WHERE id = ?1", [id.as_str()], |r| r.get(0))
    }

    /// Startup recovery: a deploy left `running` belongs to a process that no longer exists. One
    /// stopped before its recreate began (the app untouched) becomes `interrupted`, and its running
    /// step `failed`, naming the step. One whose recreate began is returned in `resume`: only
    /// finishing it (verify, rollback) can say what the app runs.
    pub fn recover_orphans(&self) -> rusqlite::Result<Orphans> {
        let mut orphans = Orphans::default();
        for d in self.deploys_where("phase = 'running' AND recreate_started_at IS NULL ORDER BY seq", [])? {
            let step = d.running_step().map(|s| s.name.as_str()).unwrap_or("before its first step");
            let msg = format!("interrupted: kua-deploy stopped while the deploy was in step {step}");
            self.interrupt(&d.deploy_id, &msg)?;
            orphans.interrupted.push(d);
        }
        orphans.resume = self.deploys_where("phase = 'running' ORDER BY seq", [])?;
        Ok(orphans)
    }
}

/// What startup recovery found left `running` by a process that no longer exists.
#[derive(Debug, Default)]
pub struct Orphans {
    /// Stopped before recreate: now `interrupted`.
    pub interrupted: Vec<Deploy>,
    /// Stopped in recreate, verify or rollback: still `running`, to be resumed.
    pub resume: Vec<Deploy>,
}

/// Inserts a deploy, `queued`, with its steps `pending`, inside the caller's transaction.
pub(super) fn insert_deploy_in(tx: &rusqlite::Transaction<'_>, new: &NewDeploy) -> rusqlite::Result<DeployId> {
    let id = DeployId::new();
    tx.prepare_cached(
        "INSERT INTO deploys (id, app, phase, trigger_source, trigger_delivery, trigger_ref, requested_commit,
                              approve_migrations, reason, created_at)
         VALUES (?1, ?2, 'queued', ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        id.as_str(),
        new.app.as_str(),
        new.trigger.source.as_str(),
        new.trigger.delivery,
        new.trigger.git_ref,
        new.trigger.requested_commit.as_ref().map(|c| c.as_str()),
        new.approve_migrations,
        new.reason,
        now_rfc3339()
    ])?;
    let mut step =
        tx.prepare_cached("INSERT INTO steps (deploy_id, idx, name, status) VALUES (?1, ?2, ?3, 'pending')")?;
    for (idx, name) in new.steps.iter().enumerate() {
        step.execute(params![id.as_str(), idx as i64, name.as_str()])?;
    }
    Ok(id)
}

fn load_steps(conn: &rusqlite::Connection, id: &DeployId) -> rusqlite::Result<Vec<Step>> {
    let mut stmt = conn.prepare_cached(
        "SELECT name, status, started_at, finished_at, detail FROM steps WHERE deploy_id = ?1 ORDER BY idx",
    )?;
    let rows = stmt.query_map([id.as_str()], |r| {
        let name: String = r.get(0)?;
        let status: String = r.get(1)?;
        Ok((name, status, r.get(2)?, r.get(3)?, r.get(4)?))
    })?;
    let mut steps = Vec::new();
    for row in rows {
        let (name, status, started_at, finished_at, detail): (String, String, Option<String>, Option<String>, String) =
            row?;
        if let (Some(name), Some(status)) = (StepName::parse(&name), StepStatus::parse(&status)) {
            steps.push(Step { name, status, started_at, finished_at, detail });
        }
    }
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn new_deploy(app: &str) -> NewDeploy {
        NewDeploy {
            app: AppName::parse(app).unwrap(),
            trigger: Trigger {
                source: TriggerSource::Api,
                delivery: None,
                git_ref: "refs/heads/main".into(),
                requested_commit: None,
            },
            approve_migrations: false,
            reason: Some("test".into()),
            steps: vec![StepName::GitPull, StepName::Build],
        }
    }

    #[test]
    fn a_deploy_survives_reopening_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let id = Store::open(dir.path()).unwrap().insert_deploy(&new_deploy("hello")).unwrap().deploy_id;
        let reopened = Store::open(dir.path()).unwrap();
        let d = reopened.deploy(&id).unwrap().unwrap();
        assert_eq!(d.phase, Phase::Queued);
        assert_eq!(d.steps.len(), 2);
        assert_eq!(d.reason.as_deref(), Some("test"));
    }

    #[test]
    fn a_guarded_transition_happens_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.insert_deploy(&new_deploy("hello")).unwrap().deploy_id;
        assert!(store.cancel_waiting(&id, "cancelled").unwrap());
        assert!(!store.start(&id).unwrap());
        assert_eq!(store.deploy(&id).unwrap().unwrap().phase, Phase::Cancelled);
    }

    #[test]
    fn a_running_deploy_found_at_startup_becomes_interrupted_naming_its_step() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.insert_deploy(&new_deploy("hello")).unwrap().deploy_id;
        store.start(&id).unwrap();
        store.step_finish(&id, StepName::GitPull, StepStatus::Succeeded, "ok").unwrap();
        store.step_start(&id, StepName::Build, "building").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let orphans = store.recover_orphans().unwrap();
        assert_eq!(orphans.interrupted.len(), 1);
        assert!(orphans.resume.is_empty());
        let d = store.deploy(&id).unwrap().unwrap();
        assert_eq!(d.phase, Phase::Interrupted);
        assert!(d.error.as_deref().unwrap().contains("build"));
        assert_eq!(d.step(StepName::Build).unwrap().status, StepStatus::Failed);
        assert!(d.finished_at.is_some());
    }

    #[test]
    fn a_running_deploy_whose_recreate_began_is_left_running_for_resume() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.insert_deploy(&new_deploy("hello")).unwrap().deploy_id;
        store.start(&id).unwrap();
        store.set_recreate_begun(&id, &Images::new(), None, "2026-01-01T00:00:00Z").unwrap();
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        let orphans = store.recover_orphans().unwrap();
        assert!(orphans.interrupted.is_empty());
        assert_eq!(orphans.resume.iter().map(|d| d.deploy_id.clone()).collect::<Vec<_>>(), vec![id.clone()]);
        assert_eq!(store.deploy(&id).unwrap().unwrap().phase, Phase::Running);
    }

    #[test]
    fn an_unplanned_step_is_appended_after_the_others() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = store.insert_deploy(&new_deploy("hello")).unwrap().deploy_id;
        store.step_finish(&id, StepName::Rollback, StepStatus::Succeeded, "back").unwrap();
        let names: Vec<_> = store.deploy(&id).unwrap().unwrap().steps.iter().map(|s| s.name).collect();
        assert_eq!(names, vec![StepName::GitPull, StepName::Build, StepName::Rollback]);
    }
}
