//! Whether a new version of an event contract breaks consumers of the old one.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fmt;

use serde_json::Value;

use crate::document::parse_value;
use crate::schema::resolve_pointer;
use crate::{Error, Result};

/// How deep the comparison follows nested schemas; deeper parts are not compared.
/// Refs are followed once per pair, so a `$ref` cycle ends long before this.
const MAX_DEPTH: usize = 64;
/// How many `$ref`s in a row are followed before a chain counts as a loop.
const MAX_REF_HOPS: usize = 32;

/// A rule of the check. Every rule is a change that breaks consumers; additions they
/// ignore (a new optional field, a new event, a widened enum) break nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Rule {
    /// An event of the old document is not in the new one.
    EventRemoved,
    /// The event moved to another stream (channel address).
    StreamChanged,
    /// The event's content type changed.
    ContentTypeChanged,
    /// A field is gone (or renamed: a rename is a removal plus an addition).
    FieldRemoved,
    /// A field became required, or a new field is required: messages written to the
    /// old contract lack it.
    FieldRequired,
    /// A field's (or the payload's) type changed.
    TypeChanged,
    /// A value an enum allowed is no longer allowed.
    EnumValueRemoved,
}

impl Rule {
    /// The rule's name in findings, `field-removed` for instance.
    pub fn name(self) -> &'static str {
        match self {
            Rule::EventRemoved => "event-removed",
            Rule::StreamChanged => "stream-changed",
            Rule::ContentTypeChanged => "content-type-changed",
            Rule::FieldRemoved => "field-removed",
            Rule::FieldRequired => "field-required",
            Rule::TypeChanged => "type-changed",
            Rule::EnumValueRemoved => "enum-value-removed",
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One breaking change: `<event>: <field path>: <rule>: <detail>` when displayed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Finding {
    /// The event (message name, or the schema's title).
    pub event: String,
    /// The field: `customer.address.city`, `lines[].sku`, `meta.*` (map values),
    /// `(payload)` for the payload itself, `(message)` for the event as a whole.
    pub path: String,
    /// The rule.
    pub rule: Rule,
    /// What changed.
    pub detail: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.event, self.path, self.rule, self.detail
        )
    }
}

/// Compares two versions of a contract, each written as JSON or YAML: two AsyncAPI 3
/// documents (messages matched by name) or two JSON Schemas (one event, named by
/// `name` or else the schema's `title`). Returns the breaking changes, sorted;
/// none means the new version is safe for consumers of the old.
///
/// ```
/// use streams_asyncapi::{check, Rule};
///
/// let old = r#"{"title": "Paid", "type": "object", "properties": {"cents": {"type": "integer"}}}"#;
/// let new = r#"{"title": "Paid", "type": "object", "properties": {"cents": {"type": "string"}}}"#;
/// let findings = check(old, new, None).unwrap();
/// assert_eq!(findings[0].rule, Rule::TypeChanged);
/// assert_eq!(findings[0].to_string(), "Paid: cents: type-changed: integer -> string");
/// ```
///
/// # Errors
///
/// [`Error::Unreadable`] for input that is not JSON or YAML, not an object, an
/// AsyncAPI document of another major version, or when one side is a document and
/// the other a schema.
pub fn check(old: &str, new: &str, name: Option<&str>) -> Result<Vec<Finding>> {
    let old = parse_value(old).map_err(|e| Error::Unreadable(format!("OLD: {e}")))?;
    let new = parse_value(new).map_err(|e| Error::Unreadable(format!("NEW: {e}")))?;
    check_values(&old, &new, name)
}

/// [`check`] on values already read.
///
/// # Errors
///
/// As [`check`].
pub fn check_values(old: &Value, new: &Value, name: Option<&str>) -> Result<Vec<Finding>> {
    let old_kind = kind(old).map_err(|e| Error::Unreadable(format!("OLD: {e}")))?;
    let new_kind = kind(new).map_err(|e| Error::Unreadable(format!("NEW: {e}")))?;
    let mut findings = Vec::new();
    match (old_kind, new_kind) {
        (Kind::Document, Kind::Document) => {
            let old_events = events(old);
            let new_events = events(new);
            for (event, o) in &old_events {
                let Some(n) = new_events.get(event) else {
                    findings.push(Finding {
                        event: event.clone(),
                        path: "(message)".into(),
                        rule: Rule::EventRemoved,
                        detail: "the new document has no message of this name".into(),
                    });
                    continue;
                };
                if let (Some(a), Some(b)) = (&o.stream, &n.stream) {
                    if a != b {
                        findings.push(Finding {
                            event: event.clone(),
                            path: "(message)".into(),
                            rule: Rule::StreamChanged,
                            detail: format!("{a} -> {b}"),
                        });
                    }
                }
                if o.content_type != n.content_type {
                    findings.push(Finding {
                        event: event.clone(),
                        path: "(message)".into(),
                        rule: Rule::ContentTypeChanged,
                        detail: format!(
                            "{} -> {}",
                            o.content_type.as_deref().unwrap_or("(none)"),
                            n.content_type.as_deref().unwrap_or("(none)")
                        ),
                    });
                }
                if let (Some(a), Some(b)) = (o.payload, n.payload) {
                    Comparison::new(event, old, new, &mut findings).compare(a, b, "", 0);
                }
            }
        }
        (Kind::Schema, Kind::Schema) => {
            let title = |v: &Value| v.get("title").and_then(Value::as_str).map(str::to_owned);
            let event = name
                .map(str::to_owned)
                .or_else(|| title(new))
                .or_else(|| title(old))
                .unwrap_or_else(|| "payload".to_owned());
            Comparison::new(&event, old, new, &mut findings).compare(old, new, "", 0);
        }
        (o, n) => {
            let what = |k: Kind| match k {
                Kind::Document => "an AsyncAPI document",
                Kind::Schema => "a JSON Schema",
            };
            return Err(Error::Unreadable(format!(
                "OLD is {} and NEW {}: compare two documents or two schemas",
                what(o),
                what(n)
            )));
        }
    }
    findings.sort();
    findings.dedup();
    Ok(findings)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Document,
    Schema,
}

fn kind(v: &Value) -> Result<Kind, String> {
    let Value::Object(o) = v else {
        return Err("not an AsyncAPI document or a JSON Schema (expected an object)".into());
    };
    match o.get("asyncapi") {
        Some(Value::String(s)) if s.starts_with("3.") => Ok(Kind::Document),
        Some(other) => Err(format!(
            "AsyncAPI {} is not supported; documents must be AsyncAPI 3",
            other
                .as_str()
                .map_or_else(|| other.to_string(), str::to_owned)
        )),
        None if o.contains_key("openapi") || o.contains_key("swagger") => {
            Err("an OpenAPI document, not an AsyncAPI document or a JSON Schema".into())
        }
        None => Ok(Kind::Schema),
    }
}

#[derive(Debug)]
struct EventInDoc<'a> {
    stream: Option<String>,
    content_type: Option<String>,
    payload: Option<&'a Value>,
}

/// The messages of a document by name: those of its channels (with their address)
/// and those only in `components/messages`.
fn events<'a>(doc: &'a Value) -> BTreeMap<String, EventInDoc<'a>> {
    let default_ct = doc
        .get("defaultContentType")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let mut out = BTreeMap::new();
    let mut add = |key: &str, message: &'a Value, stream: Option<String>| {
        let Some(message) = follow(doc, message) else {
            return;
        };
        let name = message
            .get("name")
            .and_then(Value::as_str)
            .unwrap_or(key)
            .to_owned();
        let event = EventInDoc {
            stream,
            content_type: message
                .get("contentType")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or_else(|| default_ct.clone()),
            payload: message.get("payload").map(|p| {
                // A multi-format schema: `{schemaFormat, schema}`.
                match (p.get("schemaFormat"), p.get("schema")) {
                    (Some(_), Some(s)) => s,
                    _ => p,
                }
            }),
        };
        let entry = out.entry(name).or_insert(EventInDoc {
            stream: None,
            content_type: None,
            payload: None,
        });
        if event.stream.is_some() || entry.payload.is_none() {
            *entry = event;
        }
    };
    if let Some(Value::Object(messages)) = doc.get("components").and_then(|c| c.get("messages")) {
        for (key, message) in messages {
            add(key, message, None);
        }
    }
    if let Some(Value::Object(channels)) = doc.get("channels") {
        for (id, channel) in channels {
            let Some(channel) = follow(doc, channel) else {
                continue;
            };
            let address = channel
                .get("address")
                .and_then(Value::as_str)
                .unwrap_or(id)
                .to_owned();
            if let Some(Value::Object(messages)) = channel.get("messages") {
                for (key, message) in messages {
                    add(key, message, Some(address.clone()));
                }
            }
        }
    }
    out
}

/// Follows local `$ref`s from `v`; `None` for a chain that loops or leaves the document.
fn follow<'a>(root: &'a Value, mut v: &'a Value) -> Option<&'a Value> {
    for _ in 0..MAX_REF_HOPS {
        match v.get("$ref").and_then(Value::as_str) {
            Some(r) => v = resolve_pointer(root, r)?,
            None => return Some(v),
        }
    }
    None
}

struct Comparison<'a, 'f> {
    event: &'a str,
    old_root: &'a Value,
    new_root: &'a Value,
    findings: &'f mut Vec<Finding>,
    /// Pairs of refs already compared: each pair once, so cycles end.
    seen: HashSet<(String, String)>,
}

impl<'a, 'f> Comparison<'a, 'f> {
    fn new(
        event: &'a str,
        old_root: &'a Value,
        new_root: &'a Value,
        findings: &'f mut Vec<Finding>,
    ) -> Self {
        Comparison {
            event,
            old_root,
            new_root,
            findings,
            seen: HashSet::new(),
        }
    }

    fn push(&mut self, path: &str, rule: Rule, detail: String) {
        self.findings.push(Finding {
            event: self.event.to_owned(),
            path: if path.is_empty() {
                "(payload)".to_owned()
            } else {
                path.to_owned()
            },
            rule,
            detail,
        });
    }

    /// Resolves refs; the ref chain's last target names the schema for cycle checks.
    fn resolve(root: &'a Value, mut v: &'a Value) -> (Option<&'a Value>, Option<String>) {
        let mut name = None;
        for _ in 0..MAX_REF_HOPS {
            match v.get("$ref").and_then(Value::as_str) {
                Some(r) => {
                    name = Some(r.to_owned());
                    match resolve_pointer(root, r) {
                        Some(t) => v = t,
                        None => return (None, name),
                    }
                }
                None => return (Some(v), name),
            }
        }
        (None, name)
    }

    fn compare(&mut self, old: &'a Value, new: &'a Value, path: &str, depth: usize) {
        if depth > MAX_DEPTH {
            return;
        }
        let (Some(old), old_ref) = Self::resolve(self.old_root, old) else {
            return;
        };
        let (Some(new), new_ref) = Self::resolve(self.new_root, new) else {
            return;
        };
        if old_ref.is_some() || new_ref.is_some() {
            let pair = (old_ref.unwrap_or_default(), new_ref.unwrap_or_default());
            if !self.seen.insert(pair) {
                return;
            }
        }

        let old_types = self.types(self.old_root, old, 0);
        let new_types = self.types(self.new_root, new, 0);
        if let (Some(o), Some(n)) = (&old_types, &new_types) {
            if o != n {
                self.push(
                    path,
                    Rule::TypeChanged,
                    format!("{} -> {}", join(o), join(n)),
                );
            }
        }

        if let (Some(o), Some(n)) = (
            self.enum_values(self.old_root, old, 0),
            self.enum_values(self.new_root, new, 0),
        ) {
            for value in o.iter().filter(|v| !n.contains(*v)) {
                self.push(
                    path,
                    Rule::EnumValueRemoved,
                    format!("{value} is no longer allowed"),
                );
            }
        } else if let (None, Some(n)) = (
            self.enum_values(self.old_root, old, 0),
            self.enum_values(self.new_root, new, 0),
        ) {
            let listed: Vec<&str> = n.iter().map(String::as_str).collect();
            self.push(
                path,
                Rule::EnumValueRemoved,
                format!("any value was allowed, now only {}", listed.join(", ")),
            );
        }

        // Object fields.
        let old_props = self.properties(self.old_root, old, 0);
        let new_props = self.properties(self.new_root, new, 0);
        let old_required = self.required(self.old_root, old, 0);
        let new_required = self.required(self.new_root, new, 0);
        for (field, old_field) in &old_props {
            let child = child_path(path, field);
            match new_props.get(field) {
                None => self.push(
                    &child,
                    Rule::FieldRemoved,
                    "the field is gone (renamed counts as removed)".into(),
                ),
                Some(new_field) => self.compare(old_field, new_field, &child, depth + 1),
            }
        }
        for field in new_required.difference(&old_required) {
            let child = child_path(path, field);
            if old_props.contains_key(field) {
                self.push(
                    &child,
                    Rule::FieldRequired,
                    "an optional field is now required".into(),
                );
            } else if !old_props.is_empty() || !new_props.is_empty() {
                self.push(
                    &child,
                    Rule::FieldRequired,
                    "a new field is required".into(),
                );
            }
        }

        // Array items and map values.
        if let (Some(o), Some(n)) = (items(old), items(new)) {
            self.compare(o, n, &format!("{path}[]"), depth + 1);
        }
        if let (Some(o @ Value::Object(_)), Some(n @ Value::Object(_))) = (
            old.get("additionalProperties"),
            new.get("additionalProperties"),
        ) {
            self.compare(o, n, &child_path(path, "*"), depth + 1);
        }
        // `Option<Struct>` and the like: one non-null variant on each side.
        if let (Some(o), Some(n)) = (
            self.single_variant(self.old_root, old),
            self.single_variant(self.new_root, new),
        ) {
            self.compare(o, n, path, depth + 1);
        }
    }

    /// The set of JSON types a schema allows, when it says (`type`, or the union of
    /// its `anyOf`/`oneOf` variants); `integer` stays apart from `number`.
    fn types(&self, root: &'a Value, v: &'a Value, depth: usize) -> Option<BTreeSet<String>> {
        if depth > MAX_DEPTH {
            return None;
        }
        match v.get("type") {
            Some(Value::String(t)) => return Some(BTreeSet::from([t.clone()])),
            Some(Value::Array(ts)) => {
                return Some(
                    ts.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect(),
                )
            }
            _ => {}
        }
        let variants = variants(v)?;
        let mut all = BTreeSet::new();
        for variant in variants {
            let (Some(variant), _) = Self::resolve(root, variant) else {
                return None;
            };
            all.extend(self.types(root, variant, depth + 1)?);
        }
        Some(all)
    }

    /// The values an enum allows (`enum`, `const`, or variants that are all such), as
    /// JSON text.
    fn enum_values(&self, root: &'a Value, v: &'a Value, depth: usize) -> Option<BTreeSet<String>> {
        if depth > MAX_DEPTH {
            return None;
        }
        if let Some(Value::Array(values)) = v.get("enum") {
            return Some(values.iter().map(Value::to_string).collect());
        }
        if let Some(c) = v.get("const") {
            return Some(BTreeSet::from([c.to_string()]));
        }
        let variants = variants(v)?;
        let mut all = BTreeSet::new();
        for variant in variants {
            let (Some(variant), _) = Self::resolve(root, variant) else {
                return None;
            };
            all.extend(self.enum_values(root, variant, depth + 1)?);
        }
        Some(all)
    }

    /// `properties`, merged over `allOf`.
    fn properties(
        &self,
        root: &'a Value,
        v: &'a Value,
        depth: usize,
    ) -> BTreeMap<String, &'a Value> {
        let mut out = BTreeMap::new();
        if depth > MAX_DEPTH {
            return out;
        }
        if let Some(Value::Object(props)) = v.get("properties") {
            for (k, s) in props {
                out.insert(k.clone(), s);
            }
        }
        if let Some(Value::Array(parts)) = v.get("allOf") {
            for part in parts {
                if let (Some(part), _) = Self::resolve(root, part) {
                    out.extend(self.properties(root, part, depth + 1));
                }
            }
        }
        out
    }

    /// `required`, merged over `allOf`.
    fn required(&self, root: &'a Value, v: &'a Value, depth: usize) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        if depth > MAX_DEPTH {
            return out;
        }
        if let Some(Value::Array(req)) = v.get("required") {
            out.extend(req.iter().filter_map(Value::as_str).map(str::to_owned));
        }
        if let Some(Value::Array(parts)) = v.get("allOf") {
            for part in parts {
                if let (Some(part), _) = Self::resolve(root, part) {
                    out.extend(self.required(root, part, depth + 1));
                }
            }
        }
        out
    }

    /// The one variant of an `anyOf`/`oneOf` that is not `null`, if there is one.
    fn single_variant(&self, root: &'a Value, v: &'a Value) -> Option<&'a Value> {
        let mut rest = variants(v)?.iter().filter(|variant| {
            let resolved = Self::resolve(root, variant).0;
            resolved.and_then(|r| r.get("type")) != Some(&Value::String("null".into()))
        });
        let one = rest.next()?;
        rest.next().is_none().then_some(one)
    }
}

fn variants(v: &Value) -> Option<&Vec<Value>> {
    match (v.get("anyOf"), v.get("oneOf")) {
        (Some(Value::Array(a)), _) | (None, Some(Value::Array(a))) if !a.is_empty() => Some(a),
        _ => None,
    }
}

fn items(v: &Value) -> Option<&Value> {
    match v.get("items") {
        Some(i @ Value::Object(_)) => Some(i),
        _ => None,
    }
}

fn child_path(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_owned()
    } else {
        format!("{path}.{field}")
    }
}

fn join(types: &BTreeSet<String>) -> String {
    if types.is_empty() {
        "(none)".to_owned()
    } else {
        types.iter().cloned().collect::<Vec<_>>().join("|")
    }
}
