//! How a message is a Redis stream entry: one field each for the payload, the id, key,
//! content type and time, and one per header.

use chrono::{DateTime, SecondsFormat, Utc};
use streams_core::{Message, CONTENT_TYPE_OCTET_STREAM};

/// Entry field holding the payload (any bytes).
pub const FIELD_DATA: &str = "data";
/// Entry field holding the message id.
pub const FIELD_ID: &str = "id";
/// Entry field holding the key, when the message has one.
pub const FIELD_KEY: &str = "key";
/// Entry field holding the content type.
pub const FIELD_CONTENT_TYPE: &str = "content-type";
/// Entry field holding the time (RFC 3339, nanoseconds, UTC).
pub const FIELD_TIME: &str = "time";
/// Prefix of the entry fields holding headers: `h:<name>`.
pub const FIELD_HEADER_PREFIX: &str = "h:";
/// Reader header: the entry's id in its stream (`<milliseconds>-<sequence>`).
pub const HEADER_ENTRY_ID: &str = "streams-redis-entry-id";
/// Reader header: how many times the group delivered the entry (1 the first time).
pub const HEADER_DELIVERED: &str = "streams-redis-delivered";

/// The `XADD` arguments after the entry id: field, value, field, value...
pub(crate) fn fields(msg: &Message, args: &mut redis::Cmd) {
    args.arg(FIELD_ID).arg(&msg.id);
    if let Some(key) = &msg.key {
        args.arg(FIELD_KEY).arg(key);
    }
    args.arg(FIELD_CONTENT_TYPE)
        .arg(&msg.content_type)
        .arg(FIELD_TIME)
        .arg(msg.time.to_rfc3339_opts(SecondsFormat::Nanos, true));
    for (k, v) in &msg.headers {
        args.arg(format!("{FIELD_HEADER_PREFIX}{k}")).arg(v);
    }
    args.arg(FIELD_DATA).arg(msg.data.as_ref());
}

/// Rebuilds a message from an entry. Never fails: an entry another client wrote gets
/// an id made of the stream and the entry id, the octet-stream content type and the
/// time of its entry id; fields that are not ours become headers.
pub(crate) fn message(
    stream: &str,
    entry_id: &str,
    fields: Vec<(Vec<u8>, Vec<u8>)>,
    delivered: u64,
) -> Message {
    let mut msg = Message::new(stream, bytes::Bytes::new());
    let mut id = None;
    let mut content_type = None;
    let mut time = None;
    let text = |v: Vec<u8>| {
        String::from_utf8(v).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
    };
    for (name, value) in fields {
        match name.as_slice() {
            b"data" => msg.data = bytes::Bytes::from(value),
            b"id" => id = Some(text(value)),
            b"key" => msg.key = Some(text(value)),
            b"content-type" => content_type = Some(text(value)),
            b"time" => {
                time = DateTime::parse_from_rfc3339(&text(value))
                    .ok()
                    .map(|t| t.with_timezone(&Utc))
            }
            other => {
                let name = text(other.to_vec());
                let name = name
                    .strip_prefix(FIELD_HEADER_PREFIX)
                    .map(str::to_owned)
                    .unwrap_or(name);
                msg.headers.insert(name, text(value));
            }
        }
    }
    msg.id = id.unwrap_or_else(|| format!("redis-{stream}-{entry_id}"));
    msg.content_type = content_type.unwrap_or_else(|| CONTENT_TYPE_OCTET_STREAM.to_owned());
    msg.time = time.unwrap_or_else(|| {
        entry_id
            .split('-')
            .next()
            .and_then(|ms| ms.parse::<i64>().ok())
            .and_then(DateTime::from_timestamp_millis)
            .unwrap_or_default()
    });
    msg.headers
        .insert(HEADER_ENTRY_ID.to_owned(), entry_id.to_owned());
    msg.headers
        .insert(HEADER_DELIVERED.to_owned(), delivered.to_string());
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(cmd: &redis::Cmd) -> Vec<(Vec<u8>, Vec<u8>)> {
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        args.chunks(2)
            .map(|c| (c[0].clone(), c[1].clone()))
            .collect()
    }

    #[test]
    fn a_message_survives_the_trip() {
        let sent = Message::new("orders", &b"\x00\xff bytes"[..])
            .with_key("acct-1")
            .with_header("tenant", "acme")
            .with_header("data", "a header named like a field")
            .with_content_type("application/json");
        let mut cmd = redis::Cmd::new();
        fields(&sent, &mut cmd);
        let got = message("orders", "1700000000000-3", pairs(&cmd), 2);
        assert_eq!(got.id, sent.id);
        assert_eq!(got.key, sent.key);
        assert_eq!(got.data, sent.data);
        assert_eq!(got.content_type, "application/json");
        assert_eq!(got.time, sent.time);
        assert_eq!(got.headers["tenant"], "acme");
        assert_eq!(got.headers["data"], "a header named like a field");
        assert_eq!(got.headers[HEADER_DELIVERED], "2");
        assert_eq!(got.headers[HEADER_ENTRY_ID], "1700000000000-3");
    }

    #[test]
    fn a_foreign_entry_gets_what_can_be_recovered() {
        let got = message(
            "s",
            "1700000000000-0",
            vec![(b"temperature".to_vec(), b"21".to_vec())],
            1,
        );
        assert_eq!(got.id, "redis-s-1700000000000-0");
        assert_eq!(got.key, None);
        assert!(got.data.is_empty());
        assert_eq!(got.headers["temperature"], "21");
        assert_eq!(got.time.timestamp_millis(), 1_700_000_000_000);
    }
}
