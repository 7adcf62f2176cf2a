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

/// A message packed for a possible redelivery: see the module docs.
pub(crate) struct Retained {
    /// id, stream, key (when present), content type, then each header's name and value,
    /// each as a little-endian `u32` length and the UTF-8 bytes.
    texts: Box<[u8]>,
    has_key: bool,
    metadata: Metadata,
    data: Bytes,
    time: DateTime<Utc>,
}

impl Retained {
    /// Packs `msg` (which stays with the caller).
    pub(crate) fn new(msg: &Message) -> Self {
        let mut len = 16 + msg.id.len() + msg.stream.len() + msg.content_type.len();
        if let Some(key) = &msg.key {
            len += 4 + key.len();
        }
        for (name, value) in &msg.headers {
            len += 8 + name.len() + value.len();
        }
        let mut texts = Vec::with_capacity(len);
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
            texts: texts.into_boxed_slice(),
            has_key: msg.key.is_some(),
            metadata: msg.metadata.clone(),
            data: msg.data.clone(),
            time: msg.time,
        }
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
}
