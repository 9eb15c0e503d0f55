//! Consumer groups: `POST /v1/groups/{group}/heartbeat`, `DELETE
//! /v1/groups/{group}/members/{member_id}`, `POST`/`GET /v1/groups/{group}/offsets`,
//! `PUT /v1/groups/{group}/config`, `GET /v1/groups`, `GET`/`DELETE /v1/groups/{group}`.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::{Path, State};
use axum::response::IntoResponse;
use serde_json::{Map, Value, json};

use super::{ApiError, AppState, parse_json};
use crate::error::ServiceError;
use crate::groups::model::{
    Heartbeat, JOIN_EPOCH, LEAVE_EPOCH, LEAVE_STATIC_EPOCH, OffsetReset, Tp,
};
use crate::groups::stored::Committed;
use crate::retention::now_ms;
use crate::service::{GroupOp, GroupReply, HeartbeatAnswer, MAX_METADATA_BYTES};

/// The fields of a body [`parse_json`] accepted (always an object).
fn object(body: &Value) -> Result<&Map<String, Value>, ApiError> {
    body.as_object()
        .ok_or_else(|| ApiError::bad_request("INVALID_JSON", "body must be a JSON object"))
}

fn only_fields(obj: &Map<String, Value>, allowed: &[&str]) -> Result<(), ApiError> {
    match obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        Some(k) => Err(ApiError::bad_request(
            "INVALID_FIELD",
            format!("unknown field {k:?}; allowed: {}", allowed.join(", ")),
        )),
        None => Ok(()),
    }
}

fn opt_str(obj: &Map<String, Value>, field: &str) -> Result<Option<String>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= 255 => Ok(Some(s.clone())),
        Some(_) => Err(ApiError::bad_request(
            "INVALID_FIELD",
            format!("{field} must be a non-empty string of at most 255 bytes"),
        )),
    }
}

fn opt_u64(obj: &Map<String, Value>, field: &str) -> Result<Option<u64>, ApiError> {
    match obj.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v.as_u64().map(Some).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_FIELD",
                format!("{field} must be a non-negative integer"),
            )
        }),
    }
}

/// `[{"topic","partition"}]`.
fn parse_tps(v: &Value, field: &str) -> Result<BTreeSet<Tp>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "INVALID_FIELD",
            format!("{field} must be a list of {{\"topic\": string, \"partition\": integer}}"),
        )
    };
    let list = v.as_array().ok_or_else(bad)?;
    list.iter()
        .map(|e| {
            let topic = e.get("topic").and_then(Value::as_str).ok_or_else(bad)?;
            let p = e
                .get("partition")
                .and_then(Value::as_u64)
                .and_then(|p| u32::try_from(p).ok())
                .ok_or_else(bad)?;
            Ok((topic.to_string(), p))
        })
        .collect()
}

fn tp_json(tps: &BTreeSet<Tp>) -> Vec<Value> {
    tps.iter()
        .map(|(t, p)| json!({"topic": t, "partition": p}))
        .collect()
}

fn parse_heartbeat(body: &Value) -> Result<Heartbeat, ApiError> {
    let obj = object(body)?;
    only_fields(
        obj,
        &[
            "member_id",
            "instance_id",
            "member_epoch",
            "topics",
            "rebalance_timeout_ms",
            "owned",
        ],
    )?;
    let member_epoch = obj
        .get("member_epoch")
        .and_then(Value::as_i64)
        .and_then(|e| i32::try_from(e).ok())
        .filter(|e| *e >= LEAVE_STATIC_EPOCH)
        .ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_MEMBER_EPOCH",
                "member_epoch is required: 0 to join, the epoch the last heartbeat returned to \
                 stay, -1 to leave, -2 for a static member's temporary leave",
            )
        })?;
    let topics = match obj.get("topics") {
        None | Some(Value::Null) => None,
        Some(Value::Array(a)) => {
            let mut set = BTreeSet::new();
            for t in a {
                let name = t.as_str().ok_or_else(|| {
                    ApiError::bad_request("INVALID_SUBSCRIPTION", "topics must be strings")
                })?;
                super::topics::validate_topic_name(name)?;
                set.insert(name.to_string());
            }
            Some(set)
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "INVALID_SUBSCRIPTION",
                "topics must be a list of topic names",
            ));
        }
    };
    let owned = match obj.get("owned") {
        None | Some(Value::Null) => None,
        Some(v) => Some(parse_tps(v, "owned")?),
    };
    Ok(Heartbeat {
        member_id: opt_str(obj, "member_id")?,
        instance_id: opt_str(obj, "instance_id")?,
        member_epoch,
        topics,
        rebalance_timeout_ms: opt_u64(obj, "rebalance_timeout_ms")?,
        owned,
    })
}

/// `POST /v1/groups/{group}/heartbeat`.
pub async fn post_heartbeat(
    State(s): State<AppState>,
    Path(group): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let hb = parse_heartbeat(&parse_json(body)?)?;
    if hb.member_epoch == JOIN_EPOCH
        && let Some(topics) = &hb.topics
    {
        for t in topics {
            if crate::groups::is_internal_topic(t) {
                return Err(ServiceError::InternalTopic(t.clone()).into());
            }
        }
    }
    let HeartbeatAnswer {
        reply,
        heartbeat_interval_ms,
        committed,
        auto_offset_reset,
    } = s.group_heartbeat(&group, hb).await?;
    let mut assignment = Vec::with_capacity(committed.len());
    for ((topic, p), c) in committed {
        let position = match c {
            Some(o) => Some(o),
            None => s.start_position(&topic, p, auto_offset_reset).await,
        };
        assignment.push(json!({
            "topic": topic,
            "partition": p,
            "committed_offset": c,
            "position": position,
        }));
    }
    Ok(axum::Json(json!({
        "member_id": reply.member_id,
        "member_epoch": reply.member_epoch,
        "heartbeat_interval_ms": heartbeat_interval_ms,
        "auto_offset_reset": auto_offset_reset,
        "assignment": assignment,
        "revoking": tp_json(&reply.revoking),
    })))
}

/// `DELETE /v1/groups/{group}/members/{member_id}`: the member leaves; its partitions go to
/// the others at once. `?static=true` keeps a static member's partitions for its next
/// incarnation until its session times out.
pub async fn delete_member(
    State(s): State<AppState>,
    Path((group, member)): Path<(String, String)>,
    axum::extract::Query(q): axum::extract::Query<BTreeMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let member_epoch = match q.get("static").map(String::as_str) {
        None | Some("false") => LEAVE_EPOCH,
        Some("true") => LEAVE_STATIC_EPOCH,
        Some(_) => {
            return Err(ApiError::bad_request(
                "INVALID_FIELD",
                "static must be true or false",
            ));
        }
    };
    let hb = Heartbeat {
        member_id: Some(member),
        member_epoch,
        ..Heartbeat::default()
    };
    let reply = s.group_heartbeat(&group, hb).await?.reply;
    Ok(axum::Json(json!({
        "member_id": reply.member_id,
        "member_epoch": reply.member_epoch,
    })))
}

/// `POST /v1/groups/{group}/offsets`.
pub async fn post_offsets(
    State(s): State<AppState>,
    Path(group): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = parse_json(body)?;
    let obj = object(&body)?;
    only_fields(obj, &["member_id", "member_epoch", "offsets"])?;
    let member_id = opt_str(obj, "member_id")?;
    let epoch = match obj.get("member_epoch") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            v.as_i64()
                .and_then(|e| i32::try_from(e).ok())
                .filter(|e| *e > 0)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "INVALID_MEMBER_EPOCH",
                        "member_epoch must be the positive epoch the last heartbeat returned",
                    )
                })?,
        ),
    };
    let member = match (member_id, epoch) {
        (Some(id), Some(e)) => Some((id, e)),
        (None, None) => None,
        _ => {
            return Err(ApiError::bad_request(
                "INVALID_MEMBER",
                "member_id and member_epoch go together",
            ));
        }
    };
    let list = obj
        .get("offsets")
        .and_then(Value::as_array)
        .filter(|l| !l.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("INVALID_OFFSETS", "\"offsets\" must be a non-empty array")
        })?;
    let now = now_ms();
    let mut offsets: Vec<(Tp, Committed)> = Vec::with_capacity(list.len());
    let mut seen = BTreeSet::new();
    for (i, e) in list.iter().enumerate() {
        let bad = |m: &str| {
            ApiError::bad_request("INVALID_OFFSETS", format!("offsets[{i}]: {m}"))
                .with_detail(json!({"index": i}))
        };
        let o = e.as_object().ok_or_else(|| bad("must be an object"))?;
        only_fields(o, &["topic", "partition", "offset", "metadata"])?;
        let topic = o
            .get("topic")
            .and_then(Value::as_str)
            .ok_or_else(|| bad("topic (a string) is required"))?;
        let partition = o
            .get("partition")
            .and_then(Value::as_u64)
            .and_then(|p| u32::try_from(p).ok())
            .ok_or_else(|| bad("partition (a non-negative integer) is required"))?;
        let offset = match o.get("offset") {
            Some(v) if v.is_u64() => v.as_u64().unwrap_or_default(),
            Some(v) if v.is_i64() => return Err(bad("offset must not be negative")),
            _ => return Err(bad("offset (a non-negative integer) is required")),
        };
        let metadata = match o.get("metadata") {
            None | Some(Value::Null) => None,
            Some(Value::String(m)) if m.len() <= MAX_METADATA_BYTES => Some(m.clone()),
            Some(Value::String(_)) => {
                return Err(bad(&format!(
                    "metadata is longer than {MAX_METADATA_BYTES} bytes"
                )));
            }
            Some(_) => return Err(bad("metadata must be a string")),
        };
        if !seen.insert((topic.to_string(), partition)) {
            return Err(bad("the same partition appears twice"));
        }
        // Unknown topics and partitions are refused before anything is written.
        s.partition_synced(topic, partition).await?;
        offsets.push((
            (topic.to_string(), partition),
            Committed {
                offset,
                metadata,
                committed_at_ms: now,
            },
        ));
    }
    match s
        .group_request(&group, GroupOp::Commit { member, offsets })
        .await?
    {
        GroupReply::Committed => Ok(axum::Json(json!({"committed": list.len()}))),
        other => Err(ServiceError::Internal(format!("commit answered {other:?}")).into()),
    }
}

fn offsets_json(offsets: &[(Tp, Committed)]) -> Vec<Value> {
    offsets
        .iter()
        .map(|((t, p), c)| {
            json!({
                "topic": t,
                "partition": p,
                "offset": c.offset,
                "metadata": c.metadata,
                "committed_at_ms": c.committed_at_ms,
            })
        })
        .collect()
}

/// `GET /v1/groups/{group}/offsets`.
pub async fn get_offsets(
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match s.group_request(&group, GroupOp::Offsets).await? {
        GroupReply::Offsets(o) => Ok(axum::Json(
            json!({"group": group, "offsets": offsets_json(&o)}),
        )),
        other => Err(ServiceError::Internal(format!("offsets answered {other:?}")).into()),
    }
}

/// `PUT /v1/groups/{group}/config` `{"session_timeout_ms"?, "auto_offset_reset"?}`: creates
/// the group if needed.
pub async fn put_config(
    State(s): State<AppState>,
    Path(group): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = parse_json(body)?;
    let obj = object(&body)?;
    only_fields(obj, &["session_timeout_ms", "auto_offset_reset"])?;
    let auto_offset_reset = match obj.get("auto_offset_reset") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r == "earliest" => Some(OffsetReset::Earliest),
        Some(Value::String(r)) if r == "latest" => Some(OffsetReset::Latest),
        Some(_) => {
            return Err(ApiError::bad_request(
                "INVALID_OFFSET_RESET",
                "auto_offset_reset must be \"earliest\" or \"latest\"",
            ));
        }
    };
    let op = GroupOp::Configure {
        session_timeout_ms: opt_u64(obj, "session_timeout_ms")?,
        auto_offset_reset,
    };
    match s.group_request(&group, op).await? {
        GroupReply::Configured(c) => Ok(axum::Json(json!({
            "group": group,
            "session_timeout_ms": c.session_timeout_ms,
            "heartbeat_interval_ms": c.heartbeat_interval_ms(),
            "auto_offset_reset": c.auto_offset_reset,
        }))),
        other => Err(ServiceError::Internal(format!("config answered {other:?}")).into()),
    }
}

/// `DELETE /v1/groups/{group}`: an empty group and its committed offsets.
pub async fn delete_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    match s.group_request(&group, GroupOp::Delete).await? {
        GroupReply::Deleted => Ok(axum::Json(json!({"group": group, "deleted": true}))),
        other => Err(ServiceError::Internal(format!("delete answered {other:?}")).into()),
    }
}

/// `GET /v1/groups`.
pub async fn list_groups(State(s): State<AppState>) -> Result<impl IntoResponse, ApiError> {
    let groups: Vec<Value> = s
        .list_groups()
        .await?
        .into_iter()
        .map(|(name, state, members)| json!({"group": name, "state": state, "members": members}))
        .collect();
    Ok(axum::Json(json!({ "groups": groups })))
}

/// `GET /v1/groups/{group}`: state, members, assignment and lag per partition.
pub async fn get_group(
    State(s): State<AppState>,
    Path(group): Path<String>,
) -> Result<impl IntoResponse, ApiError> {
    let view = match s.group_request(&group, GroupOp::Describe).await? {
        GroupReply::Described(v) => v,
        other => {
            return Err(ServiceError::Internal(format!("describe answered {other:?}")).into());
        }
    };
    let g = &view.group;
    let members: Vec<Value> = g
        .members
        .values()
        .map(|m| {
            json!({
                "member_id": m.id,
                "instance_id": m.instance_id,
                "member_epoch": m.epoch,
                "topics": m.topics,
                "assignment": tp_json(&m.assigned),
                "revoking": tp_json(&m.revoking),
                "target": tp_json(&g.target.get(&m.id).cloned().unwrap_or_default()),
                "left": m.left,
            })
        })
        .collect();
    // Every partition of a subscribed topic, and every partition with a committed offset.
    let committed: BTreeMap<&Tp, &Committed> = view.offsets.iter().map(|(tp, c)| (tp, c)).collect();
    let mut tps: BTreeSet<Tp> = view.offsets.iter().map(|(tp, _)| tp.clone()).collect();
    for (t, n) in &g.partition_counts {
        tps.extend((0..*n).map(|p| (t.clone(), p)));
    }
    let mut partitions = Vec::with_capacity(tps.len());
    for tp in &tps {
        let status = match s.partition(&tp.0, tp.1) {
            Ok(meta) => s.partition_status(&meta, 0).await,
            Err(_) => None,
        };
        let c = committed.get(tp).map(|c| c.offset);
        let hw = status.as_ref().map(|st| st.high_watermark);
        let lag = match (hw, c) {
            (Some(hw), Some(c)) => Some(hw.saturating_sub(c)),
            _ => None,
        };
        partitions.push(json!({
            "topic": tp.0,
            "partition": tp.1,
            "owner": g.owner(tp).map(|m| m.id.clone()),
            "committed_offset": c,
            "high_watermark": hw,
            "lag": lag,
        }));
    }
    Ok(axum::Json(json!({
        "group": group,
        "state": view.state,
        "group_epoch": g.epoch,
        "coordinator": view.coordinator,
        "session_timeout_ms": g.config.session_timeout_ms,
        "heartbeat_interval_ms": g.config.heartbeat_interval_ms(),
        "auto_offset_reset": g.config.auto_offset_reset,
        "members": members,
        "partitions": partitions,
    })))
}
