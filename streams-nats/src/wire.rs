//! How a message travels as a NATS message: payload as is, the rest in headers.

use std::str::FromStr;

use async_nats::header::{HeaderMap, HeaderName, HeaderValue, NATS_MESSAGE_ID};
use chrono::{DateTime, SecondsFormat, Utc};
use streams_core::{Message, CONTENT_TYPE_OCTET_STREAM};

/// Header carrying the message's key.
pub const HEADER_KEY: &str = "streams-key";
/// Header carrying the content type.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header carrying the message's time (RFC 3339, nanoseconds, UTC).
pub const HEADER_TIME: &str = "streams-time";
/// Reader header: how many times JetStream has delivered the message (1 the first time).
pub const HEADER_DELIVERED: &str = "streams-nats-delivered";
/// Reader header: the message's sequence number in its JetStream stream.
pub const HEADER_SEQUENCE: &str = "streams-nats-sequence";

/// Header names the driver sets itself; a message's own headers may not use them.
const RESERVED: [&str; 6] = [
    "Nats-Msg-Id",
    HEADER_KEY,
    HEADER_CONTENT_TYPE,
    HEADER_TIME,
    HEADER_DELIVERED,
    HEADER_SEQUENCE,
];

/// The NATS headers of `msg`: `Nats-Msg-Id` (JetStream's duplicate window uses it),
/// key, content type, time, then the message's own headers.
///
/// # Errors
///
/// Why the message cannot travel as NATS headers: a header name that is empty, holds
/// white space, a control character or `:`, or is one of the driver's; a value with a
/// line break; an id or key with a line break.
pub(crate) fn headers(msg: &Message) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    h.insert(NATS_MESSAGE_ID, value("the id", &msg.id)?);
    if let Some(key) = &msg.key {
        h.insert(HEADER_KEY, value("the key", key)?);
    }
    h.insert(
        HEADER_CONTENT_TYPE,
        value("the content type", &msg.content_type)?,
    );
    h.insert(
        HEADER_TIME,
        msg.time
            .to_rfc3339_opts(SecondsFormat::Nanos, true)
            .as_str(),
    );
    for (k, v) in &msg.headers {
        if RESERVED.iter().any(|r| r.eq_ignore_ascii_case(k)) {
            return Err(format!("header `{k}` is the NATS driver's own"));
        }
        if k.is_empty() {
            return Err("a header name is empty".to_owned());
        }
        let name = HeaderName::from_str(k).map_err(|_| {
            format!(
                "header name `{}` is not valid in NATS (printable ASCII without `:`)",
                k.escape_debug()
            )
        })?;
        h.insert(name, value(&format!("header `{k}`"), v)?);
    }
    Ok(h)
}

fn value(what: &str, v: &str) -> Result<HeaderValue, String> {
    HeaderValue::from_str(v)
        .map_err(|_| format!("{what} holds a line break, which NATS headers cannot carry"))
}

/// What JetStream told the reader about a delivery.
pub(crate) struct Delivery {
    pub(crate) sequence: u64,
    pub(crate) delivered: i64,
    pub(crate) published: DateTime<Utc>,
}

/// Rebuilds a message read from `stream`. Never fails: a message another client
/// published without our headers gets an id made of the stream and its sequence, the
/// octet-stream content type and the time JetStream stored it.
pub(crate) fn message(
    stream: &str,
    payload: bytes::Bytes,
    headers: Option<&HeaderMap>,
    delivery: &Delivery,
) -> Message {
    let mut id = None;
    let mut key = None;
    let mut content_type = None;
    let mut time = None;
    let mut own = streams_core::Headers::new();
    if let Some(headers) = headers {
        for (name, values) in headers.iter() {
            let Some(v) = values.last() else { continue };
            let v: &str = v.as_ref();
            match name.to_string().as_str() {
                "Nats-Msg-Id" => id = Some(v.to_owned()),
                HEADER_KEY => key = Some(v.to_owned()),
                HEADER_CONTENT_TYPE => content_type = Some(v.to_owned()),
                HEADER_TIME => {
                    time = DateTime::parse_from_rfc3339(v)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                }
                other => {
                    own.insert(other.to_owned(), v.to_owned());
                }
            }
        }
    }
    own.insert(HEADER_DELIVERED.to_owned(), delivery.delivered.to_string());
    own.insert(HEADER_SEQUENCE.to_owned(), delivery.sequence.to_string());
    let mut msg = Message::new(stream, payload);
    msg.id = id.unwrap_or_else(|| format!("nats-{stream}-{}", delivery.sequence));
    msg.key = key;
    msg.content_type = content_type.unwrap_or_else(|| CONTENT_TYPE_OCTET_STREAM.to_owned());
    msg.time = time.unwrap_or(delivery.published);
    msg.headers = own;
    msg.metadata
        .insert_i64(streams_core::DELIVERY_ATTEMPT, delivery.delivered);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delivery() -> Delivery {
        Delivery {
            sequence: 7,
            delivered: 2,
            published: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        }
    }

    #[test]
    fn a_message_survives_the_trip() {
        let sent = Message::new("orders.placed", &b"\x00\xffany bytes"[..])
            .with_key("acct-1")
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let h = headers(&sent).unwrap();
        let got = message("orders.placed", sent.data.clone(), Some(&h), &delivery());
        assert_eq!(got.id, sent.id);
        assert_eq!(got.key, sent.key);
        assert_eq!(got.content_type, "application/json");
        assert_eq!(got.time, sent.time);
        assert_eq!(got.data, sent.data);
        assert_eq!(got.headers["tenant"], "acme");
        assert_eq!(got.headers[HEADER_DELIVERED], "2");
        assert_eq!(got.headers[HEADER_SEQUENCE], "7");
    }

    #[test]
    fn a_foreign_message_gets_what_can_be_recovered() {
        let got = message("s", bytes::Bytes::from_static(b"raw"), None, &delivery());
        assert_eq!(got.id, "nats-s-7");
        assert_eq!(got.key, None);
        assert_eq!(got.content_type, CONTENT_TYPE_OCTET_STREAM);
        assert_eq!(got.time.timestamp(), 1_700_000_000);
    }

    #[test]
    fn headers_nats_cannot_carry_are_refused() {
        let bad = [
            Message::new("s", "x").with_header("a b", "1"),
            Message::new("s", "x").with_header("a:b", "1"),
            Message::new("s", "x").with_header("", "1"),
            Message::new("s", "x").with_header("ok", "line\nbreak"),
            Message::new("s", "x").with_header("Streams-Key", "reserved"),
            Message::new("s", "x").with_key("k\r\n"),
        ];
        for m in bad {
            assert!(headers(&m).is_err(), "{:?}", m.headers);
        }
    }
}
