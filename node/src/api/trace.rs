//! A trace id per request: taken from the caller's W3C `traceparent` (its trace-id part) or
//! `X-Request-ID`, or made here; every log line written while serving the request carries it
//! (the `request` span's `trace_id` field, in JSON logs under `span`), and the response
//! returns it as `X-Trace-Id`, so a client's report can be matched to the logs of every node
//! the request touched on the way in.

use axum::extract::Request;
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument;

/// The trace id of a `traceparent` header: `00-<32 hex>-<16 hex>-<2 hex>`.
fn from_traceparent(v: &str) -> Option<&str> {
    let mut parts = v.split('-');
    let (_version, trace) = (parts.next()?, parts.next()?);
    (trace.len() == 32 && trace.bytes().all(|b| b.is_ascii_hexdigit()) && trace != "0".repeat(32))
        .then_some(trace)
}

fn trace_id(req: &Request) -> String {
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok());
    if let Some(t) = header("traceparent").and_then(from_traceparent) {
        return t.to_ascii_lowercase();
    }
    if let Some(id) = header("x-request-id").filter(|id| crate::chat::is_valid_id(id)) {
        return id.to_string();
    }
    uuid::Uuid::new_v4().simple().to_string()
}

/// The middleware: runs the request inside a `request` span with its trace id.
pub async fn with_trace_id(req: Request, next: Next) -> Response {
    let id = trace_id(&req);
    let span = tracing::info_span!(
        "request",
        trace_id = %id,
        method = %req.method(),
        path = %req.uri().path(),
    );
    let mut response = next.run(req).instrument(span).await;
    if let Ok(v) = HeaderValue::from_str(&id) {
        response.headers_mut().insert("x-trace-id", v);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_gives_its_trace_id_and_nothing_else_does() {
        assert_eq!(
            from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        assert_eq!(from_traceparent("00-xyz-00f067aa0ba902b7-01"), None);
        assert_eq!(
            from_traceparent("00-00000000000000000000000000000000-00f067aa0ba902b7-01"),
            None
        );
        assert_eq!(from_traceparent("garbage"), None);
    }
}
