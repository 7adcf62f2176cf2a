//! Where commands print, and the JSON-line form of a message.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use streams::{BoxError, Message};

/// A line-oriented sink shared by the tasks of a command; each line is written and
/// flushed whole, so lines from concurrent handlers never interleave.
#[derive(Clone)]
pub struct Output {
    inner: Arc<Mutex<Box<dyn Write + Send>>>,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Output").finish_non_exhaustive()
    }
}

impl Output {
    /// Standard output.
    pub fn stdout() -> Self {
        Output::new(io::stdout())
    }

    /// Any writer.
    pub fn new(w: impl Write + Send + 'static) -> Self {
        Output {
            inner: Arc::new(Mutex::new(Box::new(w))),
        }
    }

    /// An in-memory sink and a handle to read what was written, for tests and for
    /// programs that embed the commands.
    pub fn buffer() -> (Self, Captured) {
        let captured = Captured::default();
        (Output::new(captured.clone()), captured)
    }

    /// Writes `line` and a newline, then flushes.
    ///
    /// # Errors
    ///
    /// The writer's error (a closed pipe, say).
    pub fn line(&self, line: &str) -> io::Result<()> {
        let mut w = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        w.write_all(line.as_bytes())?;
        w.write_all(b"\n")?;
        w.flush()
    }
}

/// What an [`Output::buffer`] received.
#[derive(Debug, Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }

    /// The lines written so far.
    pub fn lines(&self) -> Vec<String> {
        self.text().lines().map(str::to_owned).collect()
    }
}

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether a header was added by a reader (platform coordinates) rather than by the
/// publisher: `streams-kafka-*`, `streams-nats-*`, `streams-redis-*`, `streams-amqp-*`
/// and `sqs-message-*`.
pub fn is_reader_header(name: &str) -> bool {
    name.starts_with("streams-kafka-")
        || name.starts_with("streams-nats-")
        || name.starts_with("streams-redis-")
        || name.starts_with("streams-amqp-")
        || name.starts_with("sqs-message-")
}

/// Whether a header was added by the dead-letter middleware (`streams-dlq-*`).
pub fn is_dead_letter_header(name: &str) -> bool {
    name.starts_with("streams-dlq-")
}

/// A message as one JSON object: what `streams consume` prints and what
/// `streams publish --format json` reads.
///
/// `headers` holds the publisher's headers; what the reader added (partition, offset,
/// receipt handle and so on) is in `meta`, with the Kafka coordinates also as
/// `group`, `partition` and `offset`. The payload is `data` when it is UTF-8 text and
/// `data_base64` otherwise, so no byte is lost.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct JsonMessage {
    /// The stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream: Option<String>,
    /// The message id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Creation time, RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// MIME type of the payload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Publisher headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// The payload, when it is UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The payload in standard base64, when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Kafka consumer group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kafka partition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<i32>,
    /// Kafka offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<i64>,
    /// Headers the reader added.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub meta: BTreeMap<String, String>,
}

impl JsonMessage {
    /// The JSON form of `msg`.
    pub fn from_message(msg: &Message) -> Self {
        let (mut meta, headers): (BTreeMap<_, _>, BTreeMap<_, _>) = msg
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .partition(|(k, _)| is_reader_header(k));
        for (k, v) in msg.metadata.iter() {
            meta.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        }
        let (data, data_base64) = match std::str::from_utf8(&msg.data) {
            Ok(text) => (Some(text.to_owned()), None),
            Err(_) => (
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(&msg.data)),
            ),
        };
        JsonMessage {
            stream: Some(msg.stream.clone()),
            id: Some(msg.id.clone()),
            key: msg.key.clone(),
            time: Some(msg.time),
            content_type: Some(msg.content_type.clone()),
            group: meta.get("streams-kafka-group-id").cloned(),
            partition: meta
                .get("streams-kafka-partition-id")
                .and_then(|p| p.parse().ok()),
            offset: meta
                .get("streams-kafka-current-offset")
                .and_then(|o| o.parse().ok()),
            headers,
            data,
            data_base64,
            meta,
        }
    }

    /// The message this object describes, on `default_stream` when it names none. An
    /// object without an id or a time gets a new one.
    ///
    /// # Errors
    ///
    /// When both or neither of `data` and `data_base64` are present, or `data_base64`
    /// is not base64.
    pub fn into_message(self, default_stream: &str) -> Result<Message, BoxError> {
        let data = match (self.data, self.data_base64) {
            (Some(text), None) => bytes::Bytes::from(text),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("`data_base64` is not base64: {e}"))?
                .into(),
            (Some(_), Some(_)) => {
                return Err("give either `data` or `data_base64`, not both".into())
            }
            (None, None) => return Err("missing `data` (or `data_base64`)".into()),
        };
        let mut msg = Message::new(
            self.stream.unwrap_or_else(|| default_stream.to_owned()),
            data,
        );
        if let Some(id) = self.id {
            msg = msg.with_id(id);
        }
        if let Some(key) = self.key {
            msg = msg.with_key(key);
        }
        if let Some(time) = self.time {
            msg.time = time;
        }
        if let Some(ct) = self.content_type {
            msg.content_type = ct;
        }
        msg.headers = self.headers;
        Ok(msg)
    }

    /// One line of JSON.
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!(r#"{{"error":"{e}"}}"#))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_binary_payloads_round_trip() {
        let msg = Message::new("orders", "héllo")
            .with_key("k")
            .with_header("tenant", "acme")
            .with_header("streams-kafka-partition-id", "3")
            .with_header("streams-kafka-current-offset", "42")
            .with_header("streams-kafka-group-id", "billing");
        let json = JsonMessage::from_message(&msg);
        assert_eq!(json.data.as_deref(), Some("héllo"));
        assert_eq!((json.partition, json.offset), (Some(3), Some(42)));
        assert_eq!(json.group.as_deref(), Some("billing"));
        assert_eq!(json.headers.len(), 1, "reader headers go to meta");
        assert_eq!(json.meta.len(), 3);
        let mut read = Message::new("orders", "x");
        read.metadata.insert_i64("streams-kafka-current-offset", 7);
        read.metadata
            .insert_text("streams-kafka-group-id", "billing");
        let read = JsonMessage::from_message(&read);
        assert_eq!(
            (read.offset, read.group.as_deref()),
            (Some(7), Some("billing"))
        );
        assert!(read.headers.is_empty(), "reader metadata goes to meta");
        let line = json.to_line();
        let back: JsonMessage = serde_json::from_str(&line).unwrap();
        let again = back.into_message("other").unwrap();
        assert_eq!(again.id, msg.id);
        assert_eq!(again.stream, "orders");
        assert_eq!(again.time, msg.time);
        assert_eq!(again.headers.len(), 1, "coordinates are not re-published");

        let binary = Message::new("s", vec![0xff, 0x00, 0xfe]);
        let json = JsonMessage::from_message(&binary);
        assert!(json.data.is_none());
        let back = json.into_message("s").unwrap();
        assert_eq!(&back.data[..], &[0xff, 0x00, 0xfe]);
    }

    #[test]
    fn bad_objects_are_clear_errors() {
        let none = JsonMessage::default().into_message("s").unwrap_err();
        assert!(none.to_string().contains("missing `data`"), "{none}");
        let both = JsonMessage {
            data: Some("a".into()),
            data_base64: Some("YQ==".into()),
            ..Default::default()
        };
        assert!(both.into_message("s").is_err());
        let bad = JsonMessage {
            data_base64: Some("!!!".into()),
            ..Default::default()
        };
        let err = bad.into_message("s").unwrap_err();
        assert!(err.to_string().contains("not base64"), "{err}");
    }
}
