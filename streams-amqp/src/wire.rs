//! How a message travels as an AMQP message, and how streams and groups are named.

use chrono::{DateTime, SecondsFormat, Utc};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::BasicProperties;
use streams_core::{Error, Message, Result, CONTENT_TYPE_OCTET_STREAM};

/// Header carrying the message's key.
pub const HEADER_KEY: &str = "streams-key";
/// Header carrying the message's time (RFC 3339, nanoseconds; the AMQP timestamp
/// property has whole seconds).
pub const HEADER_TIME: &str = "streams-time";
/// Reader header: how many times the message has been delivered (1 the first time;
/// counted by quorum queues, at least 2 for a redelivery on classic ones).
pub const HEADER_DELIVERED: &str = "streams-amqp-delivered";

/// The exchange of a stream: its name, as it is.
///
/// # Errors
///
/// [`Error::Invalid`] for an empty name, one over 255 bytes, or one starting with
/// `amq.` (reserved by the broker).
pub fn exchange_name(stream: &str) -> Result<String> {
    check("stream", stream)?;
    Ok(stream.to_owned())
}

/// The queue of a consumer group: `<stream>::<group>`.
///
/// # Errors
///
/// As [`exchange_name`], for the stream, the group and the whole name.
pub fn queue_name(stream: &str, group: &str) -> Result<String> {
    check("stream", stream)?;
    if group.is_empty() {
        return Err(Error::invalid("read task", "the consumer group is empty"));
    }
    let name = format!("{stream}::{group}");
    check("queue", &name)?;
    Ok(name)
}

fn check(what: &str, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid(
            "AMQP name",
            format!("the {what} name is empty"),
        ));
    }
    if name.len() > 255 {
        return Err(Error::invalid(
            "AMQP name",
            format!("the {what} name is {} bytes, AMQP allows 255", name.len()),
        ));
    }
    if name.starts_with("amq.") {
        return Err(Error::invalid(
            "AMQP name",
            format!("the {what} name `{name}` starts with `amq.`, which the broker reserves"),
        ));
    }
    Ok(())
}

/// The properties of `msg`: message id, content type, persistent delivery, timestamp,
/// and the headers (key, time, the message's own).
pub(crate) fn properties(msg: &Message) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in &msg.headers {
        headers.insert(
            ShortString::from(k.as_str()),
            AMQPValue::LongString(LongString::from(v.as_str())),
        );
    }
    if let Some(key) = &msg.key {
        headers.insert(
            HEADER_KEY.into(),
            AMQPValue::LongString(LongString::from(key.as_str())),
        );
    }
    headers.insert(
        HEADER_TIME.into(),
        AMQPValue::LongString(LongString::from(
            msg.time.to_rfc3339_opts(SecondsFormat::Nanos, true),
        )),
    );
    BasicProperties::default()
        .with_message_id(msg.id.as_str().into())
        .with_content_type(msg.content_type.as_str().into())
        .with_delivery_mode(2)
        .with_timestamp(u64::try_from(msg.time.timestamp()).unwrap_or_default())
        .with_headers(headers)
}

/// Why a message cannot travel as AMQP: a header name over 255 bytes (AMQP short
/// strings), or the id or content type over 255 bytes.
pub(crate) fn unsendable(msg: &Message) -> Option<String> {
    if msg.id.len() > 255 {
        return Some("the message id is over 255 bytes, AMQP's limit".into());
    }
    if msg.content_type.len() > 255 {
        return Some("the content type is over 255 bytes, AMQP's limit".into());
    }
    msg.headers.keys().find(|k| k.len() > 255).map(|k| {
        format!(
            "header name `{}…` is over 255 bytes",
            k.chars().take(16).collect::<String>()
        )
    })
}

fn value_text(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::LongLongInt(i) => Some(i.to_string()),
        AMQPValue::LongInt(i) => Some(i.to_string()),
        AMQPValue::LongUInt(i) => Some(i.to_string()),
        AMQPValue::ShortInt(i) => Some(i.to_string()),
        AMQPValue::ShortUInt(i) => Some(i.to_string()),
        AMQPValue::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}

/// Rebuilds a message from a delivery. Never fails: a message another client published
/// without our properties gets a made-up id, the octet-stream content type and its
/// timestamp (or now).
pub(crate) fn message(
    stream: &str,
    data: Vec<u8>,
    props: &BasicProperties,
    redelivered: bool,
) -> Message {
    let mut msg = Message::new(stream, data);
    let mut delivered = if redelivered { 2 } else { 1 };
    // Exact on a first delivery and where the queue counts (quorum queues); a classic
    // queue only says "delivered before".
    let mut counted = !redelivered;
    let mut time = None;
    if let Some(headers) = props.headers() {
        for (k, v) in headers.inner() {
            let Some(text) = value_text(v) else { continue };
            match k.as_str() {
                HEADER_KEY => msg.key = Some(text),
                HEADER_TIME => {
                    time = DateTime::parse_from_rfc3339(&text)
                        .ok()
                        .map(|t| t.with_timezone(&Utc))
                }
                "x-delivery-count" => {
                    if let Ok(n) = text.parse::<u64>() {
                        delivered = n + 1;
                        counted = true;
                    }
                }
                other => {
                    msg.headers.insert(other.to_owned(), text);
                }
            }
        }
    }
    msg.id = props
        .message_id()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| format!("amqp-{}", uuid::Uuid::new_v4()));
    msg.content_type = props
        .content_type()
        .as_ref()
        .map(|s| s.as_str().to_owned())
        .unwrap_or_else(|| CONTENT_TYPE_OCTET_STREAM.to_owned());
    msg.time = time
        .or_else(|| {
            props
                .timestamp()
                .and_then(|t| DateTime::from_timestamp(i64::try_from(t).ok()?, 0))
        })
        .unwrap_or_else(Utc::now);
    msg.headers
        .insert(HEADER_DELIVERED.to_owned(), delivered.to_string());
    if counted {
        msg.metadata.insert_i64(
            streams_core::DELIVERY_ATTEMPT,
            i64::try_from(delivered).unwrap_or(i64::MAX),
        );
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_survives_the_trip() {
        let sent = Message::new("orders", &b"\x00\xff"[..])
            .with_key("acct-1")
            .with_header("tenant", "acme")
            .with_content_type("application/json");
        let got = message("orders", sent.data.to_vec(), &properties(&sent), false);
        assert_eq!(
            (got.id.as_str(), got.key.as_deref()),
            (sent.id.as_str(), Some("acct-1"))
        );
        assert_eq!(got.time, sent.time);
        assert_eq!(got.content_type, "application/json");
        assert_eq!(got.headers["tenant"], "acme");
        assert_eq!(got.headers[HEADER_DELIVERED], "1");
        assert_eq!(got.delivery_attempt(), Some(1));
        // A classic queue's redelivery: delivered before, but how often is unknown.
        let again = message("orders", sent.data.to_vec(), &properties(&sent), true);
        assert_eq!(again.headers[HEADER_DELIVERED], "2");
        assert_eq!(again.delivery_attempt(), None);
    }

    #[test]
    fn names() {
        assert_eq!(
            queue_name("orders.placed", "billing").unwrap(),
            "orders.placed::billing"
        );
        assert!(exchange_name("amq.direct").is_err());
        assert!(exchange_name("").is_err());
        assert!(queue_name("s", "").is_err());
        assert!(queue_name(&"x".repeat(250), "group").is_err());
    }
}
