//! Parsing of connection URLs into a [`Target`], independent of the enabled features so
//! that every scheme's grammar is checked (and unit tested) in every build.

use std::fmt;

use percent_encoding::percent_decode_str;
use streams_core::{Error, Result};
use url::Url;

/// What [`Error::Invalid`] names for every URL problem.
const WHAT: &str = "streams URL";

/// Brokers of a `kafka://` URL without any.
pub(crate) const DEFAULT_KAFKA_BROKERS: &str = "localhost:9092";

/// Outbox table of a SQL URL without `table`: the Go library's table name.
pub(crate) const DEFAULT_OUTBOX_TABLE: &str = "streams_egress";

/// A platform that can be named in a URL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scheme {
    Memory,
    Kafka,
    Sqs,
    Sns,
    Postgres,
    MySql,
}

/// Every scheme, with the cargo feature it needs, in the order error messages list them.
const SCHEMES: [(&str, Scheme); 7] = [
    ("memory", Scheme::Memory),
    ("kafka", Scheme::Kafka),
    ("sqs", Scheme::Sqs),
    ("sns", Scheme::Sns),
    ("postgres", Scheme::Postgres),
    ("postgresql", Scheme::Postgres),
    ("mysql", Scheme::MySql),
];

impl Scheme {
    fn from_name(name: &str) -> Option<Scheme> {
        SCHEMES
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, s)| *s)
    }

    /// The platform name reported by [`Connection::platform`](crate::Connection::platform).
    pub(crate) fn platform(self) -> &'static str {
        match self {
            Scheme::Memory => "memory",
            Scheme::Kafka => "kafka",
            Scheme::Sqs => "sqs",
            Scheme::Sns => "sns",
            Scheme::Postgres => "postgres",
            Scheme::MySql => "mysql",
        }
    }

    /// The cargo feature of the `streams` crate that enables this scheme.
    pub(crate) fn feature(self) -> &'static str {
        match self {
            Scheme::Memory => "chanbuf",
            Scheme::Kafka => "kafka",
            Scheme::Sqs => "sqs",
            Scheme::Sns => "sns",
            Scheme::Postgres | Scheme::MySql => "sql",
        }
    }

    /// Whether this build has the scheme's driver.
    pub(crate) fn enabled(self) -> bool {
        match self {
            Scheme::Memory => cfg!(feature = "chanbuf"),
            Scheme::Kafka => cfg!(feature = "kafka"),
            Scheme::Sqs => cfg!(feature = "sqs"),
            Scheme::Sns => cfg!(feature = "sns"),
            Scheme::Postgres | Scheme::MySql => cfg!(feature = "sql"),
        }
    }
}

/// `supported: ...; enabled in this build: ...`, the tail of every scheme error.
pub(crate) fn schemes_summary() -> String {
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

fn invalid(reason: impl Into<String>) -> Error {
    Error::invalid(WHAT, reason)
}

/// The scheme of `url`, whether or not its feature is enabled.
///
/// # Errors
///
/// [`Error::Invalid`] when `url` has no scheme or an unknown one.
pub(crate) fn scheme_of(url: &str) -> Result<Scheme> {
    let Some((name, _)) = url.split_once("://") else {
        return Err(invalid(format!(
            "expected `<scheme>://...`; {}",
            schemes_summary()
        )));
    };
    Scheme::from_name(name).ok_or_else(|| {
        // The name only, never the rest: URLs may carry passwords.
        invalid(format!("unknown scheme `{name}`; {}", schemes_summary()))
    })
}

/// Fails with a message naming the feature when the scheme's driver is not built in.
pub(crate) fn ensure_enabled(scheme: Scheme) -> Result<()> {
    if scheme.enabled() {
        return Ok(());
    }
    Err(invalid(format!(
        "`{}://` needs the `{}` feature of the `streams` crate, which this build does not enable; {}",
        scheme.platform(),
        scheme.feature(),
        schemes_summary()
    )))
}

/// A parsed connection URL.
// Fields of platforms whose feature is off are parsed (so the grammar is checked in every
// build) but never read.
#[cfg_attr(
    not(all(
        feature = "chanbuf",
        feature = "kafka",
        feature = "sqs",
        feature = "sns",
        feature = "sql"
    )),
    allow(dead_code)
)]
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Memory {
        capacity: Option<usize>,
        concurrency: Option<usize>,
    },
    Kafka {
        brokers: String,
        group: Option<String>,
        settings: Vec<(String, String)>,
    },
    Sqs {
        aws: Aws,
        /// Long-poll time of receives, `wait_time_seconds` (0 to 20).
        wait_secs: Option<u64>,
    },
    Sns {
        aws: Aws,
        account_id: Option<String>,
    },
    Postgres(Sql),
    MySql(Sql),
}

/// Connection settings shared by the AWS schemes.
#[cfg_attr(not(all(feature = "sqs", feature = "sns")), allow(dead_code))]
#[derive(PartialEq, Eq, Default)]
pub(crate) struct Aws {
    pub(crate) endpoint: Option<String>,
    pub(crate) region: Option<String>,
    pub(crate) credentials: Option<(String, String)>,
}

impl fmt::Debug for Aws {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aws")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(id, _)| id),
            )
            .finish_non_exhaustive()
    }
}

/// Settings of the SQL outbox schemes.
#[cfg_attr(not(feature = "sql"), allow(dead_code))]
#[derive(PartialEq, Eq)]
pub(crate) struct Sql {
    /// The URL handed to sqlx, without the parameters `streams` consumes.
    pub(crate) url: String,
    pub(crate) table: String,
    pub(crate) create_table: bool,
}

impl fmt::Debug for Sql {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("Sql")
            .field("table", &self.table)
            .field("create_table", &self.create_table)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parses `url`, whatever features are enabled.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming what is wrong.
    pub(crate) fn parse(url: &str) -> Result<Target> {
        let scheme = scheme_of(url)?;
        match scheme {
            Scheme::Memory => parse_memory(&parse_url(scheme, url)?),
            // Several brokers (`h1:9092,h2:9092`) are no valid URL authority, so the
            // broker list is split off before the `url` crate sees each broker.
            Scheme::Kafka => parse_kafka(url),
            Scheme::Sqs => {
                let parsed = parse_url(scheme, url)?;
                let aws = parse_aws(scheme, &parsed, &["wait_time_seconds"])?;
                let wait_secs = match parsed.query_pairs().find(|(k, _)| k == "wait_time_seconds") {
                    None => None,
                    Some((_, v)) => match v.parse::<u64>() {
                        Ok(secs) if secs <= 20 => Some(secs),
                        _ => {
                            return Err(invalid(format!(
                                "`wait_time_seconds` must be a whole number from 0 to 20, not `{v}`"
                            )))
                        }
                    },
                };
                Ok(Target::Sqs { aws, wait_secs })
            }
            Scheme::Sns => {
                let parsed = parse_url(scheme, url)?;
                let aws = parse_aws(scheme, &parsed, &["account_id"])?;
                let account_id = parsed
                    .query_pairs()
                    .find(|(k, _)| k == "account_id")
                    .map(|(_, v)| v.into_owned());
                Ok(Target::Sns { aws, account_id })
            }
            Scheme::Postgres => Ok(Target::Postgres(parse_sql(&parse_url(scheme, url)?)?)),
            Scheme::MySql => Ok(Target::MySql(parse_sql(&parse_url(scheme, url)?)?)),
        }
    }
}

fn parse_url(scheme: Scheme, url: &str) -> Result<Url> {
    Url::parse(url).map_err(|e| invalid(format!("malformed `{}://` URL: {e}", scheme.platform())))
}

fn no_path_or_fragment(scheme: Scheme, url: &Url) -> Result<()> {
    if !(url.path().is_empty() || url.path() == "/") {
        return Err(invalid(format!(
            "a `{}://` URL has no path, found `{}`",
            scheme.platform(),
            url.path()
        )));
    }
    if url.fragment().is_some() {
        return Err(invalid(format!(
            "a `{}://` URL has no fragment (`#...`)",
            scheme.platform()
        )));
    }
    Ok(())
}

fn unknown_parameter(scheme: Scheme, key: &str, known: &[&str]) -> Error {
    invalid(format!(
        "unknown parameter `{key}` in a `{}://` URL; known: {}",
        scheme.platform(),
        known.join(", ")
    ))
}

fn positive(key: &str, value: &str) -> Result<usize> {
    match value.parse::<usize>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid(format!(
            "`{key}` must be a positive integer, found `{value}`"
        ))),
    }
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(invalid(format!(
            "`{key}` must be true or false, found `{value}`"
        ))),
    }
}

fn parse_memory(url: &Url) -> Result<Target> {
    let scheme = Scheme::Memory;
    if url.host_str().is_some_and(|h| !h.is_empty()) {
        return Err(invalid(
            "a `memory://` URL names no host: each connect(\"memory://\") is a bus of its own",
        ));
    }
    no_path_or_fragment(scheme, url)?;
    let (mut capacity, mut concurrency) = (None, None);
    for (key, value) in url.query_pairs() {
        match &*key {
            "capacity" => capacity = Some(positive(&key, &value)?),
            "concurrency" => concurrency = Some(positive(&key, &value)?),
            _ => {
                return Err(unknown_parameter(
                    scheme,
                    &key,
                    &["capacity", "concurrency"],
                ))
            }
        }
    }
    Ok(Target::Memory {
        capacity,
        concurrency,
    })
}

fn parse_kafka(url: &str) -> Result<Target> {
    let scheme = Scheme::Kafka;
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    if rest.contains('#') {
        return Err(invalid("a `kafka://` URL has no fragment (`#...`)"));
    }
    let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = location.split_once('/').unwrap_or((location, ""));
    if !path.is_empty() {
        return Err(invalid(format!(
            "a `kafka://` URL has no path, found `/{path}`"
        )));
    }
    if authority.contains('@') {
        return Err(invalid(
            "a `kafka://` URL takes no user or password: pass `sasl.username` and `sasl.password` as parameters",
        ));
    }
    let brokers = if authority.is_empty() {
        DEFAULT_KAFKA_BROKERS.to_owned()
    } else {
        let mut brokers = Vec::new();
        for broker in authority.split(',') {
            let parsed = Url::parse(&format!("kafka://{broker}"))
                .ok()
                .filter(|u| u.host_str().is_some_and(|h| !h.is_empty()) && u.path().is_empty());
            let Some(parsed) = parsed else {
                return Err(invalid(format!(
                    "malformed broker `{broker}` in a `kafka://` URL: expected `host` or `host:port`"
                )));
            };
            let host = parsed.host_str().unwrap_or_default();
            brokers.push(match parsed.port() {
                Some(port) => format!("{host}:{port}"),
                None => host.to_owned(),
            });
        }
        brokers.join(",")
    };
    let mut group = None;
    let mut settings = Vec::new();
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        match &*key {
            "group" if value.is_empty() => return Err(invalid("`group` is empty")),
            "group" => group = Some(value.into_owned()),
            "bootstrap.servers" => {
                return Err(invalid(
                    "name the brokers as the host of a `kafka://` URL, not as `bootstrap.servers`",
                ))
            }
            "" => {
                return Err(unknown_parameter(
                    scheme,
                    "",
                    &["group", "any librdkafka property"],
                ))
            }
            _ => settings.push((key.into_owned(), value.into_owned())),
        }
    }
    Ok(Target::Kafka {
        brokers,
        group,
        settings,
    })
}

fn parse_aws(scheme: Scheme, url: &Url, extra: &[&str]) -> Result<Aws> {
    no_path_or_fragment(scheme, url)?;
    let mut aws = Aws::default();
    let mut tls = false;
    for (key, value) in url.query_pairs() {
        match &*key {
            "region" if value.is_empty() => return Err(invalid("`region` is empty")),
            "region" => aws.region = Some(value.into_owned()),
            "tls" => tls = boolean(&key, &value)?,
            k if extra.contains(&k) => {}
            _ => {
                let mut known = vec!["region", "tls"];
                known.extend_from_slice(extra);
                return Err(unknown_parameter(scheme, &key, &known));
            }
        }
    }
    if let Some(host) = url.host_str().filter(|h| !h.is_empty()) {
        let protocol = if tls { "https" } else { "http" };
        aws.endpoint = Some(match url.port() {
            Some(port) => format!("{protocol}://{host}:{port}"),
            None => format!("{protocol}://{host}"),
        });
    } else if tls {
        return Err(invalid(format!(
            "`tls` applies to an endpoint override: `{}://host:port?tls=true`",
            scheme.platform()
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        let decode = |s: &str| percent_decode_str(s).decode_utf8_lossy().into_owned();
        match url.password() {
            Some(secret) if !url.username().is_empty() => {
                aws.credentials = Some((decode(url.username()), decode(secret)));
            }
            _ => {
                return Err(invalid(format!(
                    "credentials in a `{}://` URL need both parts: `access_key_id:secret_access_key@host`",
                    scheme.platform()
                )))
            }
        }
    }
    Ok(aws)
}

fn parse_sql(url: &Url) -> Result<Sql> {
    let mut table = DEFAULT_OUTBOX_TABLE.to_owned();
    let mut create_table = false;
    let mut rest = Vec::new();
    for (key, value) in url.query_pairs() {
        match &*key {
            "table" => table = value.into_owned(),
            "create_table" => create_table = boolean(&key, &value)?,
            // Everything else is the database driver's (sslmode, ...).
            _ => rest.push((key.into_owned(), value.into_owned())),
        }
    }
    let mut url = url.clone();
    if rest.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(rest);
    }
    Ok(Sql {
        url: url.into(),
        table,
        create_table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(err: Error) -> String {
        match err {
            Error::Invalid { what, reason } => {
                assert_eq!(what, WHAT);
                reason
            }
            other => panic!("want Error::Invalid, got {other:?}"),
        }
    }

    fn parse_err(url: &str) -> String {
        reason(Target::parse(url).expect_err(url))
    }

    #[test]
    fn memory_defaults_and_parameters() {
        assert_eq!(
            Target::parse("memory://").unwrap(),
            Target::Memory {
                capacity: None,
                concurrency: None
            }
        );
        assert_eq!(
            Target::parse("memory://?capacity=1024&concurrency=4").unwrap(),
            Target::Memory {
                capacity: Some(1024),
                concurrency: Some(4)
            }
        );
        assert!(parse_err("memory://?capacity=0").contains("positive integer"));
        assert!(parse_err("memory://?capacity=many").contains("positive integer"));
        assert!(parse_err("memory://?size=3").contains("unknown parameter `size`"));
        assert!(parse_err("memory://somewhere").contains("no host"));
    }

    #[test]
    fn kafka_brokers_group_and_settings() {
        let target = Target::parse(
            "kafka://b1:9092,b2:9093?group=billing&session.timeout.ms=6000&compression.type=lz4",
        )
        .unwrap();
        assert_eq!(
            target,
            Target::Kafka {
                brokers: "b1:9092,b2:9093".into(),
                group: Some("billing".into()),
                settings: vec![
                    ("session.timeout.ms".into(), "6000".into()),
                    ("compression.type".into(), "lz4".into()),
                ],
            }
        );
        let Target::Kafka { brokers, group, .. } = Target::parse("kafka://").unwrap() else {
            panic!("not kafka");
        };
        assert_eq!(brokers, DEFAULT_KAFKA_BROKERS);
        assert_eq!(group, None);
        let Target::Kafka { brokers, .. } = Target::parse("kafka://[::1]:9092/").unwrap() else {
            panic!("not kafka");
        };
        assert_eq!(brokers, "[::1]:9092");
    }

    #[test]
    fn kafka_malformed() {
        assert!(parse_err("kafka://b1:notaport").contains("malformed broker `b1:notaport`"));
        assert!(parse_err("kafka://b1:9092,,b2:9092").contains("malformed broker ``"));
        assert!(parse_err("kafka://b1:9092/topic").contains("no path"));
        assert!(parse_err("kafka://u:p@b1:9092").contains("sasl.username"));
        assert!(parse_err("kafka://b1?group=").contains("`group` is empty"));
        assert!(parse_err("kafka://b1?bootstrap.servers=x").contains("host"));
    }

    #[test]
    fn sqs_endpoint_region_credentials() {
        assert_eq!(
            Target::parse("sqs://").unwrap(),
            Target::Sqs {
                aws: Aws::default(),
                wait_secs: None
            }
        );
        assert_eq!(
            Target::parse("sqs://test:s%2Fcret@127.0.0.1:4566?region=us-east-1").unwrap(),
            Target::Sqs {
                aws: Aws {
                    endpoint: Some("http://127.0.0.1:4566".into()),
                    region: Some("us-east-1".into()),
                    credentials: Some(("test".into(), "s/cret".into())),
                },
                wait_secs: None,
            }
        );
        let Target::Sqs { wait_secs, .. } = Target::parse("sqs://h:1?wait_time_seconds=2").unwrap()
        else {
            panic!("not sqs");
        };
        assert_eq!(wait_secs, Some(2));
        assert!(parse_err("sqs://h:1?wait_time_seconds=21").contains("0 to 20"));
        assert!(parse_err("sqs://h:1?wait_time_seconds=x").contains("0 to 20"));
        let Target::Sqs { aws, .. } = Target::parse("sqs://sqs.example.com?tls=true").unwrap()
        else {
            panic!("not sqs");
        };
        assert_eq!(aws.endpoint.as_deref(), Some("https://sqs.example.com"));
        assert!(parse_err("sqs://?tls=true").contains("endpoint override"));
        assert!(parse_err("sqs://host?queue=x").contains("unknown parameter `queue`"));
        assert!(parse_err("sqs://onlyuser@host").contains("both parts"));
        assert!(parse_err("sqs://host:99999").contains("malformed `sqs://` URL"));
        assert!(parse_err("sqs://host/path").contains("no path"));
    }

    #[test]
    fn sns_account_id() {
        let Target::Sns { aws, account_id } =
            Target::parse("sns://localhost:4566?region=eu-west-1&account_id=123456789012").unwrap()
        else {
            panic!("not sns");
        };
        assert_eq!(aws.endpoint.as_deref(), Some("http://localhost:4566"));
        assert_eq!(account_id.as_deref(), Some("123456789012"));
    }

    #[test]
    fn sql_table_and_driver_parameters() {
        let Target::Postgres(sql) = Target::parse(
            "postgres://u:pw@db:5432/app?table=orders_outbox&create_table=true&sslmode=disable",
        )
        .unwrap() else {
            panic!("not postgres");
        };
        assert_eq!(sql.url, "postgres://u:pw@db:5432/app?sslmode=disable");
        assert_eq!(sql.table, "orders_outbox");
        assert!(sql.create_table);
        let Target::MySql(sql) = Target::parse("mysql://root@127.0.0.1:3306/test").unwrap() else {
            panic!("not mysql");
        };
        assert_eq!(sql.url, "mysql://root@127.0.0.1:3306/test");
        assert_eq!(sql.table, DEFAULT_OUTBOX_TABLE);
        assert!(!sql.create_table);
        assert!(matches!(
            Target::parse("postgresql://db/app").unwrap(),
            Target::Postgres(_)
        ));
        assert!(parse_err("mysql://db/app?create_table=maybe").contains("true or false"));
    }

    #[test]
    fn unknown_and_missing_schemes_list_the_supported_ones() {
        let r = parse_err("nats://localhost:4222");
        assert!(r.contains("unknown scheme `nats`"), "{r}");
        assert!(r.contains("supported: memory://"), "{r}");
        assert!(r.contains("kafka:// (feature `kafka`)"), "{r}");
        assert!(r.contains("enabled in this build:"), "{r}");
        let r = parse_err("localhost:9092");
        assert!(r.contains("expected `<scheme>://...`"), "{r}");
    }

    #[test]
    fn errors_never_echo_passwords() {
        for url in [
            "sqs://id:hunter2@host/path",
            "sqs://id:hunter2@host?nope=1",
            "nats://id:hunter2@host",
            "kafka://id:hunter2@host",
        ] {
            let r = parse_err(url);
            assert!(!r.contains("hunter2"), "{url}: {r}");
        }
        let Target::Postgres(sql) = Target::parse("postgres://u:hunter2@db/app").unwrap() else {
            panic!("not postgres");
        };
        assert!(!format!("{sql:?}").contains("hunter2"));
    }

    #[test]
    fn enabled_matches_features() {
        assert_eq!(
            ensure_enabled(Scheme::Memory).is_ok(),
            cfg!(feature = "chanbuf")
        );
        assert_eq!(
            ensure_enabled(Scheme::Kafka).is_ok(),
            cfg!(feature = "kafka")
        );
        assert_eq!(ensure_enabled(Scheme::Sqs).is_ok(), cfg!(feature = "sqs"));
        assert_eq!(ensure_enabled(Scheme::Sns).is_ok(), cfg!(feature = "sns"));
        assert_eq!(ensure_enabled(Scheme::MySql).is_ok(), cfg!(feature = "sql"));
    }
}
