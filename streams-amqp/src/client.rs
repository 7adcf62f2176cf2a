//! Settings, the shared connection and its errors.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lapin::{Channel, Connection, ConnectionProperties};
use streams_core::{Error, Result};
use tokio::sync::Mutex;

/// The driver name in errors, logs and `messaging.system`.
pub(crate) const DRIVER: &str = "amqp";

/// The server a [`AmqpConfig`] names when it names none.
pub const DEFAULT_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The type of the queues consumer groups get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueType {
    /// Replicated, durable, with a delivery count (RabbitMQ 3.8+); the default.
    Quorum,
    /// Classic durable queues.
    Classic,
}

/// Settings of a RabbitMQ connection, its writers and readers.
///
/// ```
/// use std::time::Duration;
/// use streams_amqp::{AmqpConfig, QueueType};
///
/// let config = AmqpConfig::new("amqp://guest:guest@127.0.0.1:5672/%2f")
///     .with_queue_type(QueueType::Classic)
///     .with_prefetch(128)
///     .with_concurrency(8);
/// assert_eq!(config.prefetch(), 128);
/// ```
#[derive(Clone)]
pub struct AmqpConfig {
    url: String,
    pub(crate) connect_timeout: Duration,
    pub(crate) operation_timeout: Duration,
    pub(crate) queue_type: QueueType,
    pub(crate) prefetch: u16,
    pub(crate) concurrency: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
}

impl fmt::Debug for AmqpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The URL holds a password.
        f.debug_struct("AmqpConfig")
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("queue_type", &self.queue_type)
            .field("prefetch", &self.prefetch)
            .field("concurrency", &self.concurrency)
            .finish_non_exhaustive()
    }
}

impl AmqpConfig {
    /// Settings for the server of an `amqp://user:pass@host:port/vhost` URL, with a 10 s
    /// first contact, 10 s for each broker call (a publish confirm, a declaration),
    /// quorum queues for groups, 64 unacknowledged deliveries per reader, one handler at
    /// a time, and a failed message given back after 100 ms doubling up to 10 s.
    pub fn new(url: impl Into<String>) -> Self {
        AmqpConfig {
            url: url.into(),
            connect_timeout: Duration::from_secs(10),
            operation_timeout: Duration::from_secs(10),
            queue_type: QueueType::Quorum,
            prefetch: 64,
            concurrency: 1,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
        }
    }

    /// How long the first contact (and each reconnection) may take.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a broker call may take before it fails with a retryable time-out.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = timeout;
        self
    }

    /// The type of the queues consumer groups get (an existing queue keeps its type).
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// Deliveries a reader holds unacknowledged at once (`basic.qos`).
    pub fn with_prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// The prefetch.
    pub fn prefetch(&self) -> u16 {
        self.prefetch
    }

    /// Default bound on concurrent handler calls per read task, when the task sets
    /// none; messages with the same key are handled one at a time, in order.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How long a failed message is held before it goes back to its queue: `initial`
    /// the first time, doubling per delivery up to `max`.
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }

    pub(crate) fn redelivery_delay(&self, delivered: u64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).min(20)).unwrap_or(20);
        self.retry_initial
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.retry_max)
    }

    /// The address for errors: host and port, never the credentials.
    pub(crate) fn address(&self) -> String {
        let rest = self
            .url
            .split_once("://")
            .map_or(self.url.as_str(), |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split(['/', '?']).next().unwrap_or(rest).to_owned()
    }
}

/// A connection to RabbitMQ shared by writers, readers and stream administration, made
/// again when it is lost. Cheap to clone.
#[derive(Clone)]
pub struct AmqpClient {
    pub(crate) config: AmqpConfig,
    conn: Arc<Mutex<Option<Connection>>>,
}

impl fmt::Debug for AmqpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpClient")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl AmqpClient {
    /// Connects to the server of `config`.
    ///
    /// # Errors
    ///
    /// A retryable driver error naming the address when the server does not answer
    /// within the connect time-out; a not retryable one for refused credentials or an
    /// unknown virtual host.
    pub async fn connect(config: AmqpConfig) -> Result<Self> {
        let client = AmqpClient {
            config,
            conn: Arc::new(Mutex::new(None)),
        };
        client.channel().await?;
        Ok(client)
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &AmqpConfig {
        &self.config
    }

    /// A new channel, on the current connection or on a new one when it was lost.
    pub(crate) async fn channel(&self) -> Result<Channel> {
        let mut held = self.conn.lock().await;
        if let Some(conn) = held.as_ref() {
            if conn.status().connected() {
                match self.timed("open channel", "", conn.create_channel()).await {
                    Ok(channel) => return Ok(channel),
                    Err(e) => tracing::debug!(error = %e, "amqp channel failed; reconnecting"),
                }
            }
        }
        *held = None;
        let properties = ConnectionProperties::default().with_connection_name("streams".into());
        let connecting = Connection::connect(&self.config.url, properties);
        let conn = match tokio::time::timeout(self.config.connect_timeout, connecting).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => {
                let line = one_line(&e);
                let refused = ["ACCESS_REFUSED", "NOT_ALLOWED", "authentication", "vhost"]
                    .iter()
                    .any(|w| line.contains(w));
                return Err(Error::driver(
                    DRIVER,
                    "connect",
                    !refused,
                    format!("{}: {line}", self.config.address()),
                ));
            }
            Err(_) => {
                return Err(Error::driver(
                    DRIVER,
                    "connect",
                    true,
                    format!(
                        "no server answered at {} within {:?}",
                        self.config.address(),
                        self.config.connect_timeout
                    ),
                ))
            }
        };
        let channel = self
            .timed("open channel", "", conn.create_channel())
            .await?;
        *held = Some(conn);
        Ok(channel)
    }

    /// Runs a broker call within the operation time-out, naming `stream` in its error.
    pub(crate) async fn timed<T>(
        &self,
        operation: &'static str,
        stream: &str,
        call: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        self.timed_until(self.deadline(), operation, stream, call)
            .await
    }

    /// When an operation started now must be done: now plus the operation time-out.
    pub(crate) fn deadline(&self) -> tokio::time::Instant {
        tokio::time::Instant::now() + self.config.operation_timeout
    }

    /// Runs a broker call until `deadline` (one operation time-out shared by the steps of
    /// one operation, such as a batch's publishes and confirms), naming `stream` in its
    /// error.
    pub(crate) async fn timed_until<T>(
        &self,
        deadline: tokio::time::Instant,
        operation: &'static str,
        stream: &str,
        call: impl std::future::Future<Output = lapin::Result<T>>,
    ) -> Result<T> {
        match tokio::time::timeout_at(deadline, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(amqp_error(operation, stream, &e)),
            Err(_) => Err(Error::driver(
                DRIVER,
                operation,
                true,
                format!(
                    "{}no answer from {} within {:?}",
                    if stream.is_empty() {
                        String::new()
                    } else {
                        format!("stream `{stream}`: ")
                    },
                    self.config.address(),
                    self.config.operation_timeout
                ),
            )),
        }
    }
}

fn one_line(e: &impl fmt::Display) -> String {
    e.to_string().replace(['\r', '\n'], " ")
}

/// A driver error naming the operation and the stream; what the broker refused for
/// good (a missing exchange, denied access, a declaration that does not match) is not
/// retryable, connection trouble is.
pub(crate) fn amqp_error(operation: &'static str, stream: &str, e: &lapin::Error) -> Error {
    let line = one_line(e);
    let refused = [
        "NOT_FOUND",
        "ACCESS_REFUSED",
        "PRECONDITION_FAILED",
        "NOT_ALLOWED",
        "RESOURCE_LOCKED",
    ]
    .iter()
    .any(|w| line.contains(w));
    let what = if stream.is_empty() {
        line
    } else if line.contains("NOT_FOUND") {
        format!("stream `{stream}`: {line} (create it with `streams create`)")
    } else {
        format!("stream `{stream}`: {line}")
    };
    Error::driver(DRIVER, operation, !refused, what)
}
