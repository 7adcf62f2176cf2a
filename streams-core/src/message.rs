use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use chrono::{DateTime, Utc};

/// Message headers: string keys to string values, ordered by key.
pub type Headers = BTreeMap<String, String>;

/// Content type of JSON payloads.
pub const CONTENT_TYPE_JSON: &str = "application/json";
/// Content type of Protocol Buffers payloads.
pub const CONTENT_TYPE_PROTOBUF: &str = "application/x-google-protobuf";
/// Content type given to raw payloads when none is set.
pub const CONTENT_TYPE_OCTET_STREAM: &str = "application/octet-stream";

/// A unit of data moving through a stream, the same on every platform.
///
/// `data` is [`Bytes`], so cloning a message does not copy its payload.
///
/// ```
/// use streams_core::Message;
///
/// let msg = Message::new("orders", r#"{"id":1}"#)
///     .with_key("customer-7")
///     .with_header("tenant", "acme")
///     .with_content_type(streams_core::CONTENT_TYPE_JSON);
/// assert_eq!(msg.stream, "orders");
/// assert_eq!(msg.key.as_deref(), Some("customer-7"));
/// assert_eq!(msg.headers["tenant"], "acme");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id of the message; consumers deduplicate on it.
    pub id: String,
    /// The stream (topic, queue) the message belongs to.
    pub stream: String,
    /// Partition or ordering key; messages with the same key keep their order on
    /// platforms that promise order per key.
    pub key: Option<String>,
    /// User headers. Drivers add their own on read (partition, offset and so on).
    pub headers: Headers,
    /// MIME type of `data`, used to pick a codec when decoding.
    pub content_type: String,
    /// The payload.
    pub data: Bytes,
    /// When the message was created.
    pub time: DateTime<Utc>,
}

impl Message {
    /// Creates a message on `stream` with a new UUID v7 id, the current time and the
    /// `application/octet-stream` content type.
    pub fn new(stream: impl Into<String>, data: impl Into<Bytes>) -> Self {
        Message {
            id: uuid::Uuid::now_v7().to_string(),
            stream: stream.into(),
            key: None,
            headers: Headers::new(),
            content_type: CONTENT_TYPE_OCTET_STREAM.to_owned(),
            data: data.into(),
            time: Utc::now(),
        }
    }

    /// Sets the id.
    pub fn with_id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the key; an empty key means no key.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        let key = key.into();
        self.key = (!key.is_empty()).then_some(key);
        self
    }

    /// Adds a header, replacing one with the same name.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the content type.
    pub fn with_content_type(mut self, content_type: impl Into<String>) -> Self {
        self.content_type = content_type.into();
        self
    }

    /// Sets the time.
    pub fn with_time(mut self, time: DateTime<Utc>) -> Self {
        self.time = time;
        self
    }

    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("stream", &self.stream)
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("content_type", &self.content_type)
            .field("data_len", &self.data.len())
            .field("time", &self.time)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_key_is_no_key() {
        let m = Message::new("s", "x").with_key("");
        assert_eq!(m.key, None);
    }

    #[test]
    fn ids_are_unique() {
        let a = Message::new("s", "x");
        let b = Message::new("s", "x");
        assert_ne!(a.id, b.id);
        assert_eq!(a.content_type, CONTENT_TYPE_OCTET_STREAM);
    }

    #[test]
    fn clone_shares_payload() {
        let m = Message::new("s", vec![1u8; 1024]);
        let c = m.clone();
        assert_eq!(m.data.as_ptr(), c.data.as_ptr());
    }
}
