//! `/health`, `/ready`, `/metrics`.

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

/// `GET /ready`: the node has joined and knows the leader of every group it replicates.
pub async fn get_ready(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    match not_ready_reason(s.groups(), s.controller()) {
        None => Ok(axum::Json(
            json!({"status": "ready", "node_id": s.node_id()}),
        )),
        Some(reason) => Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "NOT_READY",
            reason,
        )),
    }
}

/// `GET /metrics`: Prometheus text format.
pub async fn get_metrics(State(s): State<AppState>) -> impl IntoResponse {
    let text = s.metrics().render(s.groups(), &s.metadata());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}
