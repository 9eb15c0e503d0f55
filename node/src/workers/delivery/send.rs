//! Sending one delivery: its text split into the platform's parts (or, for a WhatsApp contact
//! outside the 24-hour window, the channel's template), each attempt through the circuit
//! breaker and the rate limit, and retries of what may be retried.

use std::time::{Duration, Instant};

use chat4all_connectors::{Connector, ConnectorError, Platform, Template};

use super::{ChannelWorker, Outcome};
use crate::channels::retry::backoff;
use crate::channels::{LAST_INBOUND_NOTE, delivery_key, from_directory};
use crate::consumer::Consumer;
use crate::error::ServiceError;
use crate::retention::now_ms;

/// One platform call of a delivery.
pub(super) enum Part {
    /// A piece of the text.
    Text(String),
    /// The channel's template, with the text as its parameter.
    Template(Template),
}

/// How often a platform call in progress checks whether a heartbeat is due.
const KEEP_ALIVE_EVERY: Duration = Duration::from_millis(200);

/// The longest template parameter we send (WhatsApp's body parameters are short texts).
const MAX_TEMPLATE_PARAMETER_CHARS: usize = 1024;

impl ChannelWorker {
    /// What to send for `text`: its parts, or the channel's template when the platform
    /// allows no free text now (WhatsApp, more than 24 hours after the contact last wrote);
    /// an error when it allows neither.
    pub(super) async fn parts(
        &self,
        consumer: &mut Consumer,
        connector: &dyn Connector,
        contact: &str,
        text: &str,
    ) -> Result<Result<Vec<Part>, ConnectorError>, ServiceError> {
        // Only a platform that restricts free text costs a look-up.
        if !connector.free_text_allowed(None) {
            let key = delivery_key(&self.channel.name, contact);
            let last = loop {
                match self
                    .service
                    .delivery_note_read(&key, LAST_INBOUND_NOTE)
                    .await
                {
                    Ok(v) => break v.and_then(|v| v.parse::<i64>().ok()),
                    Err(e) => {
                        tracing::debug!(channel = %self.channel.name, "last inbound: {e}");
                        self.wait(consumer, super::PAUSE).await?;
                    }
                }
            };
            let since = last.map(|at| Duration::from_millis((now_ms() - at).max(0) as u64));
            if !connector.free_text_allowed(since) {
                let Some(configured) = &self.channel.template else {
                    return Ok(Err(ConnectorError::Rejected {
                        code: 131_047,
                        description: format!(
                            "the contact has not written in the last 24 hours, so {} takes only \
                             a template; set the channel's `template`",
                            from_directory(self.channel.platform)
                        ),
                    }));
                };
                let (name, language) = configured.split_once(':').unwrap_or((configured, "en_US"));
                return Ok(Ok(vec![Part::Template(Template {
                    name: name.to_string(),
                    language: language.to_string(),
                    body_parameters: vec![
                        text.chars().take(MAX_TEMPLATE_PARAMETER_CHARS).collect(),
                    ],
                })]));
            }
        }
        let parts = connector.split_text(text);
        if parts.is_empty() {
            return Ok(Err(ConnectorError::Rejected {
                code: 0,
                description: "the message has no text to send".into(),
            }));
        }
        Ok(Ok(parts.into_iter().map(Part::Text).collect()))
    }

    /// Sends `parts` after the first `skip`, retrying what may be retried.
    pub(super) async fn send(
        &mut self,
        consumer: &mut Consumer,
        connector: &dyn Connector,
        contact: &str,
        parts: &[Part],
        callback: &str,
        skip: usize,
    ) -> Result<Outcome, ServiceError> {
        let cfg = self.service.channels().config().clone();
        let mut sent = skip.min(parts.len());
        let mut remote = Vec::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            let error = match self
                .attempt(consumer, connector, contact, &parts[sent..], callback)
                .await
            {
                Ok(ids) => {
                    remote.extend(ids);
                    return Ok(Outcome::Sent(remote));
                }
                Err((n, ids, e)) => {
                    sent += n;
                    remote.extend(ids);
                    e
                }
            };
            if !error.is_retryable() || attempt >= cfg.max_attempts {
                return Ok(Outcome::Failed {
                    error,
                    attempts: attempt,
                    parts_sent: sent,
                });
            }
            self.count("retried");
            let wait = backoff(
                attempt,
                Duration::from_millis(cfg.backoff_base_ms),
                Duration::from_millis(cfg.backoff_max_ms),
                rand::random::<f64>(),
                error.retry_after(),
            );
            tracing::debug!(attempt, ?wait, "retrying: {error}");
            self.wait(consumer, wait).await?;
        }
    }

    /// One attempt at sending `parts` in order: their remote ids, or how many went out
    /// before the error.
    async fn attempt(
        &mut self,
        consumer: &mut Consumer,
        connector: &dyn Connector,
        contact: &str,
        parts: &[Part],
        callback: &str,
    ) -> Result<Vec<String>, (usize, Vec<String>, ConnectorError)> {
        let mut ids = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let now = Instant::now();
            let state = self.breaker.state(now);
            self.service
                .metrics()
                .connector_circuit
                .with_label_values(&[&self.channel.name])
                .set(state.gauge());
            if !self.breaker.allows(now) {
                let e = ConnectorError::Unavailable("the channel's circuit is open".into());
                return Err((i, ids, e));
            }
            if let Some(wait) = self.bucket.take(now) {
                tokio::time::sleep(wait).await;
            }
            let started = Instant::now();
            let call = async {
                match part {
                    Part::Text(t) => connector.send_text(contact, t, callback).await,
                    Part::Template(t) => connector.send_template(contact, t, callback).await,
                }
            };
            let res = self.keeping_alive(consumer, call).await;
            self.service
                .metrics()
                .connector_calls
                .with_label_values(&[&self.channel.name])
                .observe(started.elapsed().as_secs_f64());
            match res {
                Ok(sent) => {
                    self.breaker.on_answer();
                    ids.push(sent.remote_id);
                }
                Err(e) => {
                    if e.is_retryable() || e.is_indeterminate() {
                        self.breaker.on_failure(Instant::now());
                    } else {
                        self.breaker.on_answer();
                    }
                    return Err((i, ids, e));
                }
            }
        }
        Ok(ids)
    }

    /// Runs a platform call while keeping the member's session alive: a call can take up to
    /// the connector's timeout, and a session that ran out meanwhile would give the partition
    /// to a member that sends the record again, even one whose outcome is unknown. A
    /// partition revoked during the call is kept until its outcome is stored.
    async fn keeping_alive<T>(
        &self,
        consumer: &mut Consumer,
        call: impl std::future::Future<Output = T>,
    ) -> T {
        tokio::pin!(call);
        loop {
            tokio::select! {
                res = &mut call => return res,
                _ = tokio::time::sleep(KEEP_ALIVE_EVERY) => {
                    if let Err(e) = consumer.keep_alive().await {
                        tracing::debug!(channel = %self.channel.name, "heartbeat: {e}");
                    }
                }
            }
        }
    }

    /// Whether the platform reports on our messages by its own id only (Instagram reads), so
    /// that the id of each sent part must be remembered to match the report.
    pub(super) fn remembers_remote_ids(&self) -> bool {
        from_directory(self.channel.platform) == Platform::Instagram
    }
}
