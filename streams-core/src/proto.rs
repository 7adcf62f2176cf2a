//! Protocol Buffers messages of the outbox format, byte-compatible with the Go
//! library's `streams.TransportMessageBatch`.

use std::collections::BTreeMap;

/// `streams.TransportMessage`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TransportMessage {
    #[prost(string, tag = "1")]
    pub(crate) message_id: String,
    #[prost(string, tag = "2")]
    pub(crate) stream_name: String,
    #[prost(string, tag = "3")]
    pub(crate) stream_key: String,
    #[prost(btree_map = "string, string", tag = "4")]
    pub(crate) headers: BTreeMap<String, String>,
    #[prost(string, tag = "5")]
    pub(crate) content_type: String,
    #[prost(bytes = "bytes", tag = "6")]
    pub(crate) data: bytes::Bytes,
    #[prost(message, optional, tag = "7")]
    pub(crate) time: Option<prost_types::Timestamp>,
}

/// `streams.TransportMessageBatch`.
#[derive(Clone, PartialEq, prost::Message)]
pub(crate) struct TransportMessageBatch {
    #[prost(message, repeated, tag = "1")]
    pub(crate) messages: Vec<TransportMessage>,
}
