//! `kafka://` connection URLs.

use std::sync::Arc;

use streams_core::{
    async_trait, invalid_url, ConnectUrl, Connection, DefaultGroupReader, Reader, Result,
    StreamAdmin,
};

use crate::{create_topic, delete_topic, KafkaConfig, KafkaReader, KafkaWriter};

/// Brokers of a `kafka://` URL without any.
pub const DEFAULT_BROKERS: &str = "localhost:9092";

/// What a `kafka://` URL says.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    brokers: String,
    group: Option<String>,
    connect_timeout: Option<std::time::Duration>,
    settings: Vec<(String, String)>,
}

/// Builds a Kafka writer and reader from a
/// `kafka://[host:port[,host:port...]][?group=G&connect_timeout=D&<librdkafka key>=<value>...]`
/// URL.
///
/// Brokers default to `localhost:9092`. `group` is the consumer group of read tasks
/// that name none (the reader is wrapped in a [`DefaultGroupReader`]);
/// `connect_timeout` (`20s` by default, `5s`, `500ms`) bounds the first contact with
/// the brokers, so a wrong address fails fast ([`KafkaConfig::with_connect_timeout`]);
/// every other
/// parameter is a librdkafka property passed to [`KafkaConfig::with_property`] unchanged
/// (`session.timeout.ms=6000`, `security.protocol=SASL_SSL`, `sasl.username=...`).
/// The connection creates and deletes topics.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_kafka::connect("kafka://localhost:9092?group=billing").await?;
/// conn.create_stream("orders", 3).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a malformed broker, a path, a
/// user or password (use `sasl.username`/`sasl.password`), an empty group or
/// `bootstrap.servers` as a parameter; a driver error when the producer cannot be
/// created (an invalid librdkafka property).
pub async fn connect(url: &str) -> Result<Connection> {
    let parsed = parse(url)?;
    let mut config = parsed
        .settings
        .into_iter()
        .fold(KafkaConfig::new(parsed.brokers), |c, (k, v)| {
            c.with_property(k, v)
        });
    if let Some(timeout) = parsed.connect_timeout {
        config = config.with_connect_timeout(timeout);
    }
    let writer = Arc::new(KafkaWriter::new(&config)?);
    let reader = KafkaReader::new(config.clone());
    let reader: Arc<dyn Reader> = match parsed.group {
        Some(group) => Arc::new(DefaultGroupReader::new(reader, group)),
        None => Arc::new(reader),
    };
    Ok(Connection::new("kafka", writer, Some(reader)).with_admin(Arc::new(TopicAdmin(config))))
}

fn parse(url: &str) -> Result<Parsed> {
    let url = ConnectUrl::parse("kafka", url)?;
    url.no_path()?;
    url.no_credentials("pass `sasl.username` and `sasl.password` as parameters")?;
    // Several brokers (`h1:9092,h2:9092`) are no single URL authority.
    let brokers = if url.hosts.is_empty() {
        DEFAULT_BROKERS.to_owned()
    } else {
        let brokers: Vec<String> = url
            .host_list("broker")?
            .into_iter()
            .map(|(host, port)| match port {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
            .collect();
        brokers.join(",")
    };
    let mut params = url.params;
    let group = params.take_nonempty("group")?;
    let connect_timeout = params.take_duration("connect_timeout")?;
    if params.take("bootstrap.servers").is_some() {
        return Err(invalid_url(
            "name the brokers as the host of a `kafka://` URL, not as `bootstrap.servers`",
        ));
    }
    let settings = params.into_rest();
    if settings.iter().any(|(k, _)| k.is_empty()) {
        return Err(invalid_url(
            "unknown parameter `` in a `kafka://` URL; known: group, any librdkafka property",
        ));
    }
    Ok(Parsed {
        brokers,
        group,
        connect_timeout,
        settings,
    })
}

/// Topics as the streams of a `kafka://` connection.
#[derive(Debug)]
struct TopicAdmin(KafkaConfig);

#[async_trait]
impl StreamAdmin for TopicAdmin {
    async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()> {
        let partitions = i32::try_from(partitions.max(1)).unwrap_or(i32::MAX);
        // Replication factor 1 suits development brokers; production topics are made
        // with the platform's tools.
        create_topic(&self.0, stream, partitions, 1).await
    }

    async fn delete_stream(&self, stream: &str) -> Result<()> {
        delete_topic(&self.0, stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse(url).expect_err(url).to_string()
    }

    #[test]
    fn brokers_group_and_settings() {
        assert_eq!(
            parse("kafka://b1:9092,b2:9093?group=billing&session.timeout.ms=6000&compression.type=lz4")
                .unwrap(),
            Parsed {
                brokers: "b1:9092,b2:9093".into(),
                group: Some("billing".into()),
                connect_timeout: None,
                settings: vec![
                    ("session.timeout.ms".into(), "6000".into()),
                    ("compression.type".into(), "lz4".into()),
                ],
            }
        );
        let p = parse("kafka://").unwrap();
        assert_eq!(p.brokers, DEFAULT_BROKERS);
        assert_eq!(p.group, None);
        assert_eq!(parse("kafka://[::1]:9092/").unwrap().brokers, "[::1]:9092");
        let p = parse("kafka://b1?connect_timeout=5s&linger.ms=5").unwrap();
        assert_eq!(p.connect_timeout, Some(std::time::Duration::from_secs(5)));
        assert_eq!(p.settings, [("linger.ms".to_owned(), "5".to_owned())]);
        assert!(err("kafka://b1?connect_timeout=x").contains("`connect_timeout`"));
    }

    #[test]
    fn malformed() {
        assert!(err("kafka://b1:notaport").contains("malformed broker `b1:notaport`"));
        assert!(err("kafka://b1:9092,,b2:9092").contains("malformed broker ``"));
        assert!(err("kafka://b1:9092/topic").contains("no path"));
        assert!(err("kafka://u:p@b1:9092").contains("sasl.username"));
        assert!(!err("kafka://id:hunter2@host").contains("hunter2"));
        assert!(err("kafka://b1?group=").contains("`group` is empty"));
        assert!(err("kafka://b1?bootstrap.servers=x").contains("host"));
    }
}
