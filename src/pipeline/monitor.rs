//! The runtime monitor: looks at every app's containers on a timer, as `runtime-status` does, so
//! the overview's drift and health and the `kua_app_drift`/`kua_app_healthy` gauges say what runs
//! now without anyone asking — a container that died at night shows the next morning.
//!
//! An app that is deploying is left alone (what runs is in flux; the deploy's end says what it
//! left). A few apps are read at a time: on an SSH host every read goes through the host's one
//! master connection, and a host that does not answer costs its apps a timeout, not the others.

use std::time::Duration;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use super::queue::Queue;
use super::runtime::ReadError;
use crate::metrics::Metrics;

/// Apps read at once.
const CONCURRENCY: usize = 4;
/// The longest one app's read may take before its health is `unreachable`.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Reads every app's runtime every `every` until `stop`, the first round at once.
pub async fn monitor(queue: Queue, metrics: Metrics, every: Duration, stop: CancellationToken) {
    loop {
        tokio::select! {
            _ = round(&queue, &metrics) => {}
            _ = stop.cancelled() => return,
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}

/// One look at every app not deploying now.
pub async fn round(queue: &Queue, metrics: &Metrics) {
    let registry = queue.registry().clone();
    futures::stream::iter(registry.apps.values())
        .for_each_concurrent(CONCURRENCY, |app| async move {
            match queue.store().latest(&app.name) {
                Ok(Some(d)) if !d.phase.is_terminal() => return,
                Ok(_) => {}
                // The database's own health check reports this; nothing to say of the app.
                Err(_) => return,
            }
            match tokio::time::timeout(READ_LIMIT, queue.runtime_status(app)).await {
                Ok(Ok(status)) => metrics.observe_runtime(app.name.as_str(), &status),
                Ok(Err(ReadError::Store(_))) => {}
                Ok(Err(ReadError::Target(e))) => {
                    tracing::warn!(app = %app.name, host = %app.host.label(), "cannot read the app's containers: {e}");
                    metrics.runtime_unreadable(app.name.as_str());
                }
                Err(_) => {
                    tracing::warn!(app = %app.name, host = %app.host.label(), "the app's host did not answer within {} s", READ_LIMIT.as_secs());
                    metrics.runtime_unreadable(app.name.as_str());
                }
            }
        })
        .await;
}
