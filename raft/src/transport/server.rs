//! The serving side: accept connections, read one request per stream, answer it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quinn::{Connection, Endpoint, RecvStream, SendStream};
use tokio_util::sync::CancellationToken;

use super::{MAX_HEADER_BYTES, PROTOCOL_VERSION, RpcHandler, RpcHeader};

pub(super) async fn accept_loop(
    endpoint: Endpoint,
    handler: Arc<dyn RpcHandler>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            _ = shutdown.cancelled() => break,
            incoming = endpoint.accept() => match incoming {
                Some(i) => i,
                None => break,
            },
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            // The handshake verifies the peer's certificate against the cluster CA: a peer
            // from another CA never gets a connection.
            match incoming.await {
                Ok(conn) => serve_connection(conn, handler, max_message_bytes, shutdown).await,
                Err(e) => tracing::warn!("refused a peer connection: {e}"),
            }
        });
    }
}

async fn serve_connection(
    conn: Connection,
    handler: Arc<dyn RpcHandler>,
    max_message_bytes: usize,
    shutdown: CancellationToken,
) {
    loop {
        let (send, recv) = tokio::select! {
            _ = shutdown.cancelled() => return,
            streams = conn.accept_bi() => match streams {
                Ok(s) => s,
                Err(_) => return, // closed or lost; the peer reconnects when it needs to
            },
        };
        let handler = handler.clone();
        tokio::spawn(serve_stream(send, recv, handler, max_message_bytes));
    }
}

async fn serve_stream(
    mut send: SendStream,
    mut recv: RecvStream,
    handler: Arc<dyn RpcHandler>,
    max: usize,
) {
    let request = match recv
        .read_to_end(max.saturating_add(4 + MAX_HEADER_BYTES as usize))
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let _ = refuse(&mut send, &format!("read request: {e}")).await;
            return;
        }
    };
    let (header, body) = match parse(request) {
        Ok(parsed) => parsed,
        Err(reason) => {
            let _ = refuse(&mut send, &reason).await;
            return;
        }
    };
    // Nobody waits for an answer after the sender's deadline, nor once the sender has stopped
    // listening (it dropped the call: a forwarding node that saw the leader change and
    // answered OUTCOME_UNKNOWN, a consumer that took another partition's long poll). The work
    // is dropped then, so a deposed leader that resumes does not pass on a write its
    // forwarder gave up on, and an abandoned long poll does not hold its place until timeout.
    let deadline = Duration::from_millis(u64::from(header.deadline_ms));
    let stopped = send.stopped();
    let response = tokio::select! {
        r = tokio::time::timeout(deadline, handler.handle(header, body)) => match r {
            Ok(r) => r,
            Err(_) => {
                let _ = send.reset(quinn::VarInt::from_u32(1));
                return;
            }
        },
        _ = stopped => return,
    };
    let mut out = Vec::with_capacity(1 + response.len());
    out.push(0u8);
    out.extend_from_slice(&response);
    if send.write_all(&out).await.is_ok() {
        let _ = send.finish();
    }
}

fn parse(request: Vec<u8>) -> Result<(RpcHeader, Bytes), String> {
    let request = Bytes::from(request);
    if request.len() < 4 {
        return Err("request shorter than its length prefix".into());
    }
    let len = u32::from_be_bytes([request[0], request[1], request[2], request[3]]);
    if len > MAX_HEADER_BYTES || request.len() < 4 + len as usize {
        return Err(format!("bad header length {len}"));
    }
    let (header, _) = bincode::serde::decode_from_slice::<RpcHeader, _>(
        &request[4..4 + len as usize],
        bincode::config::standard(),
    )
    .map_err(|e| format!("bad header: {e}"))?;
    if header.version != PROTOCOL_VERSION {
        return Err(format!(
            "protocol version {} spoken here is {PROTOCOL_VERSION}",
            header.version
        ));
    }
    Ok((header, request.slice(4 + len as usize..)))
}

async fn refuse(send: &mut SendStream, reason: &str) -> Result<(), quinn::WriteError> {
    let mut out = Vec::with_capacity(1 + reason.len());
    out.push(1u8);
    out.extend_from_slice(reason.as_bytes());
    send.write_all(&out).await?;
    let _ = send.finish();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::RpcKind;

    fn frame(header: &RpcHeader, body: &[u8]) -> Vec<u8> {
        let h =
            bincode::serde::encode_to_vec(header, bincode::config::standard()).unwrap_or_default();
        let mut v = (h.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&h);
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn parse_round_trips_and_refuses_garbage() {
        let header = RpcHeader {
            version: PROTOCOL_VERSION,
            group: 7,
            kind: RpcKind::Vote,
            deadline_ms: 500,
        };
        let parsed = parse(frame(&header, b"body"));
        assert_eq!(
            parsed.as_ref().map(|(h, b)| (*h, b.as_ref())),
            Ok((header, &b"body"[..]))
        );
        assert!(parse(vec![0, 0]).is_err());
        assert!(parse(vec![0xff, 0xff, 0xff, 0xff, 1]).is_err());
        assert!(parse(vec![0, 0, 0, 9, 1, 2]).is_err());
        let old = RpcHeader {
            version: PROTOCOL_VERSION + 1,
            ..header
        };
        assert!(parse(frame(&old, b"")).is_err_and(|e| e.contains("protocol version")));
    }
}
