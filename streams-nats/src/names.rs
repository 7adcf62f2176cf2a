//! How stream and group names become NATS names, and back.

use streams_core::{Error, Result};

/// The longest stream or group name, after escaping, that the driver sends (JetStream
/// keeps stream and consumer state in files named after them).
pub const MAX_NAME_LEN: usize = 255;

/// The JetStream stream, and the one subject it captures, of a `streams` stream.
///
/// Our stream names may hold any character; NATS subjects treat `.` as a separator and
/// `*`/`>` as wildcards, and JetStream names refuse `.`, `*`, `>`, `/`, `\`, white space
/// and control characters. So every byte outside `A-Z a-z 0-9 - _` is written `~HH`
/// (its hexadecimal value, upper case), `~` included: `orders.placed` is the stream and
/// subject `orders~2Eplaced`. The mapping is one to one, and [`stream_of`] reverses it.
///
/// ```
/// use streams_nats::{nats_name, stream_of};
///
/// assert_eq!(nats_name("orders.placed").unwrap(), "orders~2Eplaced");
/// assert_eq!(stream_of("orders~2Eplaced").as_deref(), Some("orders.placed"));
/// assert!(nats_name("").is_err());
/// ```
///
/// # Errors
///
/// [`Error::Invalid`] for an empty name or one longer than [`MAX_NAME_LEN`] once
/// escaped.
pub fn nats_name(name: &str) -> Result<String> {
    if name.is_empty() {
        return Err(Error::invalid(
            "NATS name",
            "a stream or group name is empty",
        ));
    }
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push('~');
            out.push_str(&format!("{b:02X}"));
        }
    }
    if out.len() > MAX_NAME_LEN {
        return Err(Error::invalid(
            "NATS name",
            format!(
                "`{}…` is {} characters once escaped for NATS, at most {MAX_NAME_LEN} are allowed",
                name.chars().take(32).collect::<String>(),
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// The `streams` stream (or group) name of a NATS name made by [`nats_name`]; `None`
/// for a name it did not make.
pub fn stream_of(nats: &str) -> Option<String> {
    let bytes = nats.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'~' => {
                let hex = nats.get(i + 1..i + 3)?;
                if hex.bytes().any(|c| c.is_ascii_lowercase()) {
                    return None;
                }
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    let name = String::from_utf8(out).ok()?;
    // Only the escaped form maps back: `~41` (an escaped `A`) is not ours.
    (nats_name(&name).ok()? == nats).then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_any_name() {
        for name in [
            "orders",
            "orders.placed",
            "a b/c\\d*e>f",
            "~tilde~",
            "ünïcödé-😀",
            "x\u{0}y\r\n",
            "UPPER_lower-09",
        ] {
            let nats = nats_name(name).unwrap();
            assert!(
                nats.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'~'),
                "{nats}"
            );
            assert_eq!(stream_of(&nats).as_deref(), Some(name), "{nats}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_map() {
        assert!(nats_name("").is_err());
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(nats_name(&long)
            .unwrap_err()
            .to_string()
            .contains("at most 255"));
        assert!(
            nats_name(&".".repeat(86)).is_err(),
            "86 dots are 258 characters"
        );
        assert_eq!(stream_of("a.b"), None);
        assert_eq!(stream_of("a~2e"), None, "lower-case escape is not ours");
        assert_eq!(stream_of("~41"), None, "an escaped letter is not ours");
        assert_eq!(stream_of("a~2"), None);
    }
}
