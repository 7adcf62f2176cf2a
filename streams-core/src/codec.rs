use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::message::{CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF};
use crate::{Error, Message, Result};

/// Encodes and decodes values of type `T` in one content type.
///
/// The codec is generic over the value so that each format states what it needs:
/// [`JsonCodec`] works with serde types, [`ProtobufCodec`] with prost messages.
pub trait Codec<T>: Send + Sync + 'static {
    /// The MIME type this codec reads and writes.
    fn content_type(&self) -> &str;

    /// Encodes a value.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the value cannot be represented.
    fn encode(&self, value: &T) -> Result<Bytes>;

    /// Decodes a value.
    ///
    /// # Errors
    ///
    /// [`Error::Decode`] when the bytes are not a valid `T`.
    fn decode(&self, data: &[u8]) -> Result<T>;
}

/// JSON through serde_json (`application/json`).
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl<T> Codec<T> for JsonCodec
where
    T: serde::Serialize + serde::de::DeserializeOwned,
{
    fn content_type(&self) -> &str {
        CONTENT_TYPE_JSON
    }

    fn encode(&self, value: &T) -> Result<Bytes> {
        serde_json::to_vec(value)
            .map(Bytes::from)
            .map_err(|e| Error::Encode {
                content_type: CONTENT_TYPE_JSON.into(),
                source: e.into(),
            })
    }

    fn decode(&self, data: &[u8]) -> Result<T> {
        json_decode(data)
    }
}

fn json_decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Result<T> {
    serde_json::from_slice(data).map_err(|e| Error::Decode {
        content_type: CONTENT_TYPE_JSON.into(),
        source: e.into(),
    })
}

/// Protocol Buffers through prost (`application/x-google-protobuf`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ProtobufCodec;

impl<T> Codec<T> for ProtobufCodec
where
    T: prost::Message + Default,
{
    fn content_type(&self) -> &str {
        CONTENT_TYPE_PROTOBUF
    }

    fn encode(&self, value: &T) -> Result<Bytes> {
        Ok(Bytes::from(value.encode_to_vec()))
    }

    fn decode(&self, data: &[u8]) -> Result<T> {
        T::decode(data).map_err(|e| Error::Decode {
            content_type: CONTENT_TYPE_PROTOBUF.into(),
            source: e.into(),
        })
    }
}

/// The codecs that can decode a type, by content type.
///
/// ```
/// use streams_core::{CodecRegistry, JsonCodec, ProtobufCodec};
///
/// #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
/// struct Ping { #[prost(uint32, tag = "1")] seq: u32 }
///
/// let codecs = CodecRegistry::<Ping>::json().with_codec(ProtobufCodec);
/// assert_eq!(codecs.content_types(), vec!["application/json", "application/x-google-protobuf"]);
/// let ping: Ping = codecs.decode("application/json", br#"{"seq":3}"#).unwrap();
/// assert_eq!(ping.seq, 3);
/// ```
pub struct CodecRegistry<T> {
    codecs: BTreeMap<String, Arc<dyn Codec<T>>>,
}

impl<T: 'static> CodecRegistry<T> {
    /// An empty registry; it decodes nothing until codecs are added.
    pub fn new() -> Self {
        CodecRegistry {
            codecs: BTreeMap::new(),
        }
    }

    /// Adds a codec under its content type, replacing one registered there.
    pub fn with_codec(mut self, codec: impl Codec<T>) -> Self {
        self.insert(Arc::new(codec));
        self
    }

    /// Adds a shared codec under its content type, replacing one registered there.
    pub fn insert(&mut self, codec: Arc<dyn Codec<T>>) {
        self.codecs.insert(codec.content_type().to_owned(), codec);
    }

    /// The codec for a content type. Parameters after `;` (such as `charset`) and
    /// letter case are ignored.
    pub fn get(&self, content_type: &str) -> Option<&Arc<dyn Codec<T>>> {
        if let Some(codec) = self.codecs.get(content_type) {
            return Some(codec);
        }
        self.codecs.get(&essence(content_type))
    }

    /// The registered content types, sorted.
    pub fn content_types(&self) -> Vec<&str> {
        self.codecs.keys().map(String::as_str).collect()
    }

    /// Decodes `data` with the codec for `content_type`.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownContentType`] listing the supported types, or the codec's
    /// [`Error::Decode`].
    pub fn decode(&self, content_type: &str, data: &[u8]) -> Result<T> {
        match self.get(content_type) {
            Some(codec) => codec.decode(data),
            None => Err(Error::UnknownContentType {
                content_type: content_type.to_owned(),
                supported: self.content_types().join(", "),
            }),
        }
    }
}

/// The media type of a content type without parameters (`; charset=...`), in lower case.
fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

// Decoding lives with the codecs, so the message model does not depend on them.
impl Message {
    /// Decodes the payload with the codec the registry holds for the message's content
    /// type.
    ///
    /// # Errors
    ///
    /// [`Error::UnknownContentType`](crate::Error::UnknownContentType) when the registry
    /// has no codec for the content type, [`Error::Decode`](crate::Error::Decode) when the
    /// payload does not decode. Neither is retryable.
    ///
    /// ```
    /// use streams_core::{CodecRegistry, Message, CONTENT_TYPE_JSON};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    /// struct Order { id: u32 }
    ///
    /// let msg = Message::new("orders", r#"{"id":7}"#).with_content_type(CONTENT_TYPE_JSON);
    /// let order: Order = msg.decode_with(&CodecRegistry::json()).unwrap();
    /// assert_eq!(order, Order { id: 7 });
    ///
    /// let bad = Message::new("orders", "{").with_content_type("text/csv");
    /// assert!(bad.decode_with::<Order>(&CodecRegistry::json()).is_err());
    /// ```
    pub fn decode_with<T: 'static>(&self, codecs: &CodecRegistry<T>) -> Result<T> {
        codecs.decode(&self.content_type, &self.data)
    }

    /// Decodes a JSON payload into a serde type, whatever the registry.
    ///
    /// # Errors
    ///
    /// As [`Message::decode_with`] with a JSON-only registry.
    pub fn decode_json<T: serde::de::DeserializeOwned>(&self) -> Result<T> {
        if essence(&self.content_type) != CONTENT_TYPE_JSON {
            return Err(Error::UnknownContentType {
                content_type: self.content_type.clone(),
                supported: CONTENT_TYPE_JSON.into(),
            });
        }
        json_decode(&self.data)
    }
}

impl<T> CodecRegistry<T>
where
    T: serde::Serialize + 'static + serde::de::DeserializeOwned,
{
    /// A registry holding the JSON codec.
    pub fn json() -> Self {
        Self::new().with_codec(JsonCodec)
    }
}

impl<T: 'static> Default for CodecRegistry<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> Clone for CodecRegistry<T> {
    fn clone(&self) -> Self {
        CodecRegistry {
            codecs: self.codecs.clone(),
        }
    }
}

impl<T: 'static> fmt::Debug for CodecRegistry<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CodecRegistry")
            .field("content_types", &self.content_types())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, PartialEq, prost::Message, serde::Serialize, serde::Deserialize)]
    struct Sample {
        #[prost(string, tag = "1")]
        name: String,
        #[prost(int64, tag = "2")]
        count: i64,
    }

    fn both() -> CodecRegistry<Sample> {
        CodecRegistry::json().with_codec(ProtobufCodec)
    }

    #[test]
    fn round_trips_in_both_formats() {
        let v = Sample {
            name: "a".into(),
            count: 3,
        };
        for ct in [CONTENT_TYPE_JSON, CONTENT_TYPE_PROTOBUF] {
            let codec = both().get(ct).unwrap().clone();
            let bytes = codec.encode(&v).unwrap();
            assert_eq!(both().decode(ct, &bytes).unwrap(), v);
        }
    }

    #[test]
    fn content_type_parameters_are_ignored() {
        let v: Sample = both()
            .decode(
                "Application/JSON; charset=utf-8",
                br#"{"name":"x","count":1}"#,
            )
            .unwrap();
        assert_eq!(v.count, 1);
    }

    #[test]
    fn unknown_content_type_lists_supported() {
        let err = both().decode("text/csv", b"a,b").unwrap_err();
        assert!(matches!(err, Error::UnknownContentType { .. }));
        assert!(err.to_string().contains("application/json"));
        assert!(!err.is_retryable());
    }

    #[test]
    fn garbage_is_a_decode_error_not_a_panic() {
        let err = both().decode(CONTENT_TYPE_JSON, b"\xff\x00{").unwrap_err();
        assert!(matches!(err, Error::Decode { .. }));
        let err = both()
            .decode(CONTENT_TYPE_PROTOBUF, b"\xff\xff\xff\xff\xff\xff")
            .unwrap_err();
        assert!(matches!(err, Error::Decode { .. }));
    }
}
