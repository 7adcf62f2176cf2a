//! The compatibility check: one before/after pair per rule, additions that pass, and
//! hostile input.

use serde_json::{json, Value};
use streams_asyncapi::{check, check_values, Error, Rule};

fn schema(properties: Value, required: &[&str]) -> Value {
    json!({"title": "Paid", "type": "object", "properties": properties, "required": required})
}

/// The findings of OLD -> NEW as display lines.
fn lines(old: &Value, new: &Value) -> Vec<String> {
    check_values(old, new, None)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect()
}

#[test]
fn removed_field_breaks() {
    let old = schema(
        json!({"id": {"type": "string"}, "cents": {"type": "integer"}}),
        &["id"],
    );
    let new = schema(json!({"id": {"type": "string"}}), &["id"]);
    assert_eq!(
        lines(&old, &new),
        ["Paid: cents: field-removed: the field is gone (renamed counts as removed)"]
    );
}

#[test]
fn renamed_field_is_a_removal() {
    let old = schema(json!({"cents": {"type": "integer"}}), &[]);
    let new = schema(json!({"amount_cents": {"type": "integer"}}), &[]);
    let findings = check_values(&old, &new, None).unwrap();
    assert_eq!(findings.len(), 1, "{findings:?}");
    assert_eq!(
        (findings[0].path.as_str(), findings[0].rule),
        ("cents", Rule::FieldRemoved)
    );
}

#[test]
fn field_made_required_breaks() {
    let old = schema(
        json!({"id": {"type": "string"}, "note": {"type": "string"}}),
        &["id"],
    );
    let new = schema(
        json!({"id": {"type": "string"}, "note": {"type": "string"}}),
        &["id", "note"],
    );
    assert_eq!(
        lines(&old, &new),
        ["Paid: note: field-required: an optional field is now required"]
    );
}

#[test]
fn new_required_field_breaks() {
    let old = schema(json!({"id": {"type": "string"}}), &["id"]);
    let new = schema(
        json!({"id": {"type": "string"}, "tenant": {"type": "string"}}),
        &["id", "tenant"],
    );
    assert_eq!(
        lines(&old, &new),
        ["Paid: tenant: field-required: a new field is required"]
    );
}

#[test]
fn type_change_breaks() {
    let old = schema(json!({"cents": {"type": "integer"}}), &[]);
    let new = schema(json!({"cents": {"type": "number"}}), &[]);
    assert_eq!(
        lines(&old, &new),
        ["Paid: cents: type-changed: integer -> number"]
    );
    // Made nullable: consumers now meet `null`.
    let new = schema(json!({"cents": {"type": ["integer", "null"]}}), &[]);
    assert_eq!(
        lines(&old, &new),
        ["Paid: cents: type-changed: integer -> integer|null"]
    );
}

#[test]
fn enum_value_removed_breaks() {
    let old = schema(
        json!({"state": {"type": "string", "enum": ["open", "paid", "void"]}}),
        &[],
    );
    let new = schema(
        json!({"state": {"type": "string", "enum": ["open", "paid"]}}),
        &[],
    );
    assert_eq!(
        lines(&old, &new),
        ["Paid: state: enum-value-removed: \"void\" is no longer allowed"]
    );
    // Enums as schemars writes documented variants: `oneOf` of `const`s.
    let old = schema(
        json!({"state": {"oneOf": [{"const": "open"}, {"const": "void"}]}}),
        &[],
    );
    let new = schema(json!({"state": {"oneOf": [{"const": "open"}]}}), &[]);
    assert_eq!(
        lines(&old, &new),
        ["Paid: state: enum-value-removed: \"void\" is no longer allowed"]
    );
}

#[test]
fn additions_old_consumers_ignore_pass() {
    let old = schema(
        json!({"id": {"type": "string"}, "state": {"enum": ["open"]}, "tags": {"type": "array", "items": {"type": "string"}}}),
        &["id"],
    );
    let new = schema(
        json!({
            "id": {"type": "string", "description": "now documented"},
            "state": {"enum": ["open", "paid"]},
            "tags": {"type": "array", "items": {"type": "string"}},
            "note": {"type": "string"},
        }),
        &["id"],
    );
    assert!(lines(&old, &new).is_empty());
    // And a field made optional.
    let new = schema(
        json!({"id": {"type": "string"}, "state": {"enum": ["open"]}, "tags": {"type": "array", "items": {"type": "string"}}}),
        &[],
    );
    assert!(lines(&old, &new).is_empty());
}

#[test]
fn nested_objects_arrays_maps_and_refs_are_followed() {
    let old = json!({
        "title": "Order",
        "type": "object",
        "properties": {
            "customer": {"$ref": "#/definitions/Customer"},
            "lines": {"type": "array", "items": {"$ref": "#/definitions/Line"}},
            "meta": {"type": "object", "additionalProperties": {"$ref": "#/definitions/Line"}},
            "gift": {"anyOf": [{"$ref": "#/definitions/Line"}, {"type": "null"}]},
        },
        "definitions": {
            "Customer": {"type": "object", "properties": {"address": {"type": "object", "properties": {"city": {"type": "string"}}}}},
            "Line": {"type": "object", "properties": {"sku": {"type": "string"}}},
        }
    });
    let new = json!({
        "title": "Order",
        "type": "object",
        "properties": {
            "customer": {"$ref": "#/$defs/Customer"},
            "lines": {"type": "array", "items": {"$ref": "#/$defs/Line"}},
            "meta": {"type": "object", "additionalProperties": {"$ref": "#/$defs/Line"}},
            "gift": {"anyOf": [{"$ref": "#/$defs/Line"}, {"type": "null"}]},
        },
        "$defs": {
            "Customer": {"type": "object", "properties": {"address": {"type": "object", "properties": {}}}},
            "Line": {"type": "object", "properties": {"sku": {"type": "integer"}}},
        }
    });
    let found = lines(&old, &new);
    assert!(found.contains(&"Order: customer.address.city: field-removed: the field is gone (renamed counts as removed)".to_owned()), "{found:#?}");
    // `Line` is compared once (each pair of refs once), at the first path that meets it.
    assert_eq!(
        found
            .iter()
            .filter(|l| l.contains("sku: type-changed: string -> integer"))
            .count(),
        1,
        "{found:#?}"
    );
}

#[test]
fn documents_match_messages_by_name() {
    let doc = |payload: Value, stream: &str, extra: bool| {
        let mut d = json!({
            "asyncapi": "3.0.0",
            "info": {"title": "payments", "version": "1"},
            "defaultContentType": "application/json",
            "channels": {"c": {"address": stream, "messages": {
                "PaymentCreated": {"$ref": "#/components/messages/PaymentCreated"},
                "Refunded": {"$ref": "#/components/messages/Refunded"}}}},
            "components": {
                "messages": {
                    "PaymentCreated": {"name": "PaymentCreated", "payload": {"$ref": "#/components/schemas/PaymentCreated"}},
                    "Refunded": {"name": "Refunded", "payload": {"type": "object"}},
                },
                "schemas": {"PaymentCreated": payload},
            }
        });
        if !extra {
            d["components"]["messages"]
                .as_object_mut()
                .unwrap()
                .remove("Refunded");
            d["channels"]["c"]["messages"]
                .as_object_mut()
                .unwrap()
                .remove("Refunded");
        }
        d
    };
    let v1 = doc(
        json!({"type": "object", "properties": {"cents": {"type": "integer"}}}),
        "payments",
        true,
    );
    let v2 = doc(
        json!({"type": "object", "properties": {"cents": {"type": "string"}}}),
        "payments.v2",
        false,
    );
    assert_eq!(
        lines(&v1, &v2),
        [
            "PaymentCreated: (message): stream-changed: payments -> payments.v2",
            "PaymentCreated: cents: type-changed: integer -> string",
            "Refunded: (message): event-removed: the new document has no message of this name",
        ]
    );
    // A new event, and YAML against JSON, pass.
    let v0 = doc(
        json!({"type": "object", "properties": {"cents": {"type": "integer"}}}),
        "payments",
        false,
    );
    let yaml = serde_norway_free_yaml(&v0);
    assert!(check(&yaml, &v1.to_string(), None).unwrap().is_empty());

    let mut v3 = v1.clone();
    v3["components"]["messages"]["Refunded"]["contentType"] =
        json!("application/x-google-protobuf");
    assert_eq!(
        lines(&v1, &v3),
        ["Refunded: (message): content-type-changed: application/json -> application/x-google-protobuf"]
    );
}

/// A YAML rendering of a JSON value without a YAML library: JSON is YAML.
fn serde_norway_free_yaml(v: &Value) -> String {
    format!(
        "# a comment only YAML allows\n{}",
        serde_json::to_string_pretty(v).unwrap()
    )
}

#[test]
fn ref_cycles_end() {
    // A linked list, and two refs pointing at each other.
    let old = json!({
        "title": "List",
        "$ref": "#/definitions/Node",
        "definitions": {
            "Node": {"type": "object", "properties": {"v": {"type": "string"}, "next": {"$ref": "#/definitions/Node"}}},
            "A": {"$ref": "#/definitions/B"},
            "B": {"$ref": "#/definitions/A"},
        },
    });
    let mut new = old.clone();
    new["definitions"]["Node"]["properties"]["v"] = json!({"type": "integer"});
    new["definitions"]["Node"]["properties"]["loop"] = json!({"$ref": "#/definitions/A"});
    let mut old2 = old.clone();
    old2["definitions"]["Node"]["properties"]["loop"] = json!({"$ref": "#/definitions/A"});
    let found = lines(&old2, &new);
    assert_eq!(
        found,
        ["List: v: type-changed: string -> integer"],
        "{found:#?}"
    );
}

#[test]
fn deep_and_huge_schemas_are_bounded() {
    // 120 levels of nesting from JSON text (serde_json reads at most 128).
    let mut old = json!({"type": "string"});
    let mut new = json!({"type": "integer"});
    for _ in 0..60 {
        old = json!({"type": "object", "properties": {"x": old}});
        new = json!({"type": "object", "properties": {"x": new}});
    }
    let started = std::time::Instant::now();
    let found = check(&old.to_string(), &new.to_string(), Some("Deep")).unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].path, vec!["x"; 60].join("."));
    assert_eq!(found[0].rule, Rule::TypeChanged);

    // 20,000 fields, half removed.
    let props: serde_json::Map<String, Value> = (0..20_000)
        .map(|i| (format!("f{i}"), json!({"type": "string"})))
        .collect();
    let old = json!({"type": "object", "properties": props});
    let half: serde_json::Map<String, Value> = (0..10_000)
        .map(|i| (format!("f{i}"), json!({"type": "string"})))
        .collect();
    let new = json!({"type": "object", "properties": half});
    let found = check_values(&old, &new, Some("Huge")).unwrap();
    assert_eq!(found.len(), 10_000);
    assert!(started.elapsed() < std::time::Duration::from_secs(60));

    // Deeper than the reader allows: a clear error, not a stack overflow.
    let deep = format!("{}{}", "{\"a\":".repeat(10_000), "}".repeat(10_000));
    let e = check(&deep, &deep, None).unwrap_err();
    assert!(matches!(e, Error::Unreadable(_)), "{e}");
    let deep_yaml = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
    let e = check(&deep_yaml, &deep_yaml, None).unwrap_err();
    assert!(matches!(e, Error::Unreadable(_)), "{e}");
}

#[test]
fn unreadable_input_is_one_clear_error() {
    let ok = r#"{"type": "object"}"#;
    let doc = r#"{"asyncapi": "3.0.0", "info": {"title": "t", "version": "1"}}"#;
    for (old, new, says) in [
        ("{ nope", ok, "OLD: neither JSON nor YAML"),
        (ok, "", "NEW: the input is empty"),
        (
            ok,
            "[1, 2]",
            "NEW: not an AsyncAPI document or a JSON Schema",
        ),
        (
            ok,
            "just words",
            "NEW: not an AsyncAPI document or a JSON Schema",
        ),
        (
            r#"{"asyncapi": "2.6.0"}"#,
            doc,
            "OLD: AsyncAPI 2.6.0 is not supported",
        ),
        (r#"{"openapi": "3.1.0"}"#, ok, "OLD: an OpenAPI document"),
        (doc, ok, "is an AsyncAPI document and NEW a JSON Schema"),
    ] {
        let e = check(old, new, None).unwrap_err();
        assert!(matches!(e, Error::Unreadable(_)), "{e}");
        let e = e.to_string();
        assert!(e.contains(says), "{old} / {new}: {e}");
        assert_eq!(e.lines().count(), 1, "{e}");
    }
}

mod v1 {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub(crate) enum State {
        Open,
        Paid,
        Void,
    }

    /// Version 1.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PaymentCreated {
        pub(crate) payment_id: String,
        pub(crate) account: String,
        pub(crate) cents: i64,
        pub(crate) state: State,
        pub(crate) note: Option<String>,
    }
    impl streams_core::Event for PaymentCreated {
        fn contract() -> streams_core::EventContract<Self> {
            streams_asyncapi::contract::<Self>()
        }
    }
}

mod v2 {
    use schemars::JsonSchema;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, JsonSchema)]
    pub(crate) enum State {
        Open,
        Paid,
    }

    /// Version 2: `account` renamed, `cents` as text, `Void` gone, a new optional field.
    #[derive(Serialize, Deserialize, JsonSchema)]
    pub(crate) struct PaymentCreated {
        pub(crate) payment_id: String,
        pub(crate) account_id: String,
        pub(crate) cents: String,
        pub(crate) state: State,
        pub(crate) note: Option<String>,
        pub(crate) tenant: Option<String>,
    }
    impl streams_core::Event for PaymentCreated {
        fn contract() -> streams_core::EventContract<Self> {
            streams_asyncapi::contract::<Self>()
        }
    }
}

/// The check over documents built from two versions of a Rust type.
#[test]
fn documents_of_two_versions_of_a_rust_event() {
    use streams_asyncapi::AsyncApi;
    use streams_core::EventRegistry;

    let document = |register: fn(&EventRegistry)| {
        let registry = EventRegistry::new();
        register(&registry);
        AsyncApi::new("payments", "1")
            .with_server("kafka", "kafka://localhost:9092")
            .build(&registry)
            .unwrap()
            .to_yaml()
            .unwrap()
    };
    let old = document(|r| r.register::<v1::PaymentCreated>("payments.created"));
    let new = document(|r| r.register::<v2::PaymentCreated>("payments.created"));
    let found: Vec<String> = check(&old, &new, None)
        .unwrap()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        found,
        [
            "PaymentCreated: account: field-removed: the field is gone (renamed counts as removed)",
            "PaymentCreated: account_id: field-required: a new field is required",
            "PaymentCreated: cents: type-changed: integer -> string",
            "PaymentCreated: state: enum-value-removed: \"Void\" is no longer allowed",
        ]
    );
    // The same version on both sides passes.
    assert!(check(&old, &old, None).unwrap().is_empty());
}
