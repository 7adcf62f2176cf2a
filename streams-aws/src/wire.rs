//! The attribute wire format the SQS and SNS drivers share with the Go library: the
//! payload as the message body, `streams-*` message attributes around it.

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
/// Attribute holding the message time (Unix milliseconds from SQS writers, RFC 3339 from SNS
/// writers, as the Go library sends them).
pub const ATTR_MESSAGE_TIME: &str = "streams-message-time";
/// Attribute saying how the body encodes the payload when it is not the payload as
/// text: `base64`, or `empty` for an empty payload (SQS and SNS refuse empty bodies).
pub const ATTR_BODY_ENCODING: &str = "streams-body-encoding";
/// Attribute holding, as a JSON object, the headers that could not travel as attributes
/// of their own (AWS allows ten attributes and restricts their names).
pub const ATTR_HEADERS: &str = "streams-headers";

/// Most message attributes AWS accepts on one message.
pub const MAX_ATTRIBUTES: usize = 10;
/// [`ATTR_BODY_ENCODING`] value: the body is the payload in base64.
pub const ENCODING_BASE64: &str = "base64";
/// [`ATTR_BODY_ENCODING`] value: the payload is empty and the body a placeholder.
pub const ENCODING_EMPTY: &str = "empty";
const EMPTY_BODY: &str = "(empty)";

/// How [`ATTR_MESSAGE_TIME`] is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeFormat {
    /// Unix milliseconds as decimal text (the Go SQS writer).
    UnixMillis,
    /// RFC 3339 with milliseconds (the Go SNS writer).
    Rfc3339,
}

/// A message in wire form.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The message body.
    pub body: String,
    /// String attributes, name and value.
    pub attributes: Vec<(String, String)>,
    /// What AWS counts against its size limit: body plus attribute names, types, values.
    pub size: usize,
}

/// Whether AWS accepts the character in a body or attribute value (the XML 1.0 set).
fn xml_char(c: char) -> bool {
    matches!(c, '\u{9}' | '\u{A}' | '\u{D}' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}' | '\u{10000}'..='\u{10FFFF}')
}

/// Whether every character of `s` is one AWS accepts in a body or attribute value.
pub fn xml_safe(s: &str) -> bool {
    s.chars().all(xml_char)
}

/// Whether SQS and SNS accept `name` as a user attribute name (and it is not one of
/// ours).
pub fn attribute_name_ok(name: &str) -> bool {
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

/// The FIFO message group of a message, as the Go library sets it: the stream key, else
/// the stream name. (The deduplication id is the message id.)
pub fn message_group_id(msg: &Message) -> &str {
    msg.key.as_deref().unwrap_or(&msg.stream)
}

/// Encodes a message: the payload as text when it is XML-safe UTF-8 (so the Go library
/// reads it unchanged), base64 otherwise.
pub fn encode(msg: &Message, time: TimeFormat) -> Encoded {
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
            match time {
                TimeFormat::UnixMillis => msg.time.timestamp_millis().to_string(),
                TimeFormat::Rfc3339 => msg.time.to_rfc3339_opts(SecondsFormat::Millis, true),
            },
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
