use std::any::{type_name, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::sync::RwLock;

use crate::{CodecRegistry, Error, Headers, Result};

/// What a contract document (an AsyncAPI document, for instance) says about an event
/// type: its name, a description, an example and the JSON Schema of its payload.
///
/// [`Event::contract`] returns one; the registry keeps a way to ask for it, so an event
/// is registered once and documented from that one registration. `streams_core` writes
/// no schema itself: `streams_asyncapi::contract` derives one with `schemars`.
///
/// ```
/// use streams_core::{Event, EventContract};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Refunded { payment_id: String }
///
/// impl Event for Refunded {
///     fn contract() -> EventContract<Self> {
///         EventContract::new()
///             .with_description("A payment was refunded in full.")
///             .with_example(Refunded { payment_id: "pay-1".into() })
///     }
/// }
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct EventContract<E> {
    name: Option<String>,
    description: Option<String>,
    example: Option<E>,
    schema: Option<serde_json::Value>,
}

impl<E> Default for EventContract<E> {
    fn default() -> Self {
        EventContract {
            name: None,
            description: None,
            example: None,
            schema: None,
        }
    }
}

impl<E> EventContract<E> {
    /// A contract that says nothing: the name is the type's, without its module path.
    pub fn new() -> Self {
        Self::default()
    }

    /// The event's name in documents (default: the type's name without its module
    /// path, `PaymentCreated` for `payments::PaymentCreated`).
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// What the event means, for people reading the document.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// An example of the event.
    pub fn with_example(mut self, example: E) -> Self {
        self.example = Some(example);
        self
    }

    /// The JSON Schema of the event's payload (as it is encoded in JSON).
    pub fn with_schema(mut self, schema: serde_json::Value) -> Self {
        self.schema = Some(schema);
        self
    }

    /// The name set with [`with_name`](Self::with_name).
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The description.
    pub fn description(&self) -> Option<&str> {
        self.description.as_deref()
    }

    /// The example.
    pub fn example(&self) -> Option<&E> {
        self.example.as_ref()
    }

    /// The JSON Schema of the payload.
    pub fn schema(&self) -> Option<&serde_json::Value> {
        self.schema.as_ref()
    }
}

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

    /// What a contract document says about this event type (see [`EventContract`]):
    /// nothing but its name by default. Override it to give a description, an example
    /// and a JSON Schema, e.g. with `streams_asyncapi::contract::<Self>()`.
    fn contract() -> EventContract<Self>
    where
        Self: Sized,
    {
        EventContract::new()
    }
}

/// One registered event type, as [`EventRegistry::events`] lists it: everything a
/// contract document needs, with the example already encoded as JSON.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RegisteredEvent {
    /// The Rust type (`std::any::type_name`).
    pub type_name: &'static str,
    /// The name documents use: [`EventContract::with_name`], or the type's name
    /// without module paths.
    pub name: String,
    /// The stream it is published on.
    pub stream: String,
    /// The content types its codecs read, the first being the one documents show.
    pub content_types: Vec<String>,
    /// What it means.
    pub description: Option<String>,
    /// An example, as JSON.
    pub example: Option<serde_json::Value>,
    /// The JSON Schema of the payload.
    pub schema: Option<serde_json::Value>,
}

/// Per registered type: its name, its stream and how to describe it.
#[derive(Clone)]
struct Entry {
    type_name: &'static str,
    stream: String,
    describe: fn() -> Result<Described>,
}

/// What [`Event::contract`] and [`Event::codecs`] say, without the type.
struct Described {
    name: Option<String>,
    content_types: Vec<String>,
    description: Option<String>,
    example: Option<serde_json::Value>,
    schema: Option<serde_json::Value>,
}

fn describe<E: Event>() -> Result<Described> {
    let contract = E::contract();
    let example = match contract.example {
        Some(e) => Some(serde_json::to_value(&e).map_err(|e| Error::Encode {
            content_type: crate::CONTENT_TYPE_JSON.into(),
            source: format!("the example of {}: {e}", type_name::<E>()).into(),
        })?),
        None => None,
    };
    Ok(Described {
        name: contract.name,
        content_types: E::codecs()
            .content_types()
            .into_iter()
            .map(str::to_owned)
            .collect(),
        description: contract.description,
        example,
        schema: contract.schema,
    })
}

/// `Order` for `shop::Order`, `Envelope<Order>` for `shop::Envelope<shop::Order>`.
pub(crate) fn short_type_name(full: &str) -> String {
    let mut out = String::with_capacity(full.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        out.push_str(word.rsplit("::").next().unwrap_or(word));
        word.clear();
    };
    for c in full.chars() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            word.push(c);
        } else {
            flush(&mut word, &mut out);
            out.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
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
    streams: RwLock<HashMap<TypeId, Entry>>,
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
            .insert(
                TypeId::of::<E>(),
                Entry {
                    type_name: type_name::<E>(),
                    stream: stream.into(),
                    describe: describe::<E>,
                },
            );
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
            .map(|e| e.stream.clone())
            .ok_or(Error::EventNotRegistered(type_name::<E>()))
    }

    /// Every registered event type with its stream and [contract](Event::contract),
    /// ordered by stream, then name.
    ///
    /// ```
    /// use streams_core::{Event, EventContract, EventRegistry};
    ///
    /// #[derive(serde::Serialize, serde::Deserialize)]
    /// struct Shipped { parcel: String }
    /// impl Event for Shipped {
    ///     fn contract() -> EventContract<Self> {
    ///         EventContract::new().with_example(Shipped { parcel: "P-1".into() })
    ///     }
    /// }
    ///
    /// let registry = EventRegistry::new();
    /// registry.register::<Shipped>("logistics.shipped");
    /// let events = registry.events().unwrap();
    /// assert_eq!(events[0].name, "Shipped");
    /// assert_eq!(events[0].content_types, ["application/json"]);
    /// assert_eq!(events[0].example, Some(serde_json::json!({"parcel": "P-1"})));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when an event's example cannot be encoded as JSON.
    pub fn events(&self) -> Result<Vec<RegisteredEvent>> {
        let entries: Vec<Entry> = self
            .streams
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect();
        // The contracts are built outside the lock: they may take a while (schemas).
        let mut events = Vec::with_capacity(entries.len());
        for Entry {
            type_name,
            stream,
            describe,
        } in entries
        {
            let d = describe()?;
            events.push(RegisteredEvent {
                type_name,
                name: d.name.unwrap_or_else(|| short_type_name(type_name)),
                stream,
                content_types: d.content_types,
                description: d.description,
                example: d.example,
                schema: d.schema,
            });
        }
        events.sort_by(|a, b| (&a.stream, &a.name).cmp(&(&b.stream, &b.name)));
        Ok(events)
    }
}

impl fmt::Debug for EventRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let map = self.streams.read().unwrap_or_else(|e| e.into_inner());
        f.debug_map()
            .entries(map.values().map(|e| (e.type_name, &e.stream)))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names_drop_module_paths_also_in_generics() {
        assert_eq!(short_type_name("shop::Order"), "Order");
        assert_eq!(short_type_name("Order"), "Order");
        assert_eq!(
            short_type_name("a::Envelope<b::c::Order, u32>"),
            "Envelope<Order, u32>"
        );
    }

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Plain;
    impl Event for Plain {}

    #[derive(serde::Serialize, serde::Deserialize)]
    struct Named {
        n: u8,
    }
    impl Event for Named {
        fn contract() -> EventContract<Self> {
            EventContract::new()
                .with_name("renamed")
                .with_description("d")
                .with_schema(serde_json::json!({"type": "object"}))
                .with_example(Named { n: 1 })
        }
    }

    /// Serializing fails: a map with non-string keys has no JSON form.
    #[derive(serde::Serialize, serde::Deserialize)]
    struct BadExample(std::collections::BTreeMap<(u8, u8), u8>);
    impl Event for BadExample {
        fn contract() -> EventContract<Self> {
            EventContract::new().with_example(BadExample([((1, 2), 3)].into()))
        }
    }

    #[test]
    fn events_lists_contracts_in_stream_order() {
        let r = EventRegistry::new();
        r.register::<Plain>("z");
        r.register::<Named>("a");
        let events = r.events().unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].name, "renamed");
        assert_eq!(events[0].stream, "a");
        assert_eq!(events[0].description.as_deref(), Some("d"));
        assert_eq!(events[0].example, Some(serde_json::json!({"n": 1})));
        assert_eq!(events[1].name, "Plain");
        assert_eq!(events[1].schema, None);
        assert_eq!(events[1].content_types, ["application/json"]);
    }

    #[test]
    fn an_example_without_json_form_is_an_error_naming_the_type() {
        let r = EventRegistry::new();
        r.register::<BadExample>("x");
        let e = r.events().unwrap_err().to_string();
        assert!(e.contains("BadExample"), "{e}");
    }
}
