//! `connect(url)`: maps a URL's scheme to the driver that parses the rest.

use streams_core::{invalid_url, Connection, Result};

/// The environment variable [`connect_from_env`] reads.
pub const URL_ENV: &str = "STREAMS_URL";

/// The URL [`connect_from_env`] uses when [`URL_ENV`] is unset: the in-process bus.
pub const DEFAULT_URL: &str = "memory://";

/// Declares the platforms: one line each, `feature => [schemes] => driver's connect`.
/// Writes [`SCHEMES`] and [`open`]; a driver whose feature is off is compiled out.
macro_rules! platforms {
    ($($feature:literal => [$($scheme:literal),+] => $connect:path,)+) => {
        /// Every scheme with the cargo feature of its driver, in the order error
        /// messages list them.
        const SCHEMES: &[(&str, &str)] = &[$($(($scheme, $feature),)+)+];

        /// Whether this build has the driver behind `feature`.
        fn enabled(feature: &str) -> bool {
            $(if feature == $feature {
                return cfg!(feature = $feature);
            })+
            false
        }

        /// Hands `url` to the driver behind `feature`.
        async fn open(feature: &str, url: &str) -> Result<Connection> {
            $(
                #[cfg(feature = $feature)]
                {
                    if feature == $feature {
                        return $connect(url).await;
                    }
                }
            )+
            let _ = (feature, url);
            Err(invalid_url("this platform is not enabled in this build"))
        }
    };
}

platforms! {
    "chanbuf" => ["memory"] => streams_chanbuf::connect,
    "amqp" => ["amqp"] => streams_amqp::connect,
    "kafka" => ["kafka"] => streams_kafka::connect,
    "nats" => ["nats"] => streams_nats::connect,
    "redis" => ["redis"] => streams_redis::connect,
    "sqs" => ["sqs"] => streams_sqs::connect,
    "sns" => ["sns"] => streams_sns::connect,
    "sql" => ["postgres", "postgresql", "mysql", "mariadb"] => streams_sql::connect,
}

/// `supported: ...; enabled in this build: ...`, the tail of every scheme error.
fn schemes_summary() -> String {
    let all: Vec<String> = SCHEMES
        .iter()
        .map(|(n, f)| format!("{n}:// (feature `{f}`)"))
        .collect();
    let enabled: Vec<String> = SCHEMES
        .iter()
        .filter(|(_, f)| enabled(f))
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

/// The scheme of `url` and its driver's feature, enabled in this build.
fn scheme_of(url: &str) -> Result<(&'static str, &'static str)> {
    let Some((name, _)) = url.split_once("://") else {
        return Err(invalid_url(format!(
            "expected `<scheme>://...`; {}",
            schemes_summary()
        )));
    };
    let Some(&(name, feature)) = SCHEMES.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)) else {
        return Err(invalid_url(format!(
            "unknown scheme `{name}`; {}",
            schemes_summary()
        )));
    };
    if !enabled(feature) {
        return Err(invalid_url(format!(
            "`{name}://` needs the `{feature}` feature of the `streams` crate, which this build does not enable; {}",
            schemes_summary()
        )));
    }
    Ok((name, feature))
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
    let (_, feature) = scheme_of(url)?;
    let conn = open(feature, url).await?;
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
        let r = err("mqtt://localhost:1883");
        assert!(r.contains("unknown scheme `mqtt`"), "{r}");
        assert!(r.contains("supported: memory://"), "{r}");
        assert!(r.contains("kafka:// (feature `kafka`)"), "{r}");
        assert!(r.contains("enabled in this build:"), "{r}");
        let r = err("localhost:9092");
        assert!(r.contains("expected `<scheme>://...`"), "{r}");
        assert!(!err("mqtt://id:hunter2@host").contains("hunter2"));
    }

    #[test]
    fn enabled_matches_features() {
        for (name, feature) in [
            ("memory://", cfg!(feature = "chanbuf")),
            ("kafka://", cfg!(feature = "kafka")),
            ("nats://", cfg!(feature = "nats")),
            ("amqp://", cfg!(feature = "amqp")),
            ("redis://", cfg!(feature = "redis")),
            ("sqs://", cfg!(feature = "sqs")),
            ("sns://", cfg!(feature = "sns")),
            ("mysql://", cfg!(feature = "sql")),
            ("POSTGRES://", cfg!(feature = "sql")),
        ] {
            assert_eq!(scheme_of(name).is_ok(), feature, "{name}");
        }
    }
}
