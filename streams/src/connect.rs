//! `connect(url)`: maps a URL's scheme to the driver that parses the rest.

use streams_core::{invalid_url, Connection, Result};

/// The environment variable [`connect_from_env`] reads.
pub const URL_ENV: &str = "STREAMS_URL";

/// The URL [`connect_from_env`] uses when [`URL_ENV`] is unset: the in-process bus.
pub const DEFAULT_URL: &str = "memory://";

/// A platform that can be named in a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Memory,
    Kafka,
    Sqs,
    Sns,
    Sql,
}

/// Every scheme with its platform, in the order error messages list them. A new
/// platform is one line here and one arm in [`open`].
const SCHEMES: [(&str, Scheme); 8] = [
    ("memory", Scheme::Memory),
    ("kafka", Scheme::Kafka),
    ("sqs", Scheme::Sqs),
    ("sns", Scheme::Sns),
    ("postgres", Scheme::Sql),
    ("postgresql", Scheme::Sql),
    ("mysql", Scheme::Sql),
    ("mariadb", Scheme::Sql),
];

impl Scheme {
    /// The cargo feature of the `streams` crate that enables this scheme.
    fn feature(self) -> &'static str {
        match self {
            Scheme::Memory => "chanbuf",
            Scheme::Kafka => "kafka",
            Scheme::Sqs => "sqs",
            Scheme::Sns => "sns",
            Scheme::Sql => "sql",
        }
    }

    /// Whether this build has the scheme's driver.
    fn enabled(self) -> bool {
        match self {
            Scheme::Memory => cfg!(feature = "chanbuf"),
            Scheme::Kafka => cfg!(feature = "kafka"),
            Scheme::Sqs => cfg!(feature = "sqs"),
            Scheme::Sns => cfg!(feature = "sns"),
            Scheme::Sql => cfg!(feature = "sql"),
        }
    }
}

/// `supported: ...; enabled in this build: ...`, the tail of every scheme error.
fn schemes_summary() -> String {
    let all: Vec<String> = SCHEMES
        .iter()
        .map(|(n, s)| format!("{n}:// (feature `{}`)", s.feature()))
        .collect();
    let enabled: Vec<String> = SCHEMES
        .iter()
        .filter(|(_, s)| s.enabled())
        .map(|(n, _)| format!("{n}://"))
        .collect();
    let enabled = if enabled.is_empty() {
        "none".to_owned()
    } else {
        enabled.join(", ")
    };
    format!(
        "supported: {}; enabled in this build: {enabled}",
        all.join(", ")
    )
}

/// The scheme of `url`, enabled in this build.
fn scheme_of(url: &str) -> Result<(&str, Scheme)> {
    let Some((name, _)) = url.split_once("://") else {
        return Err(invalid_url(format!(
            "expected `<scheme>://...`; {}",
            schemes_summary()
        )));
    };
    let Some(&(name, scheme)) = SCHEMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        return Err(invalid_url(format!(
            "unknown scheme `{name}`; {}",
            schemes_summary()
        )));
    };
    if !scheme.enabled() {
        return Err(invalid_url(format!(
            "`{name}://` needs the `{}` feature of the `streams` crate, which this build does not enable; {}",
            scheme.feature(),
            schemes_summary()
        )));
    }
    Ok((name, scheme))
}

/// Builds the writer and reader a URL names, so that the platform is configuration
/// rather than code. See the [crate documentation](crate#connection-urls) for the
/// grammar; each driver crate parses its own URL (`streams_kafka::connect`, ...).
///
/// ```
/// # #[cfg(not(feature = "chanbuf"))] fn main() {}
/// # #[cfg(feature = "chanbuf")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> streams::Result<()> {
/// let conn = streams::connect("memory://?queue_depth=256").await?;
/// assert_eq!(conn.platform(), "memory");
/// conn.writer().write(vec![streams::Message::new("orders", "hello")]).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](crate::Error::Invalid) for a malformed URL, an unknown scheme or
/// one whose cargo feature this build does not enable (the message lists the
/// supported and the enabled schemes); a driver error when the platform client cannot
/// be created (for SQL, when the database cannot be reached).
pub async fn connect(url: &str) -> Result<Connection> {
    let (_, scheme) = scheme_of(url)?;
    let conn = open(scheme, url).await?;
    // OpenTelemetry's `messaging.system` values where it has one.
    let system = match conn.platform() {
        "memory" => "in_process",
        "sqs" => "aws_sqs",
        "sns" => "aws_sns",
        "postgres" | "mysql" => "outbox",
        other => other,
    };
    Ok(conn.with_observation(system))
}

async fn open(scheme: Scheme, url: &str) -> Result<Connection> {
    let _ = url;
    match scheme {
        #[cfg(feature = "chanbuf")]
        Scheme::Memory => streams_chanbuf::connect(url).await,
        #[cfg(feature = "kafka")]
        Scheme::Kafka => streams_kafka::connect(url).await,
        #[cfg(feature = "sqs")]
        Scheme::Sqs => streams_sqs::connect(url).await,
        #[cfg(feature = "sns")]
        Scheme::Sns => streams_sns::connect(url).await,
        #[cfg(feature = "sql")]
        Scheme::Sql => streams_sql::connect(url).await,
        // Platforms whose feature is off; `scheme_of` reported them already.
        #[allow(unreachable_patterns)]
        _ => Err(invalid_url("this platform is not enabled in this build")),
    }
}

/// [`connect`] to the URL in `STREAMS_URL`, or `memory://` when it is unset or empty.
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_from_env() -> Result<Connection> {
    let url = std::env::var(URL_ENV)
        .ok()
        .filter(|u| !u.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_URL.to_owned());
    connect(url.trim()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        scheme_of(url).expect_err(url).to_string()
    }

    #[test]
    fn unknown_and_missing_schemes_list_the_supported_ones() {
        let r = err("nats://localhost:4222");
        assert!(r.contains("unknown scheme `nats`"), "{r}");
        assert!(r.contains("supported: memory://"), "{r}");
        assert!(r.contains("kafka:// (feature `kafka`)"), "{r}");
        assert!(r.contains("enabled in this build:"), "{r}");
        let r = err("localhost:9092");
        assert!(r.contains("expected `<scheme>://...`"), "{r}");
        assert!(!err("nats://id:hunter2@host").contains("hunter2"));
    }

    #[test]
    fn enabled_matches_features() {
        for (name, feature) in [
            ("memory://", cfg!(feature = "chanbuf")),
            ("kafka://", cfg!(feature = "kafka")),
            ("sqs://", cfg!(feature = "sqs")),
            ("sns://", cfg!(feature = "sns")),
            ("mysql://", cfg!(feature = "sql")),
            ("POSTGRES://", cfg!(feature = "sql")),
        ] {
            assert_eq!(scheme_of(name).is_ok(), feature, "{name}");
        }
    }
}
