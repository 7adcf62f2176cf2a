//! The record layout shared with the Go library.

use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use streams_core::{Message, CONTENT_TYPE_OCTET_STREAM};

/// Record header carrying the message id.
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Record header carrying the content type.
pub const HEADER_CONTENT_TYPE: &str = "content_type";
/// Reader header: the record's partition.
pub const HEADER_PARTITION_ID: &str = "streams-kafka-partition-id";
/// Reader header: the record's offset.
pub const HEADER_CURRENT_OFFSET: &str = "streams-kafka-current-offset";
/// Reader header: the partition's high watermark as last seen by the reader (at least
/// the record's offset plus one).
pub const HEADER_HWM_OFFSET: &str = "streams-kafka-hwm-offset";
/// Reader header: the consumer's client id.
pub const HEADER_CLIENT_ID: &str = "streams-kafka-client-id";
/// Reader header: the consumer group, empty when reading a partition directly.
pub const HEADER_GROUP_ID: &str = "streams-kafka-group-id";
/// Reader header: the start offset of a direct partition read, empty otherwise.
pub const HEADER_INIT_OFFSET: &str = "streams-kafka-init-offset";
/// Set by the reader on a record that had no `message_id` header: the id was made up
/// from topic, partition and offset.
pub(crate) const HEADER_SYNTHETIC_ID: &str = "streams-kafka-synthetic-id";
/// Set by the reader when a header value or the key was not UTF-8 and was converted
/// lossily.
pub(crate) const HEADER_LOSSY: &str = "streams-kafka-lossy";

/// Headers of a record: `message_id`, `content_type`, then the user headers.
pub(crate) fn record_headers(msg: &Message) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(2 + msg.headers.len())
        .insert(Header {
            key: HEADER_MESSAGE_ID,
            value: Some(msg.id.as_bytes()),
        })
        .insert(Header {
            key: HEADER_CONTENT_TYPE,
            value: Some(msg.content_type.as_bytes()),
        });
    for (k, v) in &msg.headers {
        h = h.insert(Header {
            key: k.as_str(),
            value: Some(v.as_bytes()),
        });
    }
    h
}

/// Where a record came from, for the reader headers.
pub(crate) struct Origin<'a> {
    pub(crate) hwm: i64,
    pub(crate) client_id: &'a str,
    pub(crate) group_id: &'a str,
    pub(crate) init_offset: &'a str,
}

/// Rebuilds a message from a record. Never fails: missing or malformed streams headers
/// give what can be recovered, flagged in headers.
pub(crate) fn to_message<M: rdkafka::Message>(record: &M, origin: &Origin<'_>) -> Message {
    let mut lossy = false;
    let mut id = None;
    let mut content_type = None;
    let mut headers = streams_core::Headers::new();
    if let Some(hs) = record.headers() {
        for h in hs.iter() {
            let value = match h.value {
                None => String::new(),
                Some(v) => match std::str::from_utf8(v) {
                    Ok(s) => s.to_owned(),
                    Err(_) => {
                        lossy = true;
                        String::from_utf8_lossy(v).into_owned()
                    }
                },
            };
            match h.key {
                HEADER_MESSAGE_ID if !value.is_empty() => id = Some(value),
                HEADER_CONTENT_TYPE if !value.is_empty() => content_type = Some(value),
                HEADER_MESSAGE_ID | HEADER_CONTENT_TYPE => {}
                key => {
                    headers.insert(key.to_owned(), value);
                }
            }
        }
    }
    let key = record.key().map(|k| match std::str::from_utf8(k) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            lossy = true;
            String::from_utf8_lossy(k).into_owned()
        }
    });
    let id = id.unwrap_or_else(|| {
        headers.insert(HEADER_SYNTHETIC_ID.to_owned(), "true".to_owned());
        format!(
            "{}-{}-{}",
            record.topic(),
            record.partition(),
            record.offset()
        )
    });
    if lossy {
        headers.insert(HEADER_LOSSY.to_owned(), "true".to_owned());
    }
    headers.insert(
        HEADER_PARTITION_ID.to_owned(),
        record.partition().to_string(),
    );
    headers.insert(
        HEADER_CURRENT_OFFSET.to_owned(),
        record.offset().to_string(),
    );
    headers.insert(
        HEADER_HWM_OFFSET.to_owned(),
        origin.hwm.max(record.offset() + 1).to_string(),
    );
    headers.insert(HEADER_CLIENT_ID.to_owned(), origin.client_id.to_owned());
    headers.insert(HEADER_GROUP_ID.to_owned(), origin.group_id.to_owned());
    headers.insert(HEADER_INIT_OFFSET.to_owned(), origin.init_offset.to_owned());
    Message {
        id,
        stream: record.topic().to_owned(),
        key: key.filter(|k| !k.is_empty()),
        headers,
        content_type: content_type.unwrap_or_else(|| CONTENT_TYPE_OCTET_STREAM.to_owned()),
        data: record
            .payload()
            .map(bytes::Bytes::copy_from_slice)
            .unwrap_or_default(),
        time: record
            .timestamp()
            .to_millis()
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn origin() -> Origin<'static> {
        Origin {
            hwm: 0,
            client_id: "c",
            group_id: "g",
            init_offset: "",
        }
    }

    /// A record laid out as the Go library writes it.
    #[test]
    fn go_record_decodes_into_the_same_message() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "message_id",
                value: Some("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R".as_bytes()),
            })
            .insert(Header {
                key: "content_type",
                value: Some("application/json".as_bytes()),
            })
            .insert(Header {
                key: "tenant",
                value: Some("acme".as_bytes()),
            });
        let record = OwnedMessage::new(
            Some(br#"{"amount":100}"#.to_vec()),
            Some(b"acct-42".to_vec()),
            "payments".into(),
            Timestamp::CreateTime(1_700_000_000_123),
            2,
            41,
            Some(headers),
        );
        let m = to_message(&record, &origin());
        assert_eq!(m.id, "2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R");
        assert_eq!(m.stream, "payments");
        assert_eq!(m.key.as_deref(), Some("acct-42"));
        assert_eq!(m.content_type, "application/json");
        assert_eq!(m.header("tenant"), Some("acme"));
        assert_eq!(&m.data[..], br#"{"amount":100}"#);
        assert_eq!(m.time.timestamp_millis(), 1_700_000_000_123);
        assert_eq!(m.header(HEADER_PARTITION_ID), Some("2"));
        assert_eq!(m.header(HEADER_CURRENT_OFFSET), Some("41"));
        assert_eq!(m.header(HEADER_HWM_OFFSET), Some("42"));
        assert_eq!(m.header(HEADER_GROUP_ID), Some("g"));
        assert!(m.header(HEADER_SYNTHETIC_ID).is_none());
    }

    #[test]
    fn written_headers_follow_the_go_layout() {
        let msg = Message::new("s", "x")
            .with_header("a", "1")
            .with_content_type("text/plain");
        let h = record_headers(&msg);
        let names: Vec<_> = h.iter().map(|h| h.key.to_owned()).collect();
        assert_eq!(names, ["message_id", "content_type", "a"]);
        assert_eq!(h.get(0).value, Some(msg.id.as_bytes()));
    }

    #[test]
    fn malformed_records_recover_what_they_can() {
        let headers = OwnedHeaders::new()
            .insert(Header {
                key: "content_type",
                value: Some(&b"\xff\xfe"[..]),
            })
            .insert(Header::<&[u8]> {
                key: "empty",
                value: None,
            });
        let record = OwnedMessage::new(
            None,
            Some(vec![0xff, 0x00]),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            7,
            Some(headers),
        );
        let m = to_message(&record, &origin());
        assert_eq!(m.id, "t-0-7", "synthetic id from coordinates");
        assert_eq!(m.header(HEADER_SYNTHETIC_ID), Some("true"));
        assert_eq!(m.header(HEADER_LOSSY), Some("true"));
        assert!(m.data.is_empty());
        assert_eq!(m.header("empty"), Some(""));
        assert_eq!(m.time, DateTime::<Utc>::UNIX_EPOCH);

        let bare = OwnedMessage::new(
            Some(b"v".to_vec()),
            None,
            "t".into(),
            Timestamp::NotAvailable,
            1,
            3,
            None,
        );
        let m = to_message(&bare, &origin());
        assert_eq!(m.content_type, CONTENT_TYPE_OCTET_STREAM);
        assert_eq!(m.key, None);
    }
}
