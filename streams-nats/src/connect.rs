//! `nats://` connection URLs.

use std::sync::Arc;

use streams_core::{invalid_url, ConnectUrl, Connection, Result};

use crate::admin::NatsAdmin;
use crate::client::DEFAULT_SERVER;
use crate::{NatsClient, NatsConfig, NatsReader, NatsWriter};

/// The parameters a `nats://` URL takes.
const KNOWN: [&str; 7] = [
    "group",
    "connect_timeout",
    "request_timeout",
    "ack_wait",
    "concurrency",
    "prefetch",
    "token",
];

/// Connects to NATS from a `nats://[user:pass@]host:port[,host:port...][?group=G&...]`
/// URL: a [`NatsWriter`], a [`NatsReader`] and stream administration (JetStream streams,
/// see [`create_stream`](crate::create_stream)) sharing one connection.
///
/// Parameters: `group` (the consumer group of read tasks that name none),
/// `connect_timeout` (first contact, default 10 s), `request_timeout` (JetStream
/// requests such as publish acknowledgements, default 10 s), `ack_wait` (default 30 s),
/// `concurrency` (handler calls at once per read task, default 1), `prefetch`
/// (messages pulled ahead of the handlers, default 64), `token`. Without a
/// host, `127.0.0.1:4222`.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_nats::connect("nats://127.0.0.1:4222?group=billing").await?;
/// conn.create_stream("orders", 1).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a malformed URL, a path, an
/// unknown parameter or a bad value; the errors of [`NatsClient::connect`].
pub async fn connect(url: &str) -> Result<Connection> {
    let (config, group) = parse(url)?;
    let client = NatsClient::connect(config).await?;
    let writer = Arc::new(NatsWriter::new(client.clone()));
    let reader = Arc::new(NatsReader::new(client.clone()));
    Ok(Connection::new("nats", writer, Some(reader))
        .with_default_group(group)
        .with_admin(Arc::new(NatsAdmin(client))))
}

fn parse(url: &str) -> Result<(NatsConfig, Option<String>)> {
    let url = ConnectUrl::parse("nats", url)?;
    url.no_path()?;
    let servers = if url.hosts.is_empty() {
        DEFAULT_SERVER.to_owned()
    } else {
        url.host_list("server")?
            .into_iter()
            .map(|(host, port)| format!("{host}:{}", port.unwrap_or(4222)))
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut config = NatsConfig::new(&servers);
    match (&url.user, &url.password) {
        (Some(user), Some(password)) => {
            config = config.with_user_and_password(user.clone(), password.clone());
        }
        (Some(_), None) => {
            return Err(invalid_url(
                "a `nats://` URL with a user needs its password (`nats://user:pass@host`)",
            ))
        }
        _ => {}
    }
    let mut params = url.params;
    let group = params.take_nonempty("group")?;
    if let Some(t) = params.take_duration("connect_timeout")? {
        config = config.with_connect_timeout(t);
    }
    if let Some(t) = params.take_duration("request_timeout")? {
        config = config.with_request_timeout(t);
    }
    if let Some(t) = params.take_duration("ack_wait")? {
        config = config.with_ack_wait(t);
    }
    if let Some(n) = params.take_positive("concurrency")? {
        config = config.with_concurrency(n);
    }
    if let Some(n) = params.take_positive("prefetch")? {
        config = config.with_prefetch(n);
    }
    if let Some(token) = params.take_nonempty("token")? {
        config = config.with_token(token);
    }
    params.finish(&KNOWN)?;
    Ok((config, group))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn err(url: &str) -> String {
        parse(url).unwrap_err().to_string()
    }

    #[test]
    fn parses_servers_credentials_and_parameters() {
        let (c, group) =
            parse("nats://u:p%40ss@h1:4223,h2?group=g&ack_wait=5s&concurrency=4").unwrap();
        assert_eq!(c.servers(), ["h1:4223", "h2:4222"]);
        assert_eq!(group.as_deref(), Some("g"));
        assert_eq!(c.ack_wait, Duration::from_secs(5));
        assert_eq!(c.concurrency, 4);
        let dbg = format!("{c:?}");
        assert!(!dbg.contains("p@ss") && !dbg.contains("p%40ss"), "{dbg}");
        let (c, group) = parse("nats://").unwrap();
        assert_eq!(c.servers(), [DEFAULT_SERVER]);
        assert_eq!(group, None);
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(err("nats://h/path").contains("path"));
        assert!(err("nats://h?partitions=3").contains("unknown parameter `partitions`"));
        assert!(err("nats://h?ack_wait=soon").contains("`ack_wait`"));
        assert!(err("nats://h?concurrency=0").contains("positive integer"));
        assert!(err("nats://user@h").contains("password"));
        assert!(err("nats://h?group=").contains("`group`"));
    }
}
