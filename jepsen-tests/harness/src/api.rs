//! The nodes' REST API as the harness uses it, and how an answer maps to an operation's outcome.
//! Only addresses in the harness's subnet are ever contacted.

use std::time::Duration;

use serde_json::{Value, json};

use crate::config::{API_PORT, node_ip};
use crate::schedule::NodeId;

/// How an HTTP exchange ended, as the history sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// 2xx, with the body.
    Ok(Value),
    /// The request definitely had no effect: a 4xx, or 503 `UNAVAILABLE`.
    Definite {
        /// HTTP status.
        status: u16,
        /// The error code, if the body had one.
        code: String,
    },
    /// It may or may not have had an effect: a timeout, a lost connection, 503
    /// `OUTCOME_UNKNOWN`, a 500, or anything unexpected.
    Unknown {
        /// What happened.
        reason: String,
    },
}

impl Answer {
    /// A short description for the history's `error` field.
    pub fn describe(&self) -> String {
        match self {
            Answer::Ok(_) => "ok".into(),
            Answer::Definite { status, code } => format!("{status} {code}"),
            Answer::Unknown { reason } => reason.clone(),
        }
    }
}

/// Classifies a status and error code (README, "Produce": 503 `UNAVAILABLE` wrote nothing,
/// 503 `OUTCOME_UNKNOWN` may have written; the node treats `INTERNAL` as indeterminate too).
pub fn classify(status: u16, code: &str, body: Value) -> Answer {
    match status {
        200..=299 => Answer::Ok(body),
        503 if code == "UNAVAILABLE" => Answer::Definite {
            status,
            code: code.to_owned(),
        },
        400..=499 => Answer::Definite {
            status,
            code: code.to_owned(),
        },
        _ => Answer::Unknown {
            reason: format!("{status} {code}"),
        },
    }
}

/// A client for the cluster's nodes.
#[derive(Clone)]
pub struct Api {
    http: reqwest::Client,
    timeout: Duration,
}

impl Api {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> anyhow::Result<Api> {
        // The workspace builds reqwest without a TLS crypto provider; the harness only speaks
        // plain HTTP, but reqwest refuses to build a client without one. Err: already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(timeout)
            .timeout(timeout)
            .pool_max_idle_per_host(8)
            .build()?;
        Ok(Api { http, timeout })
    }

    /// `http://10.77.0.K:8080` + path.
    pub fn url(node: NodeId, path: &str) -> String {
        format!("http://{}:{API_PORT}{path}", node_ip(node))
    }

    /// A GET on `node`.
    pub async fn get(&self, node: NodeId, path: &str) -> Answer {
        self.exchange(self.http.get(Api::url(node, path))).await
    }

    /// A GET on `node` with a shorter timeout (probes).
    pub async fn probe(&self, node: NodeId, path: &str, timeout: Duration) -> Answer {
        let timeout = timeout.min(self.timeout);
        self.exchange(self.http.get(Api::url(node, path)).timeout(timeout))
            .await
    }

    /// A POST of `body` on `node`.
    pub async fn post(&self, node: NodeId, path: &str, body: &Value) -> Answer {
        let request = self
            .http
            .post(Api::url(node, path))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.exchange(request).await
    }

    /// A POST of `body` on `node` with `Authorization: Bearer <token>` (the chat API).
    pub async fn post_as(&self, node: NodeId, path: &str, body: &Value, token: &str) -> Answer {
        let request = self
            .http
            .post(Api::url(node, path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string());
        self.exchange(request).await
    }

    /// A GET on `node` with `Authorization: Bearer <token>` (the chat API).
    pub async fn get_as(&self, node: NodeId, path: &str, token: &str) -> Answer {
        let request = self.http.get(Api::url(node, path)).bearer_auth(token);
        self.exchange(request).await
    }

    /// Opens a Server-Sent Events stream on `node` (with `Authorization: Bearer <token>`) that
    /// may run for `limit`: the response once it answered 2xx (read it with `chunk()`), else
    /// what it answered.
    pub async fn open_stream(
        &self,
        node: NodeId,
        path: &str,
        token: &str,
        limit: Duration,
    ) -> Result<reqwest::Response, String> {
        let request = self
            .http
            .get(Api::url(node, path))
            .bearer_auth(token)
            .header("accept", "text/event-stream")
            .timeout(limit);
        match request.send().await {
            Ok(response) if response.status().is_success() => Ok(response),
            Ok(response) => Err(format!("{}", response.status())),
            Err(e) => Err(format!("{e}")),
        }
    }

    /// A PUT of `body` on `node`.
    pub async fn put(&self, node: NodeId, path: &str, body: &Value) -> Answer {
        let request = self
            .http
            .put(Api::url(node, path))
            .header("content-type", "application/json")
            .body(body.to_string());
        self.exchange(request).await
    }

    /// A DELETE on `node`.
    pub async fn delete(&self, node: NodeId, path: &str) -> Answer {
        self.exchange(self.http.delete(Api::url(node, path))).await
    }

    async fn exchange(&self, request: reqwest::RequestBuilder) -> Answer {
        let response = match request.send().await {
            Ok(response) => response,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timeout"
                } else if e.is_connect() {
                    "connection refused or unreachable"
                } else {
                    "request failed"
                };
                return Answer::Unknown {
                    reason: format!("{what}: {e}"),
                };
            }
        };
        let status = response.status().as_u16();
        match response.bytes().await {
            Ok(bytes) => {
                let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
                let code = body["error"]["code"].as_str().unwrap_or("").to_owned();
                classify(status, &code, body)
            }
            // The status arrived but the body did not: for a 2xx the outcome is still unknown.
            Err(e) => Answer::Unknown {
                reason: format!("{status}, body lost: {e}"),
            },
        }
    }

    /// The produce request of one idempotent batch with one record.
    pub fn produce_body(partition: u32, value: u64, producer: (i64, i64), sequence: u64) -> Value {
        json!({
            "records": [{"value": value, "partition": partition}],
            "producer": {"id": producer.0, "epoch": producer.1, "sequence": sequence},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_map_to_definite_or_unknown_as_the_readme_says() {
        assert!(matches!(classify(200, "", json!({})), Answer::Ok(_)));
        assert!(matches!(classify(201, "", json!({})), Answer::Ok(_)));
        for (status, code) in [
            (503, "UNAVAILABLE"),
            (409, "OUT_OF_ORDER_SEQUENCE"),
            (409, "FENCED"),
            (400, "INVALID_RECORDS"),
            (404, "UNKNOWN_TOPIC"),
        ] {
            assert!(
                matches!(classify(status, code, Value::Null), Answer::Definite { .. }),
                "{status} {code}"
            );
        }
        for (status, code) in [
            (503, "OUTCOME_UNKNOWN"),
            (503, ""),
            (500, "INTERNAL"),
            (502, ""),
        ] {
            assert!(
                matches!(classify(status, code, Value::Null), Answer::Unknown { .. }),
                "{status} {code}"
            );
        }
    }

    #[test]
    fn urls_and_bodies_target_the_namespace_hosts() {
        assert_eq!(Api::url(2, "/ready"), "http://10.77.0.2:8080/ready");
        let body = Api::produce_body(1, 77, (5, 0), 3);
        assert_eq!(body["records"][0], json!({"value": 77, "partition": 1}));
        assert_eq!(
            body["producer"],
            json!({"id": 5, "epoch": 0, "sequence": 3})
        );
    }
}
