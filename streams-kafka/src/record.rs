//! The record layout shared with the Go library.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use streams_core::{Message, Metadata, CONTENT_TYPE_OCTET_STREAM};

/// Record header carrying the message id.
pub const HEADER_MESSAGE_ID: &str = "message_id";
/// Record header carrying the content type.
pub const HEADER_CONTENT_TYPE: &str = "content_type";
/// Reader metadata (see [`Message::metadata`]): the record's partition.
pub const HEADER_PARTITION_ID: &str = "streams-kafka-partition-id";
/// Reader metadata: the record's offset.
pub const HEADER_CURRENT_OFFSET: &str = "streams-kafka-current-offset";
/// Reader metadata: the partition's high watermark as last seen by the reader (at least
/// the record's offset plus one).
pub const HEADER_HWM_OFFSET: &str = "streams-kafka-hwm-offset";
/// Reader metadata: the consumer's client id.
pub const HEADER_CLIENT_ID: &str = "streams-kafka-client-id";
/// Reader metadata: the consumer group, empty when reading a partition directly.
pub const HEADER_GROUP_ID: &str = "streams-kafka-group-id";
/// Reader metadata: the start offset of a direct partition read, empty otherwise.
pub const HEADER_INIT_OFFSET: &str = "streams-kafka-init-offset";
/// Set by the reader on a record that had no `message_id` header: the id was made up
/// from topic, partition and offset.
pub(crate) const HEADER_SYNTHETIC_ID: &str = "streams-kafka-synthetic-id";
/// Set by the reader when a header value or the key was not UTF-8 and was converted
/// lossily.
pub(crate) const HEADER_LOSSY: &str = "streams-kafka-lossy";

/// Headers of a record: `message_id`, `content_type`, the user headers, then the
/// metadata of a message that was read (forwarded as it came, under the Go names).
pub(crate) fn record_headers(msg: &Message) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(2 + msg.headers.len() + msg.metadata.len())
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
    for (k, v) in msg.metadata.iter() {
        if !msg.headers.contains_key(k) {
            h = h.insert(Header {
                key: k,
                value: Some(v.as_bytes()),
            });
        }
    }
    h
}

/// Where a record came from, for the reader metadata; shared by every message of a
/// reader, so each message refers to the texts rather than copying them.
pub(crate) struct Origin {
    pub(crate) topic: String,
    pub(crate) client_id: Arc<str>,
    pub(crate) group_id: Arc<str>,
    pub(crate) init_offset: Arc<str>,
}

/// Marks a flag in [`Message::metadata`].
const TRUE: &str = "true";

/// A record taken off the consumer: payload, key and headers copied into a buffer, the
/// payload first so that a message's payload is a slice of it. The buffer is the
/// record's own ([`new`](Record::new)) or shared by the records taken together
/// ([`append`](Record::append), then [`attach`](Record::attach)): one allocation, freed
/// by whichever thread drops the last of them, rather than one per record. Kept until
/// the handler succeeded, so each attempt builds its message from it.
pub(crate) struct Record {
    buf: Bytes,
    /// Where the record's bytes start and end in `buf`.
    start: usize,
    end: usize,
    payload_len: Option<usize>,
    key_len: Option<usize>,
    partition: i32,
    offset: i64,
    timestamp: Option<i64>,
}

/// Bytes set aside for the headers when copying a record.
const HEADER_ROOM: usize = 256;

/// Length marker of a header without a value.
const NO_VALUE: u32 = u32::MAX;

impl Record {
    /// Copies what a message needs out of a record into a buffer of its own.
    pub(crate) fn new<M: rdkafka::Message>(record: &M) -> Self {
        let payload = record.payload();
        let key = record.key();
        // Room for the usual headers (ids, content type, a few user headers): one pass
        // over them, and a reallocation only for records with more.
        let mut buf = Vec::with_capacity(
            payload.map_or(0, <[u8]>::len) + key.map_or(0, <[u8]>::len) + HEADER_ROOM,
        );
        let mut r = Record::append(record, &mut buf);
        r.buf = Bytes::from(buf);
        r
    }

    /// Copies what a message needs out of a record to the end of `arena`; the record is
    /// usable once [`attach`](Record::attach)ed to the arena's bytes.
    pub(crate) fn append<M: rdkafka::Message>(record: &M, arena: &mut Vec<u8>) -> Self {
        let payload = record.payload();
        let key = record.key();
        let headers = record.headers();
        let start = arena.len();
        let buf = arena;
        buf.extend_from_slice(payload.unwrap_or_default());
        buf.extend_from_slice(key.unwrap_or_default());
        if let Some(hs) = headers {
            for h in hs.iter() {
                buf.extend_from_slice(&len_u32(h.key.len()).to_le_bytes());
                buf.extend_from_slice(h.key.as_bytes());
                match h.value {
                    None => buf.extend_from_slice(&NO_VALUE.to_le_bytes()),
                    Some(v) => {
                        buf.extend_from_slice(&len_u32(v.len()).to_le_bytes());
                        buf.extend_from_slice(v);
                    }
                }
            }
        }
        Record {
            buf: Bytes::new(),
            start,
            end: buf.len(),
            payload_len: payload.map(<[u8]>::len),
            key_len: key.map(<[u8]>::len),
            partition: record.partition(),
            offset: record.offset(),
            timestamp: record.timestamp().to_millis(),
        }
    }

    /// Points the record at the arena it was [`append`](Record::append)ed to, frozen.
    pub(crate) fn attach(&mut self, arena: &Bytes) {
        self.buf = arena.clone();
    }

    /// What the record takes in memory: payload, key and headers.
    pub(crate) fn size(&self) -> usize {
        self.end - self.start
    }

    /// The record's own bytes.
    fn bytes(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    pub(crate) fn partition(&self) -> i32 {
        self.partition
    }

    fn key(&self) -> Option<&[u8]> {
        let at = self.payload_len.unwrap_or(0);
        self.key_len.map(|n| &self.bytes()[at..at + n])
    }

    /// The headers as `(name, value)`; a name that is not UTF-8 is converted lossily
    /// (librdkafka hands names out as `&str` already).
    fn headers(&self) -> impl Iterator<Item = (&str, Option<&[u8]>)> + '_ {
        let mut at = self.payload_len.unwrap_or(0) + self.key_len.unwrap_or(0);
        let buf = self.bytes();
        std::iter::from_fn(move || {
            if at >= buf.len() {
                return None;
            }
            let klen = read_u32(buf, at) as usize;
            let key = std::str::from_utf8(&buf[at + 4..at + 4 + klen]).unwrap_or_default();
            at += 4 + klen;
            let vlen = read_u32(buf, at);
            at += 4;
            let value = (vlen != NO_VALUE).then(|| {
                let v = &buf[at..at + vlen as usize];
                at += vlen as usize;
                v
            });
            Some((key, value))
        })
    }
}

fn len_u32(n: usize) -> u32 {
    // Kafka caps a record far below 4 GiB.
    u32::try_from(n).unwrap_or(NO_VALUE - 1)
}

fn read_u32(buf: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&buf[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Rebuilds a message from a record. Never fails: missing or malformed streams headers
/// give what can be recovered, flagged in the metadata. The reader's coordinates
/// (partition, offset, high watermark, client, group, start offset) go into
/// [`Message::metadata`] under the Go header names, without a string copied.
pub(crate) fn to_message(record: &Record, hwm: i64, origin: &Origin) -> Message {
    let mut lossy = false;
    let mut id = None;
    let mut content_type = None;
    let mut headers = streams_core::Headers::new();
    for (key, v) in record.headers() {
        let value = match v {
            None => String::new(),
            Some(v) => match std::str::from_utf8(v) {
                Ok(s) => s.to_owned(),
                Err(_) => {
                    lossy = true;
                    String::from_utf8_lossy(v).into_owned()
                }
            },
        };
        match key {
            HEADER_MESSAGE_ID if !value.is_empty() => id = Some(value),
            HEADER_CONTENT_TYPE if !value.is_empty() => content_type = Some(value),
            HEADER_MESSAGE_ID | HEADER_CONTENT_TYPE => {}
            key => {
                headers.insert(key.to_owned(), value);
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
    // Six coordinates and the delivery attempt the worker adds.
    let mut metadata = Metadata::with_capacity(7);
    let id = id.unwrap_or_else(|| {
        metadata.insert_text(HEADER_SYNTHETIC_ID, TRUE);
        format!("{}-{}-{}", origin.topic, record.partition, record.offset)
    });
    if lossy {
        metadata.insert_text(HEADER_LOSSY, TRUE);
    }
    metadata.insert_i64(HEADER_PARTITION_ID, i64::from(record.partition));
    metadata.insert_i64(HEADER_CURRENT_OFFSET, record.offset);
    metadata.insert_i64(HEADER_HWM_OFFSET, hwm.max(record.offset + 1));
    metadata.insert_text(HEADER_CLIENT_ID, origin.client_id.clone());
    metadata.insert_text(HEADER_GROUP_ID, origin.group_id.clone());
    metadata.insert_text(HEADER_INIT_OFFSET, origin.init_offset.clone());
    Message {
        id,
        stream: origin.topic.clone(),
        key: key.filter(|k| !k.is_empty()),
        headers,
        metadata,
        content_type: content_type.unwrap_or_else(|| CONTENT_TYPE_OCTET_STREAM.to_owned()),
        data: match record.payload_len {
            Some(n) => record.buf.slice(record.start..record.start + n),
            None => Bytes::new(),
        },
        time: record
            .timestamp
            .and_then(|ms| Utc.timestamp_millis_opt(ms).single())
            .unwrap_or(DateTime::<Utc>::UNIX_EPOCH),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::{OwnedMessage, Timestamp};

    fn origin(topic: &str) -> Origin {
        Origin {
            topic: topic.into(),
            client_id: "c".into(),
            group_id: "g".into(),
            init_offset: "".into(),
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
        let m = to_message(&Record::new(&record), 0, &origin("payments"));
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
        assert_eq!(m.metadata.get_i64(HEADER_CURRENT_OFFSET), Some(41));
        assert!(
            !m.headers.contains_key(HEADER_PARTITION_ID),
            "coordinates are metadata, not headers"
        );
    }

    #[test]
    fn forwarded_messages_carry_their_metadata_as_record_headers() {
        let mut msg = Message::new("s", "x").with_header(HEADER_GROUP_ID, "mine");
        msg.metadata.insert_i64(HEADER_CURRENT_OFFSET, 9);
        msg.metadata.insert_text(HEADER_GROUP_ID, "theirs");
        let h = record_headers(&msg);
        let pairs: Vec<_> = h
            .iter()
            .map(|h| (h.key.to_owned(), h.value.map(|v| v.to_vec())))
            .collect();
        assert_eq!(pairs.len(), 4);
        assert_eq!(
            pairs[2],
            (HEADER_GROUP_ID.to_owned(), Some(b"mine".to_vec()))
        );
        assert_eq!(
            pairs[3],
            (HEADER_CURRENT_OFFSET.to_owned(), Some(b"9".to_vec()))
        );
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
        let m = to_message(&Record::new(&record), 0, &origin("t"));
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
        let m = to_message(&Record::new(&bare), 0, &origin("t"));
        assert_eq!(m.content_type, CONTENT_TYPE_OCTET_STREAM);
        assert_eq!(m.key, None);
    }
}
