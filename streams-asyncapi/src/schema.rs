//! Moving an event's JSON Schema into a document: its definitions go to
//! `components/schemas`, and every `$ref` follows them.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// Where schemas live in an AsyncAPI document.
pub(crate) const COMPONENTS_SCHEMAS: &str = "#/components/schemas/";

/// A name usable as a component key (`^[a-zA-Z0-9.\-_]+$`): every other character
/// becomes `_`.
pub(crate) fn component_key(name: &str) -> String {
    let key: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || ".-_".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if key.is_empty() {
        "_".to_owned()
    } else {
        key
    }
}

/// Escapes a key for a JSON pointer (RFC 6901).
pub(crate) fn escape_pointer(key: &str) -> String {
    key.replace('~', "~0").replace('/', "~1")
}

/// Puts `schema` into `schemas` under `key` (or a free variant of it) with its
/// definitions beside it, and returns the name the root schema got. A definition equal
/// to one already there is shared; a different one with the same name is renamed.
pub(crate) fn relocate(
    mut schema: Value,
    key: &str,
    schemas: &mut BTreeMap<String, Value>,
) -> String {
    let mut defs: Vec<(String, Value)> = Vec::new();
    if let Value::Object(obj) = &mut schema {
        for field in ["definitions", "$defs"] {
            if let Some(Value::Object(d)) = obj.remove(field) {
                defs.extend(d);
            }
        }
        obj.remove("$schema");
    }
    // The root is one more definition, reached by `#` refs.
    const ROOT: &str = "#";
    defs.push((ROOT.to_owned(), schema));

    let mut names: BTreeMap<String, String> = defs
        .iter()
        .map(|(n, _)| {
            let target = if n == ROOT {
                component_key(key)
            } else {
                component_key(n)
            };
            (n.clone(), target)
        })
        .collect();
    // Renaming one definition changes the refs in the others, so decide again until
    // nothing collides; each round gives one name a fresh, unused target.
    for _ in 0..=defs.len() {
        let rewritten: Vec<(String, Value)> = defs
            .iter()
            .map(|(n, v)| (n.clone(), rewrite_refs(v.clone(), &names)))
            .collect();
        let clash = rewritten
            .iter()
            .find(|(n, v)| schemas.get(&names[n]).is_some_and(|existing| existing != v));
        match clash {
            Some((n, _)) => {
                let base = names[n].clone();
                let fresh = (2..)
                    .map(|i| format!("{base}{i}"))
                    .find(|c| !schemas.contains_key(c) && !names.values().any(|t| t == c))
                    .unwrap_or(base);
                names.insert(n.clone(), fresh);
            }
            None => {
                for (n, v) in rewritten {
                    schemas.insert(names[&n].clone(), v);
                }
                return names[ROOT].clone();
            }
        }
    }
    // Unreachable in practice: every round removes one clash for good.
    names[ROOT].clone()
}

/// Rewrites `#`, `#/definitions/X...` and `#/$defs/X...` refs to `components/schemas`.
fn rewrite_refs(value: Value, names: &BTreeMap<String, String>) -> Value {
    match value {
        Value::Object(obj) => {
            let mut out = Map::with_capacity(obj.len());
            for (k, v) in obj {
                let v = match (&*k, v) {
                    ("$ref", Value::String(r)) => Value::String(rewrite_ref(&r, names)),
                    (_, v) => rewrite_refs(v, names),
                };
                out.insert(k, v);
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            Value::Array(items.into_iter().map(|v| rewrite_refs(v, names)).collect())
        }
        other => other,
    }
}

fn rewrite_ref(r: &str, names: &BTreeMap<String, String>) -> String {
    if r == "#" {
        return format!("{COMPONENTS_SCHEMAS}{}", escape_pointer(&names["#"]));
    }
    for prefix in ["#/definitions/", "#/$defs/"] {
        if let Some(rest) = r.strip_prefix(prefix) {
            let (name, tail) = rest.split_once('/').map_or((rest, ""), |(n, t)| (n, t));
            let name = name.replace("~1", "/").replace("~0", "~");
            if let Some(target) = names.get(&name) {
                let tail = if tail.is_empty() {
                    String::new()
                } else {
                    format!("/{tail}")
                };
                return format!("{COMPONENTS_SCHEMAS}{}{tail}", escape_pointer(target));
            }
        }
    }
    if let Some(tail) = r.strip_prefix("#/") {
        // A pointer into the root schema itself.
        return format!("{COMPONENTS_SCHEMAS}{}/{tail}", escape_pointer(&names["#"]));
    }
    r.to_owned()
}

/// The value a local ref (`#/a/b`) points at in `root`.
pub(crate) fn resolve_pointer<'a>(root: &'a Value, r: &str) -> Option<&'a Value> {
    let pointer = r.strip_prefix('#')?;
    if pointer.is_empty() {
        return Some(root);
    }
    root.pointer(pointer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_move_and_refs_follow() {
        let mut schemas = BTreeMap::new();
        let root = relocate(
            json!({
                "$schema": "http://json-schema.org/draft-07/schema#",
                "title": "Order",
                "properties": {"line": {"$ref": "#/definitions/Line"}, "me": {"$ref": "#"}},
                "definitions": {"Line": {"properties": {"next": {"$ref": "#/definitions/Line"}}}}
            }),
            "Order",
            &mut schemas,
        );
        assert_eq!(root, "Order");
        assert_eq!(
            schemas["Order"],
            json!({"title": "Order", "properties": {
                "line": {"$ref": "#/components/schemas/Line"},
                "me": {"$ref": "#/components/schemas/Order"}}})
        );
        assert_eq!(
            schemas["Line"]["properties"]["next"]["$ref"],
            "#/components/schemas/Line"
        );
    }

    #[test]
    fn equal_definitions_are_shared_and_different_ones_renamed() {
        let mut schemas = BTreeMap::new();
        let a = json!({"properties": {"c": {"$ref": "#/$defs/Currency"}},
                       "$defs": {"Currency": {"enum": ["EUR"]}}});
        let b = json!({"properties": {"c": {"$ref": "#/$defs/Currency"}},
                       "$defs": {"Currency": {"enum": ["USD"]}}});
        relocate(a.clone(), "A", &mut schemas);
        relocate(a, "A2x", &mut schemas);
        assert_eq!(schemas.len(), 3, "{schemas:#?}");
        relocate(b, "B", &mut schemas);
        assert_eq!(schemas["Currency2"], json!({"enum": ["USD"]}));
        assert_eq!(
            schemas["B"]["properties"]["c"]["$ref"],
            "#/components/schemas/Currency2"
        );
        // A root whose key is taken by a different schema gets a fresh key too.
        let root = relocate(json!({"type": "string"}), "B", &mut schemas);
        assert_eq!(root, "B2");
    }

    #[test]
    fn keys_are_sanitised() {
        assert_eq!(component_key("Envelope<Order, u8>"), "Envelope_Order__u8_");
        assert_eq!(component_key(""), "_");
    }
}
