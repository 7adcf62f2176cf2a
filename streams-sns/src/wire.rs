//! The SNS wire format shared with the Go library: message plus `streams-*` attributes.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use chrono::SecondsFormat;
use streams_core::Message;

/// Attribute holding the message id.
pub const ATTR_MESSAGE_ID: &str = "streams-message-id";
/// Attribute holding the stream name.
pub const ATTR_STREAM_NAME: &str = "streams-stream-name";
/// Attribute holding the stream key.
pub const ATTR_STREAM_KEY: &str = "streams-stream-key";
/// Attribute holding the content type.
pub const ATTR_CONTENT_TYPE: &str = "streams-content-type";
/// Attribute holding the message time (RFC 3339, as the Go SNS writer sends it).
pub const ATTR_MESSAGE_TIME: &str = "streams-message-time";
/// Attribute saying how the body encodes the payload when it is not the payload as
/// text: `base64`, or `empty` for an empty payload (SNS refuses empty messages).
pub const ATTR_BODY_ENCODING: &str = "streams-body-encoding";
/// Attribute holding, as a JSON object, the headers that could not travel as attributes
/// of their own (ten attributes reach SQS subscribers, and names are restricted).
pub const ATTR_HEADERS: &str = "streams-headers";

pub(crate) const MAX_ATTRIBUTES: usize = 10;
const ENCODING_BASE64: &str = "base64";
const ENCODING_EMPTY: &str = "empty";
const EMPTY_BODY: &str = "(empty)";

/// A message in SNS form.
#[derive(Debug, Clone)]
pub(crate) struct Encoded {
    pub(crate) body: String,
    pub(crate) attributes: Vec<(String, String)>,
    /// What SNS counts against its size limit: body plus attribute names, types, values.
    pub(crate) size: usize,
}

/// Whether SNS accepts the character in a message or attribute value (the XML 1.0 set).
fn xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

fn xml_safe(s: &str) -> bool {
    s.chars().all(xml_char)
}

/// Whether SNS and SQS accept `name` as a message attribute name.
fn attribute_name_ok(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
        && !name.starts_with('.')
        && !name.ends_with('.')
        && !name.contains("..")
        && !lower.starts_with("aws.")
        && !lower.starts_with("amazon.")
        && ![
            ATTR_MESSAGE_ID,
            ATTR_STREAM_NAME,
            ATTR_STREAM_KEY,
            ATTR_CONTENT_TYPE,
            ATTR_MESSAGE_TIME,
            ATTR_BODY_ENCODING,
            ATTR_HEADERS,
        ]
        .contains(&name)
}

/// Encodes a message: the payload as text when it is XML-safe UTF-8 (so the Go library
/// reads it unchanged), base64 otherwise.
pub(crate) fn encode(msg: &Message) -> Encoded {
    let (body, encoding) = if msg.data.is_empty() {
        (EMPTY_BODY.to_owned(), Some(ENCODING_EMPTY))
    } else {
        match std::str::from_utf8(&msg.data) {
            Ok(text) if xml_safe(text) => (text.to_owned(), None),
            _ => (BASE64.encode(&msg.data), Some(ENCODING_BASE64)),
        }
    };
    let mut attributes = vec![
        (ATTR_MESSAGE_ID.to_owned(), msg.id.clone()),
        (ATTR_STREAM_NAME.to_owned(), msg.stream.clone()),
        (
            ATTR_MESSAGE_TIME.to_owned(),
            msg.time.to_rfc3339_opts(SecondsFormat::Millis, true),
        ),
    ];
    let mut packed = BTreeMap::new();
    for (name, value) in [
        (ATTR_STREAM_KEY, msg.key.as_deref().unwrap_or_default()),
        (ATTR_CONTENT_TYPE, msg.content_type.as_str()),
    ] {
        if value.is_empty() {
            continue;
        }
        if xml_safe(value) {
            attributes.push((name.to_owned(), value.to_owned()));
        } else {
            packed.insert(name.to_owned(), value.to_owned());
        }
    }
    if let Some(encoding) = encoding {
        attributes.push((ATTR_BODY_ENCODING.to_owned(), encoding.to_owned()));
    }
    let mut direct = Vec::new();
    for (name, value) in &msg.headers {
        if attribute_name_ok(name) && !value.is_empty() && xml_safe(value) {
            direct.push((name.clone(), value.clone()));
        } else {
            packed.insert(name.clone(), value.clone());
        }
    }
    let fixed = attributes.len();
    if fixed + direct.len() + usize::from(!packed.is_empty()) > MAX_ATTRIBUTES {
        let room = MAX_ATTRIBUTES - fixed - 1;
        for (name, value) in direct.drain(room..) {
            packed.insert(name, value);
        }
    }
    attributes.extend(direct);
    if !packed.is_empty() {
        let json = serde_json::to_string(&packed).expect("a string map serializes");
        attributes.push((ATTR_HEADERS.to_owned(), json));
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(n, v)| n.len() + v.len() + "String".len())
            .sum::<usize>();
    Encoded {
        body,
        attributes,
        size,
    }
}

/// Whether SNS accepts `key` as a subject: ASCII, printable, starting with a letter,
/// digit or punctuation mark, at most 100 characters.
pub(crate) fn valid_subject(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 100
        && key.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
        && key.bytes().next().is_some_and(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_is_base64_and_text_is_not() {
        let e = encode(&Message::new("s", "héllo"));
        assert_eq!(e.body, "héllo");
        let e = encode(&Message::new("s", vec![0u8, 0xff]));
        assert_eq!(e.body, "AP8=");
        assert!(e
            .attributes
            .iter()
            .any(|(n, v)| n == ATTR_BODY_ENCODING && v == "base64"));
        let e = encode(&Message::new("s", "x").with_key("k"));
        let time = &e
            .attributes
            .iter()
            .find(|(n, _)| n == ATTR_MESSAGE_TIME)
            .unwrap()
            .1;
        assert!(time.ends_with('Z'), "{time}");
    }

    #[test]
    fn subjects() {
        assert!(valid_subject("customer-7"));
        assert!(!valid_subject(""));
        assert!(!valid_subject("kéy"));
        assert!(!valid_subject("a\nb"));
        assert!(!valid_subject(" lead"));
        assert!(!valid_subject(&"x".repeat(101)));
    }
}
