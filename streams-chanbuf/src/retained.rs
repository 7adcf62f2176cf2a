//! What the bus keeps of a message while its handler runs, for a redelivery the handler
//! may ask for ([`RetryAfter`](streams_core::RetryAfter)).
//!
//! The handler takes the message by value, so the bus must keep a copy of its own
//! before the call. A `Message` clone costs an allocation per text field and three per
//! header; [`Retained`] packs the texts into one buffer (one allocation, a copy of a few
//! dozen bytes) and shares the payload, and builds the message again only for the rare
//! redelivery.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use streams_core::{Message, Metadata};

/// Largest packing buffer kept for reuse, in bytes.
pub(crate) const KEPT_BUFFER: usize = 16 * 1024;

/// A message packed for a possible redelivery: see the module docs.
pub(crate) struct Retained {
    /// id, stream, key (when present), content type, then each header's name and value,
    /// each as a little-endian `u32` length and the UTF-8 bytes.
    texts: Vec<u8>,
    has_key: bool,
    metadata: Metadata,
    data: Bytes,
    time: DateTime<Utc>,
}

impl Retained {
    /// Packs `msg` (which stays with the caller).
    pub(crate) fn new(msg: &Message) -> Self {
        Self::new_in(msg, Vec::new())
    }

    /// Packs `msg` into `texts` (cleared first): a buffer given back by
    /// [`into_buffer`](Self::into_buffer) packs the next message without an allocation.
    pub(crate) fn new_in(msg: &Message, mut texts: Vec<u8>) -> Self {
        let mut len = 16 + msg.id.len() + msg.stream.len() + msg.content_type.len();
        if let Some(key) = &msg.key {
            len += 4 + key.len();
        }
        for (name, value) in &msg.headers {
            len += 8 + name.len() + value.len();
        }
        texts.clear();
        texts.reserve(len);
        let mut push = |s: &str| {
            // A text of 4 GiB or more cannot be on the bus (the bus holds it in memory
            // several times over before that); saturate rather than wrap.
            let n = u32::try_from(s.len()).unwrap_or(u32::MAX);
            texts.extend_from_slice(&n.to_le_bytes());
            texts.extend_from_slice(&s.as_bytes()[..n as usize]);
        };
        push(&msg.id);
        push(&msg.stream);
        if let Some(key) = &msg.key {
            push(key);
        }
        push(&msg.content_type);
        for (name, value) in &msg.headers {
            push(name);
            push(value);
        }
        Retained {
            texts,
            has_key: msg.key.is_some(),
            metadata: msg.metadata.clone(),
            data: msg.data.clone(),
            time: msg.time,
        }
    }

    /// The packing buffer, for the next [`new_in`](Self::new_in); `None` when it grew
    /// past [`KEPT_BUFFER`] (one huge message should not pin its size for good).
    pub(crate) fn into_buffer(self) -> Option<Vec<u8>> {
        (self.texts.capacity() <= KEPT_BUFFER).then_some(self.texts)
    }

    /// The message id, read without unpacking.
    pub(crate) fn id(&self) -> String {
        Texts(&self.texts).next().unwrap_or_default()
    }

    /// The message again, as it was packed.
    pub(crate) fn unpack(self) -> Message {
        let mut texts = Texts(&self.texts);
        let id = texts.next().unwrap_or_default();
        let stream = texts.next().unwrap_or_default();
        let key = if self.has_key { texts.next() } else { None };
        let content_type = texts.next().unwrap_or_default();
        let mut headers = streams_core::Headers::new();
        while let (Some(name), Some(value)) = (texts.next(), texts.next()) {
            headers.insert(name, value);
        }
        Message {
            id,
            stream,
            key,
            headers,
            metadata: self.metadata,
            content_type,
            data: self.data,
            time: self.time,
        }
    }
}

/// Reads the length-prefixed texts of a [`Retained`] buffer in order.
struct Texts<'a>(&'a [u8]);

impl Iterator for Texts<'_> {
    type Item = String;

    fn next(&mut self) -> Option<String> {
        let (len, rest) = self.0.split_first_chunk::<4>()?;
        let len = (u32::from_le_bytes(*len) as usize).min(rest.len());
        let (text, rest) = rest.split_at(len);
        self.0 = rest;
        // Written from `&str`s, so always UTF-8; lossy rather than a panic all the same.
        Some(String::from_utf8_lossy(text).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_comes_back_as_it_was_packed() {
        let mut msg = Message::new("orders", "payload")
            .with_key("k-1")
            .with_content_type("application/json")
            .with_header("a", "1")
            .with_header("ünï", "cödé");
        msg.metadata.insert_i64(streams_core::DELIVERY_ATTEMPT, 3);
        let retained = Retained::new(&msg);
        assert_eq!(retained.id(), msg.id);
        assert_eq!(retained.unpack(), msg);

        let bare = Message::new("s", Bytes::new()).with_id("");
        assert_eq!(Retained::new(&bare).unpack(), bare);
    }

    #[test]
    fn a_reused_buffer_packs_only_the_new_message() {
        let first = Message::new("orders", "a")
            .with_key("a-much-longer-key-than-the-next-one")
            .with_header("h", "v");
        let buffer = Retained::new(&first)
            .into_buffer()
            .expect("small buffer kept");
        assert!(buffer.capacity() > 0);
        let second = Message::new("o", "b");
        let again = Retained::new_in(&second, buffer);
        assert_eq!(again.unpack(), second);

        let huge = Message::new("s", "x").with_header("big", "y".repeat(KEPT_BUFFER));
        assert!(
            Retained::new(&huge).into_buffer().is_none(),
            "a buffer grown by a huge message is not kept"
        );
    }
}
