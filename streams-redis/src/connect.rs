//! `redis://` connection URLs.

use std::sync::Arc;

use streams_core::{invalid_url, ConnectUrl, Connection, Result};

use crate::admin::RedisAdmin;
use crate::{RedisClient, RedisConfig, RedisReader, RedisWriter};

/// The parameters a `redis://` URL takes.
const KNOWN: [&str; 7] = [
    "group",
    "connect_timeout",
    "block",
    "batch",
    "claim_idle",
    "concurrency",
    "max_len",
];

/// Connects to Redis from a `redis://[user:pass@]host[:port][/db][?group=G&...]` URL: a
/// [`RedisWriter`], a [`RedisReader`] and stream administration sharing one connection.
///
/// Parameters: `group` (the consumer group of read tasks that name none),
/// `connect_timeout` (default 5 s), `block` (how long a read waits, default 2 s),
/// `batch` (entries per read, default 64), `claim_idle` (when a pending entry is
/// claimed by another member, default 30 s), `concurrency` (handler calls at once per
/// read task, default 1), `max_len` (trim each stream to about this many entries on
/// write; off by default). Without a host, `127.0.0.1:6379`.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_redis::connect("redis://127.0.0.1:6379/0?group=billing").await?;
/// assert_eq!(conn.platform(), "redis");
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a malformed URL, a path that is
/// not a database number, an unknown parameter or a bad value; the errors of
/// [`RedisClient::connect`].
pub async fn connect(url: &str) -> Result<Connection> {
    let (config, group) = parse(url)?;
    let client = RedisClient::connect(config).await?;
    let writer = Arc::new(RedisWriter::new(client.clone()));
    let reader = Arc::new(RedisReader::new(client.clone()));
    Ok(Connection::new("redis", writer, Some(reader))
        .with_default_group(group)
        .with_admin(Arc::new(RedisAdmin(client))))
}

fn parse(url: &str) -> Result<(RedisConfig, Option<String>)> {
    let parsed = ConnectUrl::parse("redis", url)?;
    let db = parsed.path.trim_start_matches('/');
    if !db.is_empty() && db.parse::<u32>().is_err() {
        return Err(invalid_url(format!(
            "the path of a `redis://` URL is a database number (`/0`), not `/{db}`"
        )));
    }
    if parsed.host_list("server")?.len() > 1 {
        return Err(invalid_url("a `redis://` URL names one server"));
    }
    // The `redis` crate reads the URL without our parameters.
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let base = if parsed.hosts.is_empty() {
        format!("redis://127.0.0.1:6379/{db}")
    } else {
        base.to_owned()
    };
    let mut config = RedisConfig::new(base);
    let mut params = parsed.params;
    let group = params.take_nonempty("group")?;
    if let Some(t) = params.take_duration("connect_timeout")? {
        config = config.with_connect_timeout(t);
    }
    if let Some(t) = params.take_duration("block")? {
        config = config.with_block(t);
    }
    if let Some(n) = params.take_positive("batch")? {
        config = config.with_batch(n);
    }
    if let Some(t) = params.take_duration("claim_idle")? {
        config = config.with_claim_idle(t);
    }
    if let Some(n) = params.take_positive("concurrency")? {
        config = config.with_concurrency(n);
    }
    if let Some(n) = params.take_positive("max_len")? {
        config = config.with_max_len(n);
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
    fn parses_server_database_and_parameters() {
        let (c, group) =
            parse("redis://u:p%40ss@h:6380/2?group=g&claim_idle=5s&max_len=1000").unwrap();
        assert_eq!(c.url(), "redis://u:p%40ss@h:6380/2");
        assert_eq!(group.as_deref(), Some("g"));
        assert_eq!(c.claim_idle, Duration::from_secs(5));
        assert_eq!(c.max_len, Some(1000));
        assert!(!format!("{c:?}").contains("p%40ss"));
        let (c, _) = parse("redis://").unwrap();
        assert_eq!(c.url(), "redis://127.0.0.1:6379/");
    }

    #[test]
    fn refuses_what_it_does_not_know() {
        assert!(err("redis://h/x").contains("database number"));
        assert!(err("redis://h?partitions=3").contains("unknown parameter `partitions`"));
        assert!(err("redis://h?claim_idle=later").contains("`claim_idle`"));
        assert!(err("redis://h?batch=0").contains("positive integer"));
        assert!(err("redis://a,b").contains("one server"));
    }
}
