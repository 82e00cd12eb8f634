//! kua-deploy: the deploy orchestrator for Docker Compose apps.
//!
//! A release trigger (admin API or a forge's push webhook) becomes a deploy; a per-app worker runs the
//! pipeline `git_pull → migration_gate → build → (migrate) → recreate → verify → (rollback)` on
//! the app's host and records every step in SQLite, so a client can follow it to an honest end.
//!
//! # Layout
//! - [`model`]: checked newtypes (AppName, CommitSha, BranchName, ImageId), Phase, Step, Deploy, the log
//!   line and storage-health shapes, the `LogSink` trait — no I/O.
//! - [`config`]: the registry (`deploy-registry.json`): parsing and validation with file positions.
//! - [`host`]: run an argv on a host (`HostSpec`: local or OpenSSH) with a timeout, cancellation,
//!   process-group kill and redaction; knows nothing of the registry.
//! - [`metrics`]: the Prometheus metrics `serve --metrics-listen` exposes (counted where things
//!   happen, passed down explicitly) and the router of their own listener.
//! - [`git`]: typed wrapper over the git commands the pipeline needs.
//! - [`docker`]: typed wrappers over `docker` and `docker compose`.
//! - [`store`]: SQLite state: deploys, steps, logs, webhook deliveries; schema migrations run on open;
//!   the state dir's lock, the start-up check and backup, storage health; `lifecycle`, the one
//!   writer of a deploy's phase.
//! - [`target`]: the deploy target seam (`Target`: build, snapshot, apply, verify, restore, one-off
//!   run; `Targets` makes one per app; `SelfHandOff`/`HandOffWitness` for the self-deploy);
//!   `target::compose` is Docker Compose, `target::fake` the unit tests' in-memory runtime.
//! - [`selfupdate`]: the Docker side of deploying kua-deploy itself: discover its own container,
//!   start the transient container, and witness what it did.
//! - [`pipeline`]: the steps, one file each, the runner that orders them, the per-app queue, the
//!   transient container's recreate/verify/rollback and the self-deploy's completion at start.
//! - [`api`]: the axum router: admin API, push webhooks, auth, errors, the OpenAPI document; the
//!   listener that serves it (over TLS when given a certificate) within timeouts and a connection cap.
//! - [`web`]: the web page at `/`: login (admin or viewer token), sessions and CSRF, the overview,
//!   app and deploy pages with live updates (server-sent events).
//! - [`notify`]: commit statuses on the forge and notifications to webhook targets, sent from the
//!   store's lifecycle hooks, retried, never delaying a deploy.
//! - [`app`]: `serve`: opens the store, recovers, starts the queue and the router.
//! - [`cli`]: the client commands (`status`, `history`, `logs`, `approve`, `cancel`, `release`, `demo`,
//!   `health`) over the API types; named servers (`servers.json`) and how a client trusts HTTPS.
//!
//! Imports point one way, down. The layers, lowest first: `model`; `host`, `store`, `metrics`; `config`,
//! `git`, `docker`; `target`; `selfupdate`; `pipeline`; `api`; `web`; `notify`; `app`; `cli`. A unit test
//! (`layering.rs`) reads the sources and refuses an import that points up.

pub mod api;
pub mod app;
pub mod cli;
pub mod config;
pub mod docker;
pub mod git;
pub mod host;
#[cfg(test)]
mod layering;
pub mod metrics;
pub mod model;
pub mod notify;
pub mod pipeline;
pub mod selfupdate;
pub mod store;
pub mod target;
pub mod web;
