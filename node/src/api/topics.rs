//! `POST /v1/topics`, `GET /v1/topics`, `GET /v1/topics/{name}`.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chat4all_raft::types::{ControllerCommand, ControllerResponse, NodeId, TopicMeta};
use serde_json::{Value, json};

use super::{ApiError, AppState, parse_json};
use crate::error::ServiceError;

/// Most partitions one topic may have.
pub const MAX_PARTITIONS: u64 = 1024;

/// Kafka's rule: 1 to 249 of `[a-zA-Z0-9._-]`, and not `.` or `..`.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    if is_legal_name(name) {
        Ok(())
    } else {
        Err(ApiError::bad_request(
            "INVALID_TOPIC_NAME",
            format!(
                "topic name {name:?} must be 1-249 characters of a-z, A-Z, 0-9, '.', '_', '-' (and not '.' or '..')"
            ),
        ))
    }
}

fn optional_positive(body: &Value, field: &str) -> Result<Option<i64>, ApiError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => match v.as_i64() {
            Some(n) if n > 0 => Ok(Some(n)),
            Some(-1) => Ok(None),
            _ => Err(ApiError::bad_request(
                "INVALID_RETENTION",
                format!("{field} must be a positive integer, -1 or null"),
            )),
        },
    }
}

/// Replicas for each partition: consecutive nodes in id order, starting one further for each
/// partition (and offset by the partitions already in the cluster), so replicas, and with them
/// the likely leaders, spread evenly over the nodes.
pub fn assign_replicas(
    nodes: &[NodeId],
    partitions: usize,
    rf: usize,
    offset: usize,
) -> Vec<Vec<NodeId>> {
    (0..partitions)
        .map(|p| {
            (0..rf)
                .map(|r| nodes[(offset + p + r) % nodes.len()])
                .collect()
        })
        .collect()
}

/// Kafka's rule for topic and group names: 1-249 of `a-z A-Z 0-9 . _ -`, not `.` or `..`.
pub fn is_legal_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// `POST /v1/topics`.
pub async fn post_topic(
    State(s): State<AppState>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = parse_json(body)?;
    let name = body.get("name").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request("INVALID_TOPIC_NAME", "\"name\" (a string) is required")
    })?;
    validate_topic_name(name)?;
    if crate::groups::is_internal_topic(name) {
        return Err(ApiError::bad_request(
            "INVALID_TOPIC_NAME",
            format!(
                "topic names starting with '__' are reserved for the node's own topics ({name:?})"
            ),
        ));
    }
    let partitions = body.get("partitions").and_then(Value::as_u64).unwrap_or(1);
    if partitions == 0 || partitions > MAX_PARTITIONS {
        return Err(ApiError::bad_request(
            "INVALID_PARTITIONS",
            format!("partitions must be 1..={MAX_PARTITIONS}"),
        ));
    }
    let node_ids: Vec<NodeId> = s.members().keys().copied().collect();
    let default_rf = node_ids.len().min(3) as u64;
    let rf = match body.get("replication_factor") {
        None | Some(Value::Null) => default_rf,
        Some(v) => v.as_u64().ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_REPLICATION_FACTOR",
                "replication_factor must be a positive integer",
            )
        })?,
    };
    if rf == 0 || rf as usize > node_ids.len() {
        return Err(ApiError::bad_request(
            "INVALID_REPLICATION_FACTOR",
            format!(
                "replication_factor {rf} must be between 1 and the cluster's node count ({})",
                node_ids.len()
            ),
        ));
    }
    let retention_ms = optional_positive(&body, "retention_ms")?;
    let retention_bytes = optional_positive(&body, "retention_bytes")?;
    let spec = s.topic_spec(
        name,
        partitions as usize,
        rf as usize,
        retention_ms,
        retention_bytes,
    );
    match s
        .controller_write(ControllerCommand::CreateTopic(spec), 0)
        .await?
    {
        ControllerResponse::TopicCreated(meta) => {
            Ok((StatusCode::CREATED, axum::Json(describe(&s, &meta).await)))
        }
        ControllerResponse::TopicExists => Err(ServiceError::TopicExists(name.to_string()).into()),
        other => Err(ServiceError::Internal(format!("controller answered {other:?}")).into()),
    }
}

/// `GET /v1/topics`.
pub async fn list_topics(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    // Every topic committed so far, also those created through another node a moment ago.
    let meta = s.synced_metadata().await?;
    let topics: Vec<Value> = meta
        .topics
        .values()
        .map(|t| {
            json!({
                "name": t.name,
                "partitions": t.partitions.len(),
                "replication_factor": t.replication_factor(),
                "retention_ms": t.retention_ms,
                "retention_bytes": t.retention_bytes,
            })
        })
        .collect();
    Ok(axum::Json(json!({ "topics": topics })))
}

/// `GET /v1/topics/{name}`.
pub async fn get_topic(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let meta = s.topic_synced(&name).await?;
    Ok(axum::Json(describe(&s, &meta).await))
}

async fn describe(s: &AppState, t: &TopicMeta) -> Value {
    let statuses =
        futures::future::join_all(t.partitions.iter().map(|p| s.partition_status(p, 0))).await;
    let partitions: Vec<Value> = t
        .partitions
        .iter()
        .zip(statuses)
        .enumerate()
        .map(|(i, (p, st))| {
            json!({
                "partition": i,
                "leader": st.as_ref().and_then(|s| s.leader),
                "replicas": p.replicas,
                "high_watermark": st.as_ref().map(|s| s.high_watermark),
                "log_start_offset": st.as_ref().map(|s| s.log_start_offset),
            })
        })
        .collect();
    json!({
        "name": t.name,
        "replication_factor": t.replication_factor(),
        "retention_ms": t.retention_ms,
        "retention_bytes": t.retention_bytes,
        "partitions": partitions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "chat.messages", "A_b-9", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "has space",
            "slash/",
            "ünïcode",
            &"x".repeat(250),
        ] {
            assert!(validate_topic_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn replicas_are_distinct_and_spread_evenly() {
        let nodes = [1, 2, 3];
        let a = assign_replicas(&nodes, 6, 3, 0);
        for r in &a {
            let mut d = r.clone();
            d.sort();
            d.dedup();
            assert_eq!(d.len(), 3, "{r:?}");
        }
        let firsts: Vec<_> = a.iter().map(|r| r[0]).collect();
        assert_eq!(firsts, [1, 2, 3, 1, 2, 3]);
        assert_eq!(assign_replicas(&nodes, 2, 1, 1), [vec![2], vec![3]]);
    }
}
