use std::fmt;

use streams_core::{Error, Result};

/// Longest accepted table name: leaves room for the `_quarantine` suffix and index
/// names within PostgreSQL's 63-byte and MySQL's 64-character identifier limits.
pub const MAX_TABLE_NAME_LEN: usize = 48;

/// A validated SQL identifier for an outbox table (or a PostgreSQL `NOTIFY` channel).
///
/// Only lower-case ASCII letters, digits and `_` are accepted, starting with a letter
/// or `_`, at most [`MAX_TABLE_NAME_LEN`] characters. SQL text is only ever built from
/// such names (and always quoted), never from unchecked text. Lower case keeps the
/// quoted name equal to the unquoted one the Go library uses on PostgreSQL.
///
/// ```
/// use streams_sql::TableName;
///
/// assert_eq!(TableName::new("streams_egress").unwrap().as_str(), "streams_egress");
/// assert!(TableName::new("egress; DROP TABLE users").is_err());
/// assert!(TableName::new("Egress").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TableName(String);

impl TableName {
    /// Validates a name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the rule the text broke.
    pub fn new(name: &str) -> Result<Self> {
        validate(name)?;
        Ok(TableName(name.to_owned()))
    }

    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A derived name (`<name><suffix>`); the suffix is a constant of this crate.
    pub(crate) fn derived(&self, suffix: &'static str) -> TableName {
        debug_assert!(suffix
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'));
        TableName(format!("{}{}", self.0, suffix))
    }
}

impl fmt::Display for TableName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::str::FromStr for TableName {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        TableName::new(s)
    }
}

fn validate(name: &str) -> Result<()> {
    let invalid = |reason: String| Err(Error::invalid("table name", reason));
    if name.is_empty() {
        return invalid("empty".into());
    }
    if name.len() > MAX_TABLE_NAME_LEN {
        return invalid(format!(
            "`{}...` is longer than {MAX_TABLE_NAME_LEN} characters",
            name.chars().take(16).collect::<String>()
        ));
    }
    let first = name.as_bytes()[0];
    if !(first.is_ascii_lowercase() || first == b'_') {
        return invalid(format!(
            "{name:?} must start with a lower-case ASCII letter or `_`"
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return invalid(format!(
            "{name:?} contains {c:?}; only lower-case ASCII letters, digits and `_` are allowed"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_plain_identifiers() {
        for ok in [
            "streams_egress",
            "_outbox",
            "a",
            "outbox_2",
            &"x".repeat(48),
        ] {
            assert_eq!(TableName::new(ok).unwrap().as_str(), ok);
        }
    }

    #[test]
    fn rejects_hostile_and_odd_names() {
        for bad in [
            "",
            "1outbox",
            "Outbox",
            "out box",
            "outbox;",
            "outbox\"; DROP TABLE users; --",
            "outbox`; DROP TABLE users; --",
            "public.outbox",
            "out-box",
            "outbox'",
            "outbox\0",
            "öutbox",
            "outbox\n",
            &"x".repeat(49),
        ] {
            let err = TableName::new(bad).unwrap_err();
            assert!(matches!(err, Error::Invalid { .. }), "{bad:?}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn derives_names() {
        let t: TableName = "streams_egress".parse().unwrap();
        assert_eq!(
            t.derived("_quarantine").as_str(),
            "streams_egress_quarantine"
        );
        assert_eq!(t.to_string(), "streams_egress");
    }
}
