//! The schema, as an ordered list of migrations. `PRAGMA user_version` counts how many have run;
//! a new migration is appended here, never edited in place.

pub const MIGRATIONS: &[&str] = &[
    // 1: deploys, their steps and their logs.
    r#"
    CREATE TABLE deploys (
        seq                 INTEGER PRIMARY KEY AUTOINCREMENT,
        id                  TEXT NOT NULL UNIQUE,
        app                 TEXT NOT NULL,
        phase               TEXT NOT NULL,
        trigger_source      TEXT NOT NULL,
        trigger_delivery    TEXT,
        trigger_ref         TEXT NOT NULL,
        requested_commit    TEXT,
        approve_migrations  INTEGER NOT NULL DEFAULT 0,
        reason              TEXT,
        commit_before       TEXT,
        commit_sha          TEXT,
        created_at          TEXT NOT NULL,
        started_at          TEXT,
        finished_at         TEXT,
        images              TEXT NOT NULL DEFAULT '{}',
        previous_images     TEXT NOT NULL DEFAULT '{}',
        verify              TEXT,
        error               TEXT,
        recreate_started_at TEXT,
        superseded_by       TEXT
    );
    CREATE INDEX deploys_by_app ON deploys (app, seq);
    CREATE INDEX deploys_by_phase ON deploys (phase);
    CREATE TABLE steps (
        deploy_id   TEXT NOT NULL REFERENCES deploys (id),
        idx         INTEGER NOT NULL,
        name        TEXT NOT NULL,
        status      TEXT NOT NULL,
        started_at  TEXT,
        finished_at TEXT,
        detail      TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (deploy_id, name)
    );
    CREATE TABLE logs (
        deploy_id TEXT NOT NULL REFERENCES deploys (id),
        seq       INTEGER NOT NULL,
        ts        TEXT NOT NULL,
        stream    TEXT NOT NULL,
        line      TEXT NOT NULL,
        PRIMARY KEY (deploy_id, seq)
    );
    "#,
    // 2: webhook deliveries, and the lookups redelivery detection needs.
    r#"
    CREATE TABLE deliveries (
        seq         INTEGER PRIMARY KEY AUTOINCREMENT,
        delivery_id TEXT,
        provider    TEXT NOT NULL,
        event       TEXT NOT NULL,
        app         TEXT NOT NULL,
        repository  TEXT NOT NULL,
        ref         TEXT,
        after       TEXT,
        outcome     TEXT NOT NULL,
        reason      TEXT NOT NULL,
        deploy_id   TEXT,
        received_at TEXT NOT NULL
    );
    CREATE INDEX deliveries_by_app ON deliveries (app, seq);
    CREATE INDEX deliveries_by_delivery_id ON deliveries (delivery_id, app);
    CREATE INDEX deploys_by_requested_commit ON deploys (app, requested_commit);
    CREATE INDEX deploys_by_app_phase ON deploys (app, phase);
    "#,
    // 3: what a deploy resolved and what a restarted server needs to resume it: the Compose
    // project and files, the commit that ran before, and the detached recreate process.
    r#"
    ALTER TABLE deploys ADD COLUMN project TEXT;
    ALTER TABLE deploys ADD COLUMN compose_files TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE deploys ADD COLUMN previous_commit TEXT;
    ALTER TABLE deploys ADD COLUMN recreate_process TEXT;
    "#,
];
