//! The SNS wire format shared with the Go library: message plus `streams-*` attributes.

use streams_core::Message;

pub(crate) use streams_aws::Encoded;
pub use streams_aws::{
    ATTR_BODY_ENCODING, ATTR_CONTENT_TYPE, ATTR_HEADERS, ATTR_MESSAGE_ID, ATTR_MESSAGE_TIME,
    ATTR_STREAM_KEY, ATTR_STREAM_NAME,
};

/// Encodes a message the way the Go library's SNS writer lays it out.
pub(crate) fn encode(msg: &Message) -> Encoded {
    streams_aws::encode(msg, streams_aws::TimeFormat::Rfc3339)
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
