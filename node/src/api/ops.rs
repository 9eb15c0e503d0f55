//! `/health`, `/ready`, `/metrics`.

use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use serde_json::json;

use super::{ApiError, AppState};
use crate::manager::not_ready_reason;

/// `GET /health`: the process is alive and serving HTTP.
pub async fn get_health(State(s): State<AppState>) -> impl IntoResponse {
    axum::Json(json!({"status": "ok", "node_id": s.node_id()}))
}

/// How long `/ready` waits for the metadata catch-up before it answers "not yet".
const READY_SYNC_WAIT: Duration = Duration::from_secs(1);

/// `GET /ready`: the node has joined (caught up with the cluster's metadata once since it
/// started) and knows the leader of every group it replicates.
pub async fn get_ready(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let not_ready =
        |reason: String| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "NOT_READY", reason);
    if let Some(reason) = not_ready_reason(s.groups(), s.controller()) {
        return Err(not_ready(reason));
    }
    match tokio::time::timeout(READY_SYNC_WAIT, s.caught_up_with_metadata()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            return Err(not_ready(format!(
                "catching up with the cluster's metadata: {e}"
            )));
        }
        Err(_) => return Err(not_ready("catching up with the cluster's metadata".into())),
    }
    // What it caught up with may name partitions it has not started yet.
    match not_ready_reason(s.groups(), s.controller()) {
        None => Ok(axum::Json(
            json!({"status": "ready", "node_id": s.node_id()}),
        )),
        Some(reason) => Err(not_ready(reason)),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn get_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let text = s.metrics().render(s.groups(), &s.metadata());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
