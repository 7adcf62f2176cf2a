use std::any::{type_name, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use crate::{CodecRegistry, Error, Headers, Result};

/// A typed domain event carried in a message.
///
/// Implement it on serde types; the key and headers are optional.
///
/// ```
/// use streams_core::Event;
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct OrderPlaced { order_id: String, total_cents: u64 }
///
/// impl Event for OrderPlaced {
///     fn key(&self) -> Option<String> { Some(self.order_id.clone()) }
/// }
/// ```
pub trait Event: serde::Serialize + serde::de::DeserializeOwned + Send + Sync + 'static {
    /// Partition or ordering key of the message carrying this event.
    fn key(&self) -> Option<String> {
        None
    }

    /// Headers of the message carrying this event.
    fn headers(&self) -> Headers {
        Headers::new()
    }

    /// Codecs typed subscribers decode this event with, by content type. JSON by
    /// default; a type that also derives `prost::Message` can add
    /// [`ProtobufCodec`](crate::ProtobufCodec).
    fn codecs() -> CodecRegistry<Self>
    where
        Self: Sized,
    {
        CodecRegistry::json()
    }
}

/// Maps event types to the streams they are published on.
///
/// ```
/// use streams_core::{Event, EventRegistry};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Shipped;
/// impl Event for Shipped {}
///
/// let registry = EventRegistry::new();
/// registry.register::<Shipped>("logistics.shipped");
/// assert_eq!(registry.stream_of::<Shipped>().unwrap(), "logistics.shipped");
/// ```
#[derive(Default)]
pub struct EventRegistry {
    streams: RwLock<HashMap<TypeId, (&'static str, String)>>,
}

impl EventRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the stream of an event type, replacing an earlier registration.
    pub fn register<E: Event>(&self, stream: impl Into<String>) {
        self.streams
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(TypeId::of::<E>(), (type_name::<E>(), stream.into()));
    }

    /// The stream of an event type.
    ///
    /// # Errors
    ///
    /// [`Error::EventNotRegistered`] naming the type.
    pub fn stream_of<E: Event>(&self) -> Result<String> {
        self.streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&TypeId::of::<E>())
            .map(|(_, s)| s.clone())
            .ok_or(Error::EventNotRegistered(type_name::<E>()))
    }
}

impl fmt::Debug for EventRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.streams.read().unwrap_or_else(|e| e.into_inner());
        f.debug_map()
            .entries(map.values().map(|(t, s)| (t, s)))
            .finish()
    }
}
