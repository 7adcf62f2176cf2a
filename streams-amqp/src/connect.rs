//! `amqp://` connection URLs.

use std::sync::Arc;

use streams_core::{invalid_url, ConnectUrl, Connection, Result};

use crate::admin::AmqpAdmin;
use crate::{AmqpClient, AmqpConfig, AmqpReader, AmqpWriter, QueueType};

/// The parameters an `amqp://` URL takes (the others go to the broker as lapin reads
/// them: `heartbeat`, `frame_max`, `channel_max`).
const OURS: [&str; 6] = [
    "group",
    "connect_timeout",
    "operation_timeout",
    "queue_type",
    "prefetch",
    "concurrency",
];

/// Connects to RabbitMQ from an `amqp://user:pass@host:port/vhost[?group=G&...]` URL: an
/// [`AmqpWriter`], an [`AmqpReader`] and stream administration sharing one connection.
///
/// Parameters: `group` (the consumer group of read tasks that name none),
/// `connect_timeout` and `operation_timeout` (10 s each), `queue_type` (`quorum`, the
/// default, or `classic`), `prefetch` (64), `concurrency` (1); `heartbeat`, `frame_max`
/// and `channel_max` go to the broker. The virtual host is the path, `%2f` for `/`.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_amqp::connect("amqp://guest:guest@127.0.0.1:5672/%2f?group=billing").await?;
/// conn.create_stream("orders", 1).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a malformed URL or a bad value;
/// the errors of [`AmqpClient::connect`].
pub async fn connect(url: &str) -> Result<Connection> {
    let (config, group) = parse(url)?;
    let client = AmqpClient::connect(config).await?;
    let writer = Arc::new(AmqpWriter::new(client.clone()));
    let reader = Arc::new(AmqpReader::new(client.clone()));
    Ok(Connection::new("amqp", writer, Some(reader))
        .with_default_group(group)
        .with_admin(Arc::new(AmqpAdmin(client))))
}

fn parse(url: &str) -> Result<(AmqpConfig, Option<String>)> {
    let parsed = ConnectUrl::parse("amqp", url)?;
    if parsed.host_list("broker")?.len() > 1 {
        return Err(invalid_url("an `amqp://` URL names one broker"));
    }
    let mut params = parsed.params;
    let group = params.take_nonempty("group")?;
    let connect_timeout = params.take_duration("connect_timeout")?;
    let operation_timeout = params.take_duration("operation_timeout")?;
    let queue_type = match params.take("queue_type").as_deref() {
        None | Some("quorum") => QueueType::Quorum,
        Some("classic") => QueueType::Classic,
        Some(other) => {
            return Err(invalid_url(format!(
                "`queue_type` is `quorum` or `classic`, not `{other}`"
            )))
        }
    };
    let prefetch = params.take_positive("prefetch")?;
    let concurrency = params.take_positive("concurrency")?;
    let rest = params.into_rest();
    if let Some((k, _)) = rest
        .iter()
        .find(|(k, _)| !["heartbeat", "frame_max", "channel_max"].contains(&k.as_str()))
    {
        return Err(invalid_url(format!(
            "unknown parameter `{k}` in an `amqp://` URL; known: {}, heartbeat, frame_max, channel_max",
            OURS.join(", ")
        )));
    }
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let mut broker = base.to_owned();
    if !rest.is_empty() {
        let query: Vec<String> = rest.iter().map(|(k, v)| format!("{k}={v}")).collect();
        broker = format!("{broker}?{}", query.join("&"));
    }
    let mut config = AmqpConfig::new(broker).with_queue_type(queue_type);
    if let Some(t) = connect_timeout {
        config = config.with_connect_timeout(t);
    }
    if let Some(t) = operation_timeout {
        config = config.with_operation_timeout(t);
    }
    if let Some(n) = prefetch {
        config = config.with_prefetch(u16::try_from(n).unwrap_or(u16::MAX));
    }
    if let Some(n) = concurrency {
        config = config.with_concurrency(n);
    }
    Ok((config, group))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse(url).unwrap_err().to_string()
    }

    #[test]
    fn parses_our_parameters_and_passes_the_broker_ones() {
        let (c, group) =
            parse("amqp://u:p@h:5673/v?group=g&queue_type=classic&prefetch=10&heartbeat=5")
                .unwrap();
        assert_eq!(group.as_deref(), Some("g"));
        assert_eq!(c.queue_type, QueueType::Classic);
        assert_eq!(c.prefetch(), 10);
        assert_eq!(c.address(), "h:5673");
        assert!(!format!("{c:?}").contains("u:p"));
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(err("amqp://h?partitions=3").contains("unknown parameter `partitions`"));
        assert!(err("amqp://h?queue_type=stream").contains("quorum"));
        assert!(err("amqp://h?prefetch=0").contains("positive integer"));
        assert!(err("amqp://a,b").contains("one broker"));
    }
}
