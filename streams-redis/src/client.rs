//! Settings and the shared connections.

use std::fmt;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use streams_core::{Error, Result};

use crate::error::DRIVER;

/// The server a [`RedisConfig`] names when it names none.
pub const DEFAULT_URL: &str = "redis://127.0.0.1:6379";

/// Settings of a Redis connection, its writers and readers.
///
/// ```
/// use std::time::Duration;
/// use streams_redis::RedisConfig;
///
/// let config = RedisConfig::new("redis://127.0.0.1:6379/0")
///     .with_claim_idle(Duration::from_secs(60))
///     .with_max_len(1_000_000)
///     .with_concurrency(8);
/// assert_eq!(config.url(), "redis://127.0.0.1:6379/0");
/// ```
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) block: Duration,
    pub(crate) batch: usize,
    pub(crate) claim_idle: Duration,
    pub(crate) concurrency: usize,
    pub(crate) max_len: Option<usize>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL may hold a password.
        f.debug_struct("RedisConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("block", &self.block)
            .field("batch", &self.batch)
            .field("claim_idle", &self.claim_idle)
            .field("concurrency", &self.concurrency)
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl RedisConfig {
    /// Settings for the server of a `redis://[user:pass@]host:port[/db]` URL (as the
    /// `redis` crate reads it), with a 5 s first contact, 10 s per command, reads that
    /// block 2 s at most and take 64 entries at a time, messages left pending 30 s
    /// claimed by another member, one handler at a time per reader, and no trimming.
    pub fn new(url: impl Into<String>) -> Self {
        RedisConfig {
            url: url.into(),
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(10),
            block: Duration::from_secs(2),
            batch: 64,
            claim_idle: Duration::from_secs(30),
            concurrency: 1,
            max_len: None,
        }
    }

    /// The server URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// How long the first contact may take before [`RedisClient::connect`] fails.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one command may take before it fails with a retryable time-out (a
    /// blocking read gets its block time on top).
    pub fn with_response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// How long a read waits for new entries before it asks again.
    pub fn with_block(mut self, block: Duration) -> Self {
        self.block = block.max(Duration::from_millis(1));
        self
    }

    /// Entries a reader takes per read (and pulls ahead of its handlers).
    pub fn with_batch(mut self, entries: usize) -> Self {
        self.batch = entries.max(1);
        self
    }

    /// How long an entry stays pending (delivered, not acknowledged) before a member of
    /// the group claims it: the redelivery time after a failed handler or a member that
    /// died. A handler running longer keeps its entry by claiming it again meanwhile.
    pub fn with_claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle.max(Duration::from_millis(100));
        self
    }

    /// Default bound on concurrent handler calls per read task, when the task sets
    /// none; entries with the same key are handled one at a time, in order.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Trims each stream to about `entries` on every write (`XADD ... MAXLEN ~`).
    /// Trimmed entries are gone for every group, also those not yet read: off unless set.
    pub fn with_max_len(mut self, entries: usize) -> Self {
        self.max_len = Some(entries);
        self
    }
}

/// A connection to Redis shared by writers, the acknowledgements of readers and stream
/// administration; each reader opens one more for its blocking reads. Cheap to clone.
#[derive(Clone)]
pub struct RedisClient {
    pub(crate) client: redis::Client,
    pub(crate) conn: ConnectionManager,
    pub(crate) config: RedisConfig,
}

impl fmt::Debug for RedisClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RedisClient {
    /// Connects to the server of `config`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a URL the `redis` crate cannot read; a retryable driver
    /// error naming the address when the server does not answer within the connect
    /// time-out; a not retryable one when it refuses the credentials.
    pub async fn connect(config: RedisConfig) -> Result<Self> {
        let client = redis::Client::open(config.url.as_str())
            .map_err(|e| Error::invalid("Redis URL", e.to_string()))?;
        let conn = manager(&client, &config, Duration::ZERO).await?;
        Ok(RedisClient {
            client,
            conn,
            config,
        })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    /// A connection that reconnects by itself, for commands of your own.
    pub fn connection(&self) -> ConnectionManager {
        self.conn.clone()
    }

    /// A connection of its own, for blocking reads, whose responses may take `extra`
    /// longer than the response time-out.
    pub(crate) async fn dedicated(&self, extra: Duration) -> Result<ConnectionManager> {
        manager(&self.client, &self.config, extra).await
    }
}

fn address(client: &redis::Client) -> String {
    match &client.get_connection_info().addr() {
        redis::ConnectionAddr::Tcp(host, port)
        | redis::ConnectionAddr::TcpTls { host, port, .. } => {
            format!("{host}:{port}")
        }
        other => other.to_string(),
    }
}

async fn manager(
    client: &redis::Client,
    config: &RedisConfig,
    extra: Duration,
) -> Result<ConnectionManager> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout + extra))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    let connecting = client.get_connection_manager_with_config(settings);
    let addr = address(client);
    match tokio::time::timeout(config.connect_timeout * 4, connecting).await {
        Ok(Ok(conn)) => Ok(conn),
        Ok(Err(e)) => {
            let refused = matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"));
            Err(Error::driver(
                DRIVER,
                "connect",
                !refused,
                format!("{addr}: {}", e.to_string().replace(['\r', '\n'], " ")),
            ))
        }
        Err(_) => Err(Error::driver(
            DRIVER,
            "connect",
            true,
            format!(
                "no server answered at {addr} within {:?}",
                config.connect_timeout * 4
            ),
        )),
    }
}
