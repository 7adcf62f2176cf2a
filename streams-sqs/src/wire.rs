//! The SQS wire format shared with the Go library: body plus `streams-*` attributes.

use std::collections::{BTreeMap, HashMap};

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::{DateTime, TimeZone, Utc};
use streams_core::{Headers, Message, CONTENT_TYPE_OCTET_STREAM};

pub(crate) use streams_aws::Encoded;
pub use streams_aws::{
    ATTR_BODY_ENCODING, ATTR_CONTENT_TYPE, ATTR_HEADERS, ATTR_MESSAGE_ID, ATTR_MESSAGE_TIME,
    ATTR_STREAM_KEY, ATTR_STREAM_NAME,
};
use streams_aws::{ENCODING_BASE64, ENCODING_EMPTY};

/// Reader header: the SQS message id.
pub const HEADER_SQS_MESSAGE_ID: &str = "sqs-message-id";
/// Reader header: MD5 of the message attributes.
pub const HEADER_SQS_ATTRIBUTES_MD5: &str = "sqs-message-attributes-md5";
/// Reader header: the receipt handle of this delivery.
pub const HEADER_SQS_RECEIPT_HANDLE: &str = "sqs-message-receipt-handle";
/// Reader header: MD5 of the message body.
pub const HEADER_SQS_BODY_MD5: &str = "sqs-message-body-md5";

/// Encodes a message the way the Go library's SQS writer lays it out.
pub(crate) fn encode(msg: &Message) -> Encoded {
    streams_aws::encode(msg, streams_aws::TimeFormat::UnixMillis)
}

/// What the reader knows about a delivery besides body and attributes.
#[derive(Debug, Default)]
pub(crate) struct Delivery {
    pub(crate) sqs_message_id: Option<String>,
    pub(crate) receipt_handle: Option<String>,
    pub(crate) body_md5: Option<String>,
    pub(crate) attributes_md5: Option<String>,
    pub(crate) sent_millis: Option<i64>,
}

/// An SNS notification as delivered to a queue whose subscription is not raw.
#[derive(serde::Deserialize)]
struct Envelope {
    #[serde(rename = "Type")]
    kind: String,
    #[serde(rename = "Message")]
    message: String,
    #[serde(rename = "TopicArn")]
    topic_arn: Option<String>,
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
    #[serde(rename = "Timestamp")]
    timestamp: Option<String>,
    #[serde(rename = "MessageAttributes", default)]
    attributes: HashMap<String, EnvelopeAttribute>,
}

#[derive(serde::Deserialize)]
struct EnvelopeAttribute {
    #[serde(rename = "Value")]
    value: String,
}

/// Decodes a delivery into a message. A body that is an SNS notification envelope is
/// unwrapped unless the SQS attributes already say it is a streams message.
///
/// # Errors
///
/// A body marked base64 that does not decode.
pub(crate) fn decode(
    fallback_stream: &str,
    body: &str,
    mut attributes: HashMap<String, String>,
    delivery: Delivery,
) -> Result<Message, String> {
    let mut body = body.to_owned();
    let mut fallback_id = delivery.sqs_message_id.clone();
    let mut fallback_time = delivery
        .sent_millis
        .and_then(|ms| Utc.timestamp_millis_opt(ms).single());
    if !attributes.contains_key(ATTR_MESSAGE_ID) && body.starts_with('{') {
        if let Ok(env) = serde_json::from_str::<Envelope>(&body) {
            if env.kind == "Notification" && env.topic_arn.is_some() {
                attributes.extend(env.attributes.into_iter().map(|(k, v)| (k, v.value)));
                fallback_id = env.message_id.or(fallback_id);
                if let Some(t) = env.timestamp.as_deref().and_then(parse_time) {
                    fallback_time = Some(t);
                }
                body = env.message;
            }
        }
    }
    let data = match attributes.remove(ATTR_BODY_ENCODING).as_deref() {
        Some(ENCODING_BASE64) => BASE64
            .decode(body.trim())
            .map_err(|e| format!("body marked base64 does not decode: {e}"))?,
        Some(ENCODING_EMPTY) => Vec::new(),
        Some(other) => return Err(format!("unknown body encoding `{other}`")),
        None => body.into_bytes(),
    };
    let mut headers = Headers::new();
    if let Some(json) = attributes.remove(ATTR_HEADERS) {
        let packed: BTreeMap<String, String> = serde_json::from_str(&json)
            .map_err(|e| format!("attribute {ATTR_HEADERS} is not a JSON object: {e}"))?;
        for (name, value) in packed {
            // Values that could not be attributes of their own travel here too.
            if name == ATTR_STREAM_KEY || name == ATTR_CONTENT_TYPE {
                attributes.insert(name, value);
            } else {
                headers.insert(name, value);
            }
        }
    }
    let id = attributes
        .remove(ATTR_MESSAGE_ID)
        .or(fallback_id)
        .unwrap_or_default();
    let stream = attributes
        .remove(ATTR_STREAM_NAME)
        .unwrap_or_else(|| fallback_stream.to_owned());
    let key = attributes.remove(ATTR_STREAM_KEY).filter(|k| !k.is_empty());
    let content_type = attributes
        .remove(ATTR_CONTENT_TYPE)
        .unwrap_or_else(|| CONTENT_TYPE_OCTET_STREAM.to_owned());
    let time = attributes
        .remove(ATTR_MESSAGE_TIME)
        .as_deref()
        .and_then(parse_time)
        .or(fallback_time)
        .unwrap_or_else(Utc::now);
    headers.extend(attributes);
    for (name, value) in [
        (HEADER_SQS_MESSAGE_ID, delivery.sqs_message_id),
        (HEADER_SQS_RECEIPT_HANDLE, delivery.receipt_handle),
        (HEADER_SQS_BODY_MD5, delivery.body_md5),
        (HEADER_SQS_ATTRIBUTES_MD5, delivery.attributes_md5),
    ] {
        if let Some(value) = value {
            headers.insert(name.to_owned(), value);
        }
    }
    Ok(Message {
        id,
        stream,
        key,
        headers,
        metadata: streams_core::Metadata::new(),
        content_type,
        data: data.into(),
        time,
    })
}

/// Unix milliseconds (the SQS form) or RFC 3339 (the SNS form).
fn parse_time(text: &str) -> Option<DateTime<Utc>> {
    if let Ok(ms) = text.trim().parse::<i64>() {
        return Utc.timestamp_millis_opt(ms).single();
    }
    DateTime::parse_from_rfc3339(text.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;
    use streams_aws::{xml_safe, MAX_ATTRIBUTES};

    fn round_trip(msg: &Message) -> Message {
        let e = encode(msg);
        assert!(e.attributes.len() <= MAX_ATTRIBUTES, "{:?}", e.attributes);
        assert!(xml_safe(&e.body));
        decode(
            "fallback",
            &e.body,
            e.attributes.into_iter().collect(),
            Delivery::default(),
        )
        .unwrap()
    }

    #[test]
    fn text_stays_text_and_binary_is_base64() {
        let text = Message::new("s", "héllo").with_key("k");
        let e = encode(&text);
        assert_eq!(e.body, "héllo");
        assert!(!e.attributes.iter().any(|(n, _)| n == ATTR_BODY_ENCODING));
        let back = round_trip(&text);
        assert_eq!(back.data, text.data);
        assert_eq!(back.key, text.key);
        assert_eq!(back.id, text.id);

        for data in [vec![0u8, 1, 2, 0xff], b"bell\x07".to_vec(), vec![]] {
            let m = Message::new("s", data.clone());
            let e = encode(&m);
            assert!(e.attributes.iter().any(|(n, _)| n == ATTR_BODY_ENCODING));
            assert_eq!(round_trip(&m).data.as_ref(), data.as_slice());
        }
    }

    #[test]
    fn many_or_odd_headers_are_packed() {
        let mut m = Message::new("s", "x").with_key("k");
        for i in 0..12 {
            m = m.with_header(format!("h{i:02}"), format!("v{i}"));
        }
        m = m.with_header("bad name!", "v").with_header("empty", "");
        let back = round_trip(&m);
        for (k, v) in &m.headers {
            assert_eq!(back.headers.get(k), Some(v), "{k}");
        }
        assert_eq!(back.time.timestamp_millis(), m.time.timestamp_millis());
    }

    #[test]
    fn sns_envelope_is_unwrapped() {
        let body = serde_json::json!({
            "Type": "Notification",
            "MessageId": "sns-1",
            "TopicArn": "arn:aws:sns:us-east-1:123456789012:orders",
            "Message": "AAEC",
            "Timestamp": "2024-01-02T03:04:05.678Z",
            "MessageAttributes": {
                "streams-message-id": {"Type": "String", "Value": "m-1"},
                "streams-body-encoding": {"Type": "String", "Value": "base64"},
                "streams-message-time": {"Type": "String", "Value": "2024-01-02T03:04:05.123Z"},
                "tenant": {"Type": "String", "Value": "acme"}
            }
        })
        .to_string();
        let m = decode("orders", &body, HashMap::new(), Delivery::default()).unwrap();
        assert_eq!(m.id, "m-1");
        assert_eq!(m.data.as_ref(), &[0u8, 1, 2]);
        assert_eq!(m.headers["tenant"], "acme");
        assert_eq!(m.time.timestamp_millis() % 1000, 123);
    }
}
