//! `POST /v1/topics/{name}/records`, `GET /v1/topics/{name}/partitions/{p}/records`,
//! `POST /v1/producers`.

use std::collections::{BTreeMap, HashMap};

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use chat4all_raft::types::{ControllerCommand, ControllerResponse, ProducerBatch};
use chat4all_storage::StoredRecord;
use serde_json::{Map, Value, json};

use super::payload::{from_payload, to_payload};
use super::{ApiError, AppState, parse_json};
use crate::error::ServiceError;
use crate::partitioner::partition_for_key;
use crate::retention::now_ms;
use crate::service::{FetchRequest, ProduceBatch, fetch::MAX_WAIT_MS};

/// Default and largest `max_records` of a fetch.
const DEFAULT_MAX_RECORDS: u32 = 500;
const MAX_MAX_RECORDS: u32 = 10_000;

fn invalid_record(index: usize, message: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("INVALID_RECORD", format!("records[{index}]: {message}"))
        .with_detail(json!({"record": index}))
}

/// One record of a produce request, parsed, with the partition it goes to.
fn parse_record(
    index: usize,
    r: &Value,
    partitions: u32,
    sticky: u32,
    max_bytes: usize,
) -> Result<(u32, StoredRecord), ApiError> {
    let obj: &Map<String, Value> = r
        .as_object()
        .ok_or_else(|| invalid_record(index, "must be an object"))?;
    for k in obj.keys() {
        if ![
            "key",
            "value",
            "partition",
            "headers",
            "key_encoding",
            "value_encoding",
        ]
        .contains(&k.as_str())
        {
            return Err(invalid_record(index, format!("unknown field {k:?}")));
        }
    }
    let encoding = |field: &str| -> Result<Option<&str>, ApiError> {
        match obj.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(invalid_record(
                index,
                format!("{field} must be \"utf8\" or \"base64\""),
            )),
        }
    };
    let key = match obj.get("key") {
        None | Some(Value::Null) => None,
        Some(k) => Some(
            to_payload(k, encoding("key_encoding")?)
                .map_err(|e| invalid_record(index, format!("key: {e}")))?,
        ),
    };
    let value = obj
        .get("value")
        .ok_or_else(|| invalid_record(index, "\"value\" is required"))?;
    let value = to_payload(value, encoding("value_encoding")?)
        .map_err(|e| invalid_record(index, format!("value: {e}")))?;
    let headers = match obj.get("headers") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(h)) => h
            .iter()
            .map(|(k, v)| match v {
                Value::String(s) => Ok((k.clone(), s.as_bytes().to_vec())),
                _ => Err(invalid_record(
                    index,
                    format!("header {k:?} must be a string"),
                )),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(invalid_record(
                index,
                "headers must be an object of strings",
            ));
        }
    };
    let partition = match obj.get("partition") {
        None | Some(Value::Null) => match &key {
            Some(k) => partition_for_key(&k.bytes, partitions),
            None => sticky,
        },
        Some(p) => match p.as_u64() {
            Some(p) if p < u64::from(partitions) => p as u32,
            _ => {
                return Err(ApiError::bad_request(
                    "INVALID_PARTITION",
                    format!("records[{index}]: partition must be an integer in 0..{partitions}"),
                )
                .with_detail(json!({"record": index, "partitions": partitions})));
            }
        },
    };
    let record = StoredRecord {
        timestamp_ms: now_ms(),
        key,
        value,
        headers,
    };
    let size = record.size_bytes() as usize;
    if size > max_bytes {
        return Err(ServiceError::RecordTooLarge {
            index,
            size,
            limit: max_bytes,
        }
        .into());
    }
    Ok((partition, record))
}

fn parse_producer(v: &Value) -> Result<Option<ProducerBatch>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "INVALID_PRODUCER",
            "producer must be {\"id\": int, \"epoch\": int, \"sequence\": int >= 0}",
        )
    };
    match v {
        Value::Null => Ok(None),
        Value::Object(o) => {
            let id = o.get("id").and_then(Value::as_i64).ok_or_else(bad)?;
            let epoch = o
                .get("epoch")
                .and_then(Value::as_i64)
                .and_then(|e| i16::try_from(e).ok())
                .ok_or_else(bad)?;
            let seq = o
                .get("sequence")
                .and_then(Value::as_i64)
                .and_then(|s| i32::try_from(s).ok())
                .filter(|s| *s >= 0);
            Ok(Some(ProducerBatch {
                id,
                epoch,
                base_sequence: seq.ok_or_else(bad)?,
            }))
        }
        _ => Err(bad()),
    }
}

/// `POST /v1/topics/{name}/records`: answers once every record is committed by a majority.
pub async fn post_records(
    State(s): State<AppState>,
    Path(topic): Path<String>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let body = parse_json(body)?;
    if crate::groups::is_internal_topic(&topic) {
        return Err(ServiceError::InternalTopic(topic).into());
    }
    let meta = s.topic_synced(&topic).await?;
    let partitions = meta.partitions.len() as u32;
    let records = body
        .get("records")
        .and_then(Value::as_array)
        .filter(|r| !r.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("INVALID_RECORDS", "\"records\" must be a non-empty array")
        })?;
    let producer = parse_producer(body.get("producer").unwrap_or(&Value::Null))?;
    // Everything is validated before anything is written: a bad record fails the whole request.
    let sticky = s.next_unkeyed_partition(partitions);
    let max = s.limits().max_record_bytes;
    let parsed: Vec<(u32, StoredRecord)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| parse_record(i, r, partitions, sticky, max))
        .collect::<Result<_, _>>()?;
    let mut by_partition: BTreeMap<u32, Vec<(usize, StoredRecord)>> = BTreeMap::new();
    for (i, (p, r)) in parsed.into_iter().enumerate() {
        by_partition.entry(p).or_default().push((i, r));
    }
    if producer.is_some() && by_partition.len() > 1 {
        return Err(ApiError::bad_request(
            "PRODUCER_BATCH_SPANS_PARTITIONS",
            "an idempotent batch's sequence numbers belong to one partition: send one request per partition",
        ));
    }
    let writes = by_partition.into_iter().map(|(p, recs)| {
        let s = s.clone();
        let topic = topic.clone();
        async move {
            let (indexes, records): (Vec<usize>, Vec<StoredRecord>) = recs.into_iter().unzip();
            let res = s
                .produce_batch(
                    ProduceBatch {
                        topic,
                        partition: p,
                        records,
                        producer,
                    },
                    0,
                )
                .await;
            (p, indexes, res)
        }
    });
    let results = futures::future::join_all(writes).await;
    let mut offsets = vec![Value::Null; records.len()];
    let mut first_error: Option<ServiceError> = None;
    let mut written = Vec::new();
    for (p, indexes, res) in results {
        match res {
            Ok((base, _)) => {
                for (k, i) in indexes.iter().enumerate() {
                    offsets[*i] = json!({"partition": p, "offset": base + k as u64});
                }
                written.push(json!({"partition": p, "records": indexes}));
            }
            // An unknown outcome outranks a definite failure: the caller must not assume nothing happened.
            Err(e) => match &first_error {
                Some(prev) if !prev.is_definite() => {}
                _ => first_error = Some(e),
            },
        }
    }
    match first_error {
        None => Ok((StatusCode::OK, axum::Json(json!({ "offsets": offsets })))),
        Some(e) => {
            let mut err = ApiError::from(e);
            if !written.is_empty() {
                err = err.with_detail(json!({"committed": written}));
            }
            Err(err)
        }
    }
}

fn query_u64(q: &HashMap<String, String>, name: &str, code: &str) -> Result<Option<u64>, ApiError> {
    match q.get(name) {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => v.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(code, format!("{name}={v:?} must be a non-negative integer"))
        }),
    }
}

/// `GET /v1/topics/{name}/partitions/{partition}/records?offset=&max_records=&max_wait_ms=`.
pub async fn get_records(
    State(s): State<AppState>,
    Path((topic, partition)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<impl IntoResponse, ApiError> {
    let partition: u32 = partition.parse().map_err(|_| {
        ApiError::bad_request(
            "INVALID_PARTITION",
            format!("partition {partition:?} must be a non-negative integer"),
        )
    })?;
    let offset = query_u64(&q, "offset", "INVALID_OFFSET")?;
    let max_records = query_u64(&q, "max_records", "INVALID_MAX_RECORDS")?
        .unwrap_or(u64::from(DEFAULT_MAX_RECORDS));
    if max_records == 0 || max_records > u64::from(MAX_MAX_RECORDS) {
        return Err(ApiError::bad_request(
            "INVALID_MAX_RECORDS",
            format!("max_records must be 1..={MAX_MAX_RECORDS}"),
        ));
    }
    let max_wait_ms = query_u64(&q, "max_wait_ms", "INVALID_MAX_WAIT")?.unwrap_or(0);
    if max_wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(
            "INVALID_MAX_WAIT",
            format!("max_wait_ms must be at most {MAX_WAIT_MS}"),
        ));
    }
    let req = FetchRequest {
        topic,
        partition,
        offset,
        max_records: max_records as u32,
        max_wait_ms,
    };
    let res = s.fetch(req, 0).await?;
    let records: Vec<Value> = res
        .records
        .iter()
        .map(|(offset, r)| {
            let mut o = json!({"offset": offset, "timestamp": r.timestamp_ms, "key": Value::Null});
            if let Some(k) = &r.key {
                let (v, enc) = from_payload(k);
                o["key"] = v;
                if let Some(enc) = enc {
                    o["key_encoding"] = json!(enc);
                }
            }
            let (v, enc) = from_payload(&r.value);
            o["value"] = v;
            if let Some(enc) = enc {
                o["value_encoding"] = json!(enc);
            }
            let headers: Map<String, Value> = r
                .headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.clone(),
                        Value::String(String::from_utf8_lossy(v).into_owned()),
                    )
                })
                .collect();
            o["headers"] = Value::Object(headers);
            o
        })
        .collect();
    Ok(axum::Json(json!({
        "records": records,
        "high_watermark": res.high_watermark,
        "log_start_offset": res.log_start_offset,
    })))
}

/// `POST /v1/producers`: `{}` allocates a new idempotent producer (epoch 0); `{"id": n}` bumps
/// producer n's epoch, fencing its older sessions.
pub async fn post_producer(
    State(s): State<AppState>,
    body: Result<bytes::Bytes, axum::extract::rejection::BytesRejection>,
) -> Result<impl IntoResponse, ApiError> {
    let empty = body
        .as_ref()
        .map(|b| b.iter().all(u8::is_ascii_whitespace))
        .unwrap_or(false);
    let bump = if empty {
        None
    } else {
        match parse_json(body)?.get("id") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| {
                ApiError::bad_request("INVALID_PRODUCER", "id must be an integer")
            })?),
        }
    };
    match s
        .controller_write(ControllerCommand::AllocateProducer { bump }, 0)
        .await?
    {
        ControllerResponse::Producer { id, epoch } => Ok((
            StatusCode::CREATED,
            axum::Json(json!({"id": id, "epoch": epoch})),
        )),
        ControllerResponse::UnknownProducer => {
            Err(ServiceError::UnknownProducer(bump.unwrap_or_default()).into())
        }
        ControllerResponse::EpochExhausted => Err(ApiError::new(
            StatusCode::CONFLICT,
            "EPOCH_EXHAUSTED",
            "this producer id's epoch cannot be raised further; allocate a new producer",
        )),
        other => Err(ServiceError::Internal(format!("controller answered {other:?}")).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keyed_records_follow_kafka_and_explicit_partitions_are_checked() {
        let r = json!({"key": "foobar", "value": "v"});
        let (p, rec) = parse_record(0, &r, 12, 0, 1 << 20).expect("valid");
        assert_eq!(p, 1_357_151_166 % 12);
        assert_eq!(rec.key.expect("key").bytes, b"foobar");
        assert_eq!(
            parse_record(0, &json!({"value": 1, "partition": 2}), 3, 0, 1 << 20)
                .expect("ok")
                .0,
            2
        );
        assert_eq!(
            parse_record(0, &json!({"value": 1}), 3, 1, 1 << 20)
                .expect("ok")
                .0,
            1,
            "unkeyed → sticky"
        );
        let err = parse_record(4, &json!({"value": 1, "partition": 3}), 3, 0, 1 << 20)
            .expect_err("out of range");
        assert_eq!(err.code, "INVALID_PARTITION");
    }

    #[test]
    fn malformed_records_are_refused_with_their_index() {
        for (r, code) in [
            (json!({"key": "k"}), "INVALID_RECORD"),
            (json!("just a string"), "INVALID_RECORD"),
            (json!({"value": 1, "extra": 2}), "INVALID_RECORD"),
            (json!({"value": 1, "headers": {"h": 5}}), "INVALID_RECORD"),
            (
                json!({"value": "%%", "value_encoding": "base64"}),
                "INVALID_RECORD",
            ),
            (json!({"value": "x".repeat(100)}), "RECORD_TOO_LARGE"),
        ] {
            let err = parse_record(7, &r, 1, 0, 64).expect_err("invalid");
            assert_eq!(err.code, code, "{r}");
            assert!(
                err.message.contains('7') || code == "RECORD_TOO_LARGE",
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn producer_fields_are_checked() {
        assert_eq!(parse_producer(&Value::Null).expect("none"), None);
        let p = parse_producer(&json!({"id": 3, "epoch": 1, "sequence": 10}))
            .expect("ok")
            .expect("some");
        assert_eq!((p.id, p.epoch, p.base_sequence), (3, 1, 10));
        for bad in [
            json!({"id": 3}),
            json!({"id": 3, "epoch": 1, "sequence": -1}),
            json!({"id": 3, "epoch": 70000, "sequence": 0}),
            json!(5),
        ] {
            assert!(parse_producer(&bad).is_err(), "{bad}");
        }
    }
}
