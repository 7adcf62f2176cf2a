//! Reading the replies of `XREADGROUP`, `XREAD`, `XAUTOCLAIM` and `XPENDING`.

use redis::Value;

/// One stream entry: its id and its fields.
pub(crate) type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

fn bytes(v: Value) -> Option<Vec<u8>> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.into_bytes()),
        Value::Int(i) => Some(i.to_string().into_bytes()),
        Value::Okay => Some(b"OK".to_vec()),
        _ => None,
    }
}

fn text(v: Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b).ok())
}

fn items(v: Value) -> Vec<Value> {
    match v {
        Value::Array(items) | Value::Set(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    }
}

/// The entries of a list of `[id, [field, value, ...]]`; deleted entries (nil) are
/// skipped.
pub(crate) fn entries(v: Value) -> Vec<Entry> {
    items(v)
        .into_iter()
        .filter_map(|entry| {
            let mut parts = items(entry).into_iter();
            let id = text(parts.next()?)?;
            let mut flat = items(parts.next()?).into_iter();
            let mut fields = Vec::new();
            while let (Some(k), Some(v)) = (flat.next(), flat.next()) {
                fields.push((bytes(k)?, bytes(v)?));
            }
            Some((id, fields))
        })
        .collect()
}

/// The entries of the one stream an `XREADGROUP`/`XREAD` asked for (nil: none).
pub(crate) fn read(v: Value) -> Vec<Entry> {
    match v {
        Value::Nil => Vec::new(),
        Value::Map(pairs) => pairs.into_iter().flat_map(|(_, e)| entries(e)).collect(),
        other => items(other)
            .into_iter()
            .flat_map(|stream| {
                let mut parts = items(stream).into_iter();
                let _key = parts.next();
                parts.next().map(entries).unwrap_or_default()
            })
            .collect(),
    }
}

/// `XAUTOCLAIM`'s next cursor and claimed entries.
pub(crate) fn autoclaim(v: Value) -> (String, Vec<Entry>) {
    let mut parts = items(v).into_iter();
    let cursor = parts
        .next()
        .and_then(text)
        .unwrap_or_else(|| "0-0".to_owned());
    let claimed = parts.next().map(entries).unwrap_or_default();
    (cursor, claimed)
}

/// The delivery count of each entry of an extended `XPENDING` reply.
pub(crate) fn delivery_counts(v: Value) -> Vec<(String, u64)> {
    items(v)
        .into_iter()
        .filter_map(|row| {
            let mut parts = items(row).into_iter();
            let id = text(parts.next()?)?;
            let _consumer = parts.next();
            let _idle = parts.next();
            let count = text(parts.next()?)?.parse().ok()?;
            Some((id, count))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    #[test]
    fn reads_resp2_replies() {
        let entry = Value::Array(vec![
            bulk("1-0"),
            Value::Array(vec![bulk("id"), bulk("m1"), bulk("data"), bulk("x")]),
        ]);
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("s"),
            Value::Array(vec![entry.clone()]),
        ])]);
        let got = read(reply);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "1-0");
        assert_eq!(got[0].1[1], (b"data".to_vec(), b"x".to_vec()));
        assert!(read(Value::Nil).is_empty());
        let (cursor, claimed) = autoclaim(Value::Array(vec![
            bulk("0-0"),
            Value::Array(vec![entry, Value::Nil]),
            Value::Array(vec![]),
        ]));
        assert_eq!((cursor.as_str(), claimed.len()), ("0-0", 1));
        let counts = delivery_counts(Value::Array(vec![Value::Array(vec![
            bulk("1-0"),
            bulk("c"),
            Value::Int(5000),
            Value::Int(3),
        ])]));
        assert_eq!(counts, [("1-0".to_owned(), 3)]);
    }
}
