//! The request and response bodies of the admin API, shared by the server and the CLI client so
//! both sides agree by construction. The deploy object itself is [`crate::model::Deploy`].

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::model::{AppName, CommitSha, Delivery, Deploy, DeployId, Phase};
pub use crate::model::{ContainerStatus, LogLine, RuntimeStatus, ServiceStatus, StorageHealth};

/// `POST /api/v1/apps/{app}/deploy` body; every field optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<CommitSha>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub approve_migrations: bool,
    /// Shown with the deploy; at most 1000 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(max_length = 1000)]
    pub reason: Option<String>,
}

/// The 202 answer to a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployAccepted {
    pub deploy_id: DeployId,
    pub app: AppName,
    pub phase: Phase,
}

/// One line of `GET /api/v1/apps`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppSummary {
    pub app: AppName,
    pub host: String,
    pub branch: String,
    pub services: Vec<String>,
    pub last_deploy_id: Option<DeployId>,
    pub last_phase: Option<Phase>,
    pub last_commit: Option<CommitSha>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppList {
    pub apps: Vec<AppSummary>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeployList {
    pub app: AppName,
    pub deploys: Vec<Deploy>,
}

/// `GET /api/v1/deploys/{id}/logs[?after=SEQ&limit=N]` without `follow`: one page of the log.
/// The next page is `?after={next_after}`, worth asking for at once while `more` is true; once
/// `more` is false and `phase` is terminal, the client has the whole log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct LogPage {
    pub deploy_id: DeployId,
    /// The deploy's phase once the page was read.
    pub phase: Phase,
    pub lines: Vec<LogLine>,
    /// The last line's `seq` (the `after` asked for when the page is empty).
    #[serde(default)]
    pub next_after: i64,
    /// Lines past this page were already stored when it was read.
    #[serde(default)]
    pub more: bool,
}

/// One line of the `?follow=1` stream (NDJSON): a log line, or the last line saying how it ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(untagged)]
pub enum FollowItem {
    Line(LogLine),
    End { end: bool, phase: Phase },
}

/// `GET /healthz`: `ok` (200), or `degraded` (503) while storage fails, with what fails.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    #[serde(default)]
    pub storage: StorageHealth,
}

/// Every error answer: `{"error": {"code", "message"}}`, plus the deploy in the way for a 409.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deploy_id: Option<DeployId>,
}

/// One app's part of the answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct AppResult {
    pub app: AppName,
    /// `queued`, `duplicate` or `ignored`.
    pub outcome: String,
    pub reason: String,
    pub deploy_id: Option<DeployId>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded: Vec<DeployId>,
}

/// The 202 answer to an authenticated delivery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct WebhookAnswer {
    pub provider: String,
    pub event: String,
    pub delivery: Option<String>,
    pub results: Vec<AppResult>,
}

/// `GET /api/v1/apps/{app}/deliveries` answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct DeliveryList {
    pub app: AppName,
    pub deliveries: Vec<Delivery>,
}
