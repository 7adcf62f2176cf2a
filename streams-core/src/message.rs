use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, OnceLock};

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

/// [`Metadata`] entry in which a reader says which delivery of a message this is: 1 the
/// first time, 2 after one failure, and so on; read it with
/// [`Message::delivery_attempt`]. Readers that cannot tell leave it out.
pub const DELIVERY_ATTEMPT: &str = "streams-delivery-attempt";

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
    /// User headers: what the publisher set, and what a reader found on the record.
    pub headers: Headers,
    /// Where a reader found the message (partition, offset, consumer group, ...), under
    /// the header names of the wire format; [`header`](Message::header) reads them too.
    /// Empty on a message that was not read.
    pub metadata: Metadata,
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
            metadata: Metadata::new(),
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

    /// A header's value, if present: a header, else a reader's [`metadata`](Message::metadata)
    /// entry of that name (`streams-kafka-partition-id` and so on).
    pub fn header(&self, name: &str) -> Option<&str> {
        match self.headers.get(name) {
            Some(v) => Some(v.as_str()),
            None => self.metadata.get(name),
        }
    }

    /// Which delivery of this message the reader is handing over (1 the first time), from
    /// the [`DELIVERY_ATTEMPT`] metadata entry; `None` when the reader cannot tell.
    ///
    /// ```
    /// use streams_core::{Message, DELIVERY_ATTEMPT};
    ///
    /// let mut msg = Message::new("orders", "x");
    /// assert_eq!(msg.delivery_attempt(), None);
    /// msg.metadata.insert_i64(DELIVERY_ATTEMPT, 3);
    /// assert_eq!(msg.delivery_attempt(), Some(3));
    /// ```
    pub fn delivery_attempt(&self) -> Option<u32> {
        self.metadata
            .get_i64(DELIVERY_ATTEMPT)
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n > 0)
    }

    /// Copies the [`metadata`](Message::metadata) entries into the headers (a header of
    /// the same name wins) and empties the metadata: for a message that leaves the
    /// process as it was read, such as a dead-lettered one, so that it keeps saying where
    /// it came from on platforms that carry only headers.
    pub fn metadata_into_headers(&mut self) {
        for (name, value) in std::mem::take(&mut self.metadata).iter() {
            self.headers
                .entry(name.to_owned())
                .or_insert_with(|| value.to_owned());
        }
    }
}

/// Where a reader found a message: platform coordinates such as partition, offset, high
/// watermark and consumer group, named as the headers of the wire format shared with the
/// Go library (`streams-kafka-partition-id`, ...).
///
/// Kept apart from [`Headers`] so that a reader builds no owned strings for them per
/// message: numbers are stored inline and texts are shared ([`Arc<str>`]); the first entry is
/// held inline and the others in one small vector. A value becomes a `&str` only when read.
///
/// ```
/// use std::sync::Arc;
/// use streams_core::{Message, Metadata};
///
/// let group: Arc<str> = Arc::from("billing");
/// let mut meta = Metadata::with_capacity(2);
/// meta.insert_i64("streams-kafka-current-offset", 42);
/// meta.insert_text("streams-kafka-group-id", group.clone());
/// let mut msg = Message::new("orders", "x");
/// msg.metadata = meta;
/// assert_eq!(msg.header("streams-kafka-current-offset"), Some("42"));
/// assert_eq!(msg.metadata.get_i64("streams-kafka-current-offset"), Some(42));
/// assert_eq!(msg.header("streams-kafka-group-id"), Some("billing"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Metadata {
    /// The first entry, kept inline: a message with one entry (the delivery attempt every
    /// reader stamps) costs no allocation.
    first: Option<Entry>,
    /// The entries after the first, in the order they were set.
    rest: Vec<Entry>,
}

type Entry = (&'static str, MetaValue);

#[derive(Clone)]
enum MetaValue {
    /// A number, rendered as text the first time it is read as text: a reader stamps
    /// offsets and attempts on every message, and few are ever read as text.
    Int(i64, OnceLock<Digits>),
    Text(Arc<str>),
}

impl MetaValue {
    fn int(value: i64) -> Self {
        MetaValue::Int(value, OnceLock::new())
    }

    fn as_str(&self) -> &str {
        match self {
            MetaValue::Int(v, d) => d.get_or_init(|| Digits::new(*v)).as_str(),
            MetaValue::Text(t) => t,
        }
    }
}

impl PartialEq for MetaValue {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            // Whether the text was rendered yet is not part of the value.
            (MetaValue::Int(a, _), MetaValue::Int(b, _)) => a == b,
            (MetaValue::Text(a), MetaValue::Text(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for MetaValue {}

/// A decimal `i64` rendered into a buffer of its own, so that reading it as text
/// needs no allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Digits {
    buf: [u8; 20],
    start: u8,
}

impl Digits {
    fn new(v: i64) -> Self {
        let mut buf = [0u8; 20];
        let mut i = buf.len();
        let mut n = v.unsigned_abs();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        if v < 0 {
            // i64::MIN has 19 digits: there is always room for the sign.
            i -= 1;
            buf[i] = b'-';
        }
        Digits {
            buf,
            start: i as u8,
        }
    }

    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.buf[usize::from(self.start)..]).unwrap_or_default()
    }
}

impl Metadata {
    /// No entries; allocates nothing.
    pub fn new() -> Self {
        Metadata::default()
    }

    /// No entries, with room for `n` without another allocation.
    pub fn with_capacity(n: usize) -> Self {
        Metadata {
            first: None,
            rest: Vec::with_capacity(n.saturating_sub(1)),
        }
    }

    /// Sets a number, replacing an entry of the same name.
    pub fn insert_i64(&mut self, name: &'static str, value: i64) {
        self.insert(name, MetaValue::int(value));
    }

    /// Sets a text, replacing an entry of the same name; pass a clone of a shared
    /// [`Arc<str>`] to add it without copying.
    pub fn insert_text(&mut self, name: &'static str, value: impl Into<Arc<str>>) {
        self.insert(name, MetaValue::Text(value.into()));
    }

    fn insert(&mut self, name: &'static str, value: MetaValue) {
        // Plain loops rather than a chained iterator: a reader sets about seven entries
        // per message, and the chain cost more than the comparisons.
        let Some(first) = &mut self.first else {
            self.first = Some((name, value));
            return;
        };
        if first.0 == name {
            first.1 = value;
            return;
        }
        for entry in &mut self.rest {
            if entry.0 == name {
                entry.1 = value;
                return;
            }
        }
        self.rest.push((name, value));
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.first.iter().chain(self.rest.iter())
    }

    /// An entry's value as text.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    /// An entry's value as a number: one set with [`insert_i64`](Metadata::insert_i64),
    /// or a text that parses as one.
    pub fn get_i64(&self, name: &str) -> Option<i64> {
        match self.entries().find(|(n, _)| *n == name)? {
            (_, MetaValue::Int(v, _)) => Some(*v),
            (_, MetaValue::Text(t)) => t.parse().ok(),
        }
    }

    /// The entries in the order they were set, as `(name, value)`.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> + '_ {
        self.entries().map(|(n, v)| (*n, v.as_str()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        usize::from(self.first.is_some()) + self.rest.len()
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.first.is_none()
    }
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

impl fmt::Debug for Message {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("stream", &self.stream)
            .field("key", &self.key)
            .field("headers", &self.headers)
            .field("metadata", &self.metadata)
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
    fn metadata_keeps_order_and_replaces_by_name_inline_or_not() {
        let mut m = Metadata::new();
        assert!(m.is_empty());
        m.insert_i64("a", 1);
        m.insert_text("b", "two");
        m.insert_i64("c", 3);
        m.insert_i64("a", 10);
        m.insert_text("c", "thirty");
        assert_eq!(m.len(), 3);
        assert_eq!(
            m.iter().collect::<Vec<_>>(),
            [("a", "10"), ("b", "two"), ("c", "thirty")]
        );
        assert_eq!(m.get_i64("a"), Some(10));
        assert_eq!(m.get("missing"), None);
        // A number read as text (rendered) equals the same number not read yet.
        let (mut read, mut unread) = (Metadata::new(), Metadata::new());
        read.insert_i64("n", -12);
        unread.insert_i64("n", -12);
        assert_eq!(read.get("n"), Some("-12"));
        assert_eq!(read, unread);
        assert_eq!(read.clone().get("n"), Some("-12"));
        let mut same = Metadata::with_capacity(3);
        same.insert_i64("a", 10);
        same.insert_text("b", "two");
        same.insert_text("c", "thirty");
        assert_eq!(m, same);
    }

    #[test]
    fn metadata_numbers_read_as_text_and_headers_win() {
        let mut m = Message::new("s", "x").with_header("b", "header");
        for v in [0, 7, -1, 42, i64::MAX, i64::MIN] {
            m.metadata.insert_i64("a", v);
            assert_eq!(m.header("a"), Some(v.to_string().as_str()));
            assert_eq!(m.metadata.get_i64("a"), Some(v));
        }
        m.metadata.insert_text("b", "metadata");
        m.metadata.insert_text("c", "shared");
        assert_eq!(m.metadata.len(), 3, "same name replaces");
        assert_eq!(m.header("b"), Some("header"));
        assert_eq!(m.header("c"), Some("shared"));
        assert_eq!(m.metadata.get_i64("c"), None);
        m.metadata_into_headers();
        assert!(m.metadata.is_empty());
        assert_eq!(m.headers["a"], i64::MIN.to_string());
        assert_eq!(m.headers["b"], "header");
        assert_eq!(m.headers["c"], "shared");
    }

    #[test]
    fn clone_shares_payload() {
        let m = Message::new("s", vec![1u8; 1024]);
        let c = m.clone();
        assert_eq!(m.data.as_ptr(), c.data.as_ptr());
    }
}
