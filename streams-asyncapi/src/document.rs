//! Building, reading and writing AsyncAPI 3.0 documents.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{json, Map, Value};
use streams_core::EventRegistry;

use crate::platform::Platform;
use crate::schema::{component_key, escape_pointer, relocate, COMPONENTS_SCHEMAS};
use crate::{Error, Result};

/// The AsyncAPI version documents are written in.
pub const ASYNCAPI_VERSION: &str = "3.0.0";

/// Builds the AsyncAPI 3.0 document of an [`EventRegistry`]: channels are streams,
/// messages are event types with their JSON Schema, description and example (see
/// [`contract`](crate::contract)), one server per connection URL with its protocol
/// bindings and the headers its driver sets.
///
/// ```
/// use streams_core::{Event, EventContract, EventRegistry};
/// use streams_asyncapi::AsyncApi;
///
/// /// An order was placed.
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// struct OrderPlaced { order_id: String, total_cents: u64 }
///
/// impl Event for OrderPlaced {
///     fn contract() -> EventContract<Self> {
///         streams_asyncapi::contract::<Self>()
///     }
/// }
///
/// let registry = EventRegistry::new();
/// registry.register::<OrderPlaced>("orders.placed");
/// let doc = AsyncApi::new("orders", "1.2.0")
///     .with_server("production", "kafka://broker-1:9092")
///     .build(&registry)
///     .unwrap();
/// let yaml = doc.to_yaml().unwrap();
/// assert!(yaml.contains("address: orders.placed"), "{yaml}");
/// assert!(yaml.contains("protocol: kafka"), "{yaml}");
/// ```
#[derive(Debug, Clone)]
pub struct AsyncApi {
    title: String,
    version: String,
    description: Option<String>,
    servers: Vec<(String, String)>,
}

impl AsyncApi {
    /// A document titled `title` (the service), at `version` (of its contract).
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        AsyncApi {
            title: title.into(),
            version: version.into(),
            description: None,
            servers: Vec::new(),
        }
    }

    /// What the service does.
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = Some(description.into());
        self
    }

    /// A server named `name`, from a connection URL as [`streams::connect`] takes it
    /// (`kafka://...`, `sqs://...`, `sns://...`, `nats://...`, `redis://...`,
    /// `amqp://...`). User and password never reach the document. Checked by
    /// [`build`](Self::build).
    ///
    /// [`streams::connect`]: https://docs.rs/streams/latest/streams/fn.connect.html
    pub fn with_server(mut self, name: impl Into<String>, url: impl Into<String>) -> Self {
        self.servers.push((name.into(), url.into()));
        self
    }

    /// The document. Does no I/O.
    ///
    /// # Errors
    ///
    /// [`Error::Registry`] when an event's example cannot be encoded;
    /// [`Error::Invalid`] when two event types have the same name (give one another with
    /// `EventContract::with_name`) or a server URL names no broker.
    pub fn build(&self, registry: &EventRegistry) -> Result<Document> {
        let events = registry.events()?;
        let mut schemas: BTreeMap<String, Value> = BTreeMap::new();
        let mut messages = Map::new();
        let mut channels: BTreeMap<String, (String, Map<String, Value>)> = BTreeMap::new();
        let mut type_of_key: BTreeMap<String, &str> = BTreeMap::new();
        let mut channel_ids: BTreeMap<String, String> = BTreeMap::new();
        for event in &events {
            let key = component_key(&event.name);
            if let Some(other) = type_of_key.insert(key.clone(), event.type_name) {
                return Err(Error::Invalid(format!(
                    "events `{other}` and `{}` are both named `{key}` in the document: give one another name with EventContract::with_name",
                    event.type_name
                )));
            }
            let mut message = Map::new();
            message.insert("name".into(), json!(event.name));
            message.insert("title".into(), json!(event.name));
            if let Some(d) = &event.description {
                if let Some(first) = d.lines().next().filter(|l| !l.trim().is_empty()) {
                    message.insert("summary".into(), json!(first.trim()));
                }
                message.insert("description".into(), json!(d));
            }
            let content_type = event
                .content_types
                .first()
                .cloned()
                .unwrap_or_else(|| streams_core::CONTENT_TYPE_JSON.to_owned());
            message.insert("contentType".into(), json!(content_type));
            if let Some(schema) = &event.schema {
                let name = relocate(schema.clone(), &key, &mut schemas);
                message.insert(
                    "payload".into(),
                    json!({"$ref": format!("{COMPONENTS_SCHEMAS}{}", escape_pointer(&name))}),
                );
            }
            if let Some(example) = &event.example {
                message.insert(
                    "examples".into(),
                    json!([{"name": "example", "payload": example}]),
                );
            }
            message.insert("x-streams-type".into(), json!(event.type_name));
            if event.content_types.len() > 1 {
                message.insert("x-streams-content-types".into(), json!(event.content_types));
            }
            messages.insert(key.clone(), Value::Object(message));

            let taken: BTreeSet<&String> = channel_ids.values().collect();
            let id = match channel_ids.get(&event.stream) {
                Some(id) => id.clone(),
                None => {
                    let base = component_key(&event.stream);
                    let id = std::iter::once(base.clone())
                        .chain((2..).map(|i| format!("{base}{i}")))
                        .find(|c| !taken.contains(c))
                        .unwrap_or(base);
                    channel_ids.insert(event.stream.clone(), id.clone());
                    id
                }
            };
            channels
                .entry(id)
                .or_insert_with(|| (event.stream.clone(), Map::new()))
                .1
                .insert(
                    key.clone(),
                    json!({"$ref": format!("#/components/messages/{}", escape_pointer(&key))}),
                );
        }

        let mut info = json!({"title": self.title, "version": self.version});
        if let Some(d) = &self.description {
            info["description"] = json!(d);
        }
        let channels: Map<String, Value> = channels
            .into_iter()
            .map(|(id, (address, messages))| {
                (id, json!({"address": address, "messages": messages}))
            })
            .collect();
        let mut components = Map::new();
        if !messages.is_empty() {
            components.insert("messages".into(), Value::Object(messages));
        }
        if !schemas.is_empty() {
            components.insert(
                "schemas".into(),
                Value::Object(schemas.into_iter().collect()),
            );
        }
        let mut doc = Document {
            value: json!({
                "asyncapi": ASYNCAPI_VERSION,
                "info": info,
                "defaultContentType": streams_core::CONTENT_TYPE_JSON,
                "channels": channels,
                "components": components,
            }),
        };
        for (name, url) in &self.servers {
            doc = doc.with_server(name, url)?;
        }
        Ok(doc)
    }
}

/// An AsyncAPI 3 document, as built by [`AsyncApi`] or read with [`Document::parse`].
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    value: Value,
}

impl Document {
    /// Reads a document written as JSON or YAML.
    ///
    /// ```
    /// let doc = streams_asyncapi::Document::parse("asyncapi: 3.0.0\ninfo: {title: t, version: '1'}\n").unwrap();
    /// assert_eq!(doc.as_value()["info"]["title"], "t");
    /// assert!(streams_asyncapi::Document::parse("{\"openapi\": \"3.1.0\"}").is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Unreadable`] for text that is neither, or that is not an AsyncAPI 3
    /// document.
    pub fn parse(text: &str) -> Result<Document> {
        Document::from_value(parse_value(text)?)
    }

    /// Takes a document already read.
    ///
    /// # Errors
    ///
    /// [`Error::Unreadable`] when `value` has no `asyncapi: 3.x` field.
    pub fn from_value(value: Value) -> Result<Document> {
        match value.get("asyncapi") {
            Some(Value::String(v)) if v.starts_with("3.") => Ok(Document { value }),
            Some(v) => Err(Error::Unreadable(format!(
                "AsyncAPI {} is not supported; documents must be AsyncAPI 3",
                v.as_str().map_or_else(|| v.to_string(), str::to_owned)
            ))),
            None => Err(Error::Unreadable(
                "not an AsyncAPI document (no `asyncapi` field)".into(),
            )),
        }
    }

    /// The document as JSON.
    pub fn as_value(&self) -> &Value {
        &self.value
    }

    /// Adds a server named `name` for the connection URL `url`, with the protocol's
    /// bindings on every channel and message and the headers its driver sets (a
    /// program writes its document without knowing where it runs; `streams asyncapi
    /// --url` adds that).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a URL that names no broker (`memory://`, an outbox,
    /// an unknown scheme) or a server name already in the document.
    pub fn with_server(mut self, name: &str, url: &str) -> Result<Document> {
        let platform = Platform::parse(url)?;
        let key = component_key(name);
        let root = self
            .value
            .as_object_mut()
            .ok_or_else(|| Error::Unreadable("the document is not an object".into()))?;
        let servers = root
            .entry("servers")
            .or_insert_with(|| json!({}))
            .as_object_mut()
            .ok_or_else(|| Error::Unreadable("`servers` is not an object".into()))?;
        if servers.contains_key(&key) {
            return Err(Error::Invalid(format!(
                "the document already has a server named `{key}`"
            )));
        }
        servers.insert(key, platform.server());

        if let Some(Value::Object(channels)) = root.get_mut("channels") {
            for (id, channel) in channels.iter_mut() {
                // A reference may have no siblings; the channel it names gets them.
                if channel.get("$ref").is_some() {
                    continue;
                }
                let address = channel
                    .get("address")
                    .and_then(Value::as_str)
                    .unwrap_or(id)
                    .to_owned();
                if let Some(binding) = platform.channel_binding(&address) {
                    insert_binding(channel, platform.protocol, binding);
                }
            }
        }
        if let Some(Value::Object(messages)) = root
            .get_mut("components")
            .and_then(|c| c.get_mut("messages"))
        {
            for message in messages.values_mut() {
                if message.get("$ref").is_some() {
                    continue;
                }
                if let Some(binding) = platform.message_binding() {
                    insert_binding(message, platform.protocol, binding);
                }
                merge_headers(message, platform.headers());
            }
        }
        Ok(self)
    }

    /// The document as pretty JSON.
    pub fn to_json(&self) -> String {
        // A `Value` always has a JSON form.
        serde_json::to_string_pretty(&TopLevelOrder(&self.value)).unwrap_or_default() + "\n"
    }

    /// The document as YAML.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] if the YAML writer fails (it does not for JSON values).
    pub fn to_yaml(&self) -> Result<String> {
        serde_norway::to_string(&TopLevelOrder(&self.value))
            .map_err(|e| Error::Invalid(format!("YAML: {e}")))
    }
}

/// Writes the top-level fields in the order of the specification (`asyncapi`, `info`,
/// servers, channels, ... ) rather than alphabetically, so a person reads the document
/// from its title down.
struct TopLevelOrder<'a>(&'a Value);

impl serde::Serialize for TopLevelOrder<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap as _;
        const ORDER: [&str; 8] = [
            "asyncapi",
            "id",
            "info",
            "defaultContentType",
            "servers",
            "channels",
            "operations",
            "components",
        ];
        let Value::Object(map) = self.0 else {
            return self.0.serialize(serializer);
        };
        let mut out = serializer.serialize_map(Some(map.len()))?;
        for key in ORDER {
            if let Some(v) = map.get(key) {
                out.serialize_entry(key, v)?;
            }
        }
        for (k, v) in map.iter().filter(|(k, _)| !ORDER.contains(&k.as_str())) {
            out.serialize_entry(k, v)?;
        }
        out.end()
    }
}

fn insert_binding(object: &mut Value, protocol: &str, binding: Value) {
    if let Value::Object(o) = object {
        if let Value::Object(b) = o.entry("bindings").or_insert_with(|| json!({})) {
            b.insert(protocol.to_owned(), binding);
        }
    }
}

/// Adds the properties of `headers` to the message's headers schema (a document with
/// servers of several platforms lists every driver's headers).
fn merge_headers(message: &mut Value, headers: Value) {
    let Value::Object(m) = message else { return };
    match m.get_mut("headers") {
        Some(Value::Object(existing)) if existing.get("$ref").is_none() => {
            if let (Some(Value::Object(props)), Value::Object(new)) =
                (existing.get_mut("properties"), headers)
            {
                if let Some(Value::Object(new_props)) = new.get("properties") {
                    for (k, v) in new_props {
                        props.entry(k.clone()).or_insert_with(|| v.clone());
                    }
                }
            }
        }
        Some(_) => {}
        None => {
            m.insert("headers".into(), headers);
        }
    }
}

/// Reads JSON or YAML text into a value.
pub(crate) fn parse_value(text: &str) -> Result<Value> {
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(Error::Unreadable("the input is empty".into()));
    }
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        if let Ok(v) = serde_json::from_str(text) {
            return Ok(v);
        }
    }
    serde_norway::from_str::<Value>(text)
        .map_err(|e| Error::Unreadable(format!("neither JSON nor YAML: {e}")))
}
