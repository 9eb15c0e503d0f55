//! JSON ⇄ stored payloads. A string is stored as its UTF-8 bytes, any other JSON value as its
//! compact serialization, and with `"<field>_encoding": "base64"` a string carries raw bytes.
//! A fetch gives each payload back in the form it was produced in.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chat4all_storage::{Payload, PayloadFormat};
use serde_json::Value;

/// Turns a JSON key or value into a payload, honouring `encoding` (`utf8`, the default, or
/// `base64`). The error says what to fix.
pub fn to_payload(v: &Value, encoding: Option<&str>) -> Result<Payload, String> {
    match (encoding, v) {
        (None | Some("utf8"), Value::String(s)) => Ok(Payload {
            format: PayloadFormat::Text,
            bytes: s.as_bytes().to_vec(),
        }),
        (None | Some("utf8"), other) => {
            let bytes = serde_json::to_vec(other).map_err(|e| format!("cannot serialize: {e}"))?;
            Ok(Payload {
                format: PayloadFormat::Json,
                bytes,
            })
        }
        (Some("base64"), Value::String(s)) => B64
            .decode(s)
            .map(|bytes| Payload {
                format: PayloadFormat::Binary,
                bytes,
            })
            .map_err(|e| format!("invalid base64: {e}")),
        (Some("base64"), _) => Err("a base64-encoded payload must be a string".into()),
        (Some(other), _) => Err(format!(
            "unknown encoding {other:?}; use \"utf8\" or \"base64\""
        )),
    }
}

/// Turns a stored payload back into JSON, with the encoding to announce (`Some("base64")` for
/// binary payloads).
pub fn from_payload(p: &Payload) -> (Value, Option<&'static str>) {
    match p.format {
        PayloadFormat::Text => (
            Value::String(String::from_utf8_lossy(&p.bytes).into_owned()),
            None,
        ),
        PayloadFormat::Json => match serde_json::from_slice(&p.bytes) {
            Ok(v) => (v, None),
            // Only written from a parsed value, so this cannot fail unless the bytes changed;
            // show them rather than hide them.
            Err(_) => (Value::String(B64.encode(&p.bytes)), Some("base64")),
        },
        PayloadFormat::Binary => (Value::String(B64.encode(&p.bytes)), Some("base64")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_form_round_trips() {
        let cases = [
            (json!("héllo"), None),
            (json!({"a": [1, 2, {"b": null}]}), None),
            (json!(42), None),
            (json!(null), None),
            (json!("AAEC/w=="), Some("base64")),
        ];
        for (v, enc) in cases {
            let p = to_payload(&v, enc).expect("valid");
            assert_eq!(from_payload(&p), (v.clone(), enc), "{v}");
        }
    }

    #[test]
    fn strings_are_their_utf8_bytes_and_base64_is_raw_bytes() {
        assert_eq!(to_payload(&json!("ab"), None).expect("ok").bytes, b"ab");
        assert_eq!(
            to_payload(&json!("AAEC/w=="), Some("base64"))
                .expect("ok")
                .bytes,
            [0, 1, 2, 255]
        );
    }

    #[test]
    fn bad_encodings_are_refused_with_a_reason() {
        assert!(
            to_payload(&json!("not base64!"), Some("base64"))
                .expect_err("bad")
                .contains("base64")
        );
        assert!(to_payload(&json!(5), Some("base64")).is_err());
        assert!(
            to_payload(&json!("x"), Some("hex"))
                .expect_err("bad")
                .contains("unknown encoding")
        );
    }
}
