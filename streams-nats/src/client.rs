//! Settings and the shared connection.

use std::fmt;
use std::time::Duration;

use async_nats::jetstream;
use async_nats::ConnectOptions;
use streams_core::{Error, Result};

use crate::error::DRIVER;

/// The server a [`NatsConfig`] names when it names none.
pub const DEFAULT_SERVER: &str = "127.0.0.1:4222";

/// Settings of a NATS connection, its writers and readers.
///
/// ```
/// use std::time::Duration;
/// use streams_nats::NatsConfig;
///
/// let config = NatsConfig::new("127.0.0.1:4222")
///     .with_connect_timeout(Duration::from_secs(5))
///     .with_ack_wait(Duration::from_secs(60))
///     .with_concurrency(8);
/// assert_eq!(config.servers(), ["127.0.0.1:4222"]);
/// ```
#[derive(Clone)]
pub struct NatsConfig {
    servers: Vec<String>,
    credentials: Option<(String, String)>,
    token: Option<String>,
    pub(crate) connect_timeout: Duration,
    pub(crate) request_timeout: Duration,
    pub(crate) ack_wait: Duration,
    pub(crate) concurrency: usize,
    pub(crate) prefetch: usize,
    pub(crate) max_in_flight: usize,
    pub(crate) retry_initial: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) stream_max_age: Duration,
}

impl fmt::Debug for NatsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // No password or token.
        f.debug_struct("NatsConfig")
            .field("servers", &self.servers)
            .field("user", &self.credentials.as_ref().map(|(u, _)| u))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .field("ack_wait", &self.ack_wait)
            .field("concurrency", &self.concurrency)
            .field("prefetch", &self.prefetch)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl NatsConfig {
    /// Settings for the servers in `servers` (`host:port`, comma separated), with a
    /// 10 s first contact, JetStream requests bounded by 10 s, a 30 s ack wait, one
    /// handler at a time per reader pulling 64 messages ahead, 256 publishes awaiting
    /// their acknowledgement per writer, failed messages redelivered after 100 ms doubling up to 10 s, and streams
    /// created without an age limit.
    pub fn new(servers: &str) -> Self {
        let servers: Vec<String> = servers
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        NatsConfig {
            servers: if servers.is_empty() {
                vec![DEFAULT_SERVER.to_owned()]
            } else {
                servers
            },
            credentials: None,
            token: None,
            connect_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            ack_wait: Duration::from_secs(30),
            concurrency: 1,
            prefetch: 64,
            max_in_flight: 256,
            retry_initial: Duration::from_millis(100),
            retry_max: Duration::from_secs(10),
            stream_max_age: Duration::ZERO,
        }
    }

    /// The servers, as given.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// Authenticates with a user and password.
    pub fn with_user_and_password(
        mut self,
        user: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        self.credentials = Some((user.into(), password.into()));
        self
    }

    /// Authenticates with a token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// How long the first contact may take before [`NatsClient::connect`] fails.
    /// Later connection losses are reconnected in the background, for ever.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a JetStream request (a publish acknowledgement, creating a consumer) may
    /// take before it fails with a retryable time-out.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long the server waits for a message's acknowledgement before delivering it
    /// again (applies to consumers this driver creates). A handler running longer keeps
    /// its message by telling the server it is still working on it.
    pub fn with_ack_wait(mut self, ack_wait: Duration) -> Self {
        self.ack_wait = ack_wait.max(Duration::from_secs(1));
        self
    }

    /// Default bound on concurrent handler calls per read task, when the task sets
    /// none; messages with the same key are handled one at a time, in order.
    pub fn with_concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// Messages a reader pulls ahead of its handlers (at least the task's concurrency).
    /// More is faster; but a pulled message's ack wait runs from its delivery, so keep
    /// `prefetch × handler time / concurrency` under the ack wait, or slow handlers see
    /// messages delivered twice.
    pub fn with_prefetch(mut self, messages: usize) -> Self {
        self.prefetch = messages.max(1);
        self
    }

    /// Publishes a writer keeps awaiting their acknowledgement at once.
    pub fn with_max_in_flight(mut self, publishes: usize) -> Self {
        self.max_in_flight = publishes.max(1);
        self
    }

    /// Delay before a failed message is delivered again: `initial` for the first
    /// failure, doubling with each delivery up to `max`.
    pub fn with_retry_backoff(mut self, initial: Duration, max: Duration) -> Self {
        self.retry_initial = initial;
        self.retry_max = max.max(initial);
        self
    }

    /// The age after which streams created by this driver drop messages (zero, the
    /// default, keeps them until the stream is deleted).
    pub fn with_stream_max_age(mut self, age: Duration) -> Self {
        self.stream_max_age = age;
        self
    }

    pub(crate) fn redelivery_delay(&self, delivered: i64) -> Duration {
        let doublings = u32::try_from(delivered.saturating_sub(1).clamp(0, 20)).unwrap_or(20);
        self.retry_initial
            .saturating_mul(2u32.saturating_pow(doublings))
            .min(self.retry_max)
    }
}

/// A connection to NATS with its JetStream context, shared by writers, readers and the
/// stream administration of one configuration. Cheap to clone.
#[derive(Clone)]
pub struct NatsClient {
    pub(crate) client: async_nats::Client,
    pub(crate) jetstream: jetstream::Context,
    pub(crate) config: NatsConfig,
}

impl fmt::Debug for NatsClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NatsClient")
            .field("config", &self.config)
            .field("state", &self.client.connection_state())
            .finish()
    }
}

impl NatsClient {
    /// Connects to the first server of `config` that answers and checks that JetStream
    /// is enabled there.
    ///
    /// # Errors
    ///
    /// A retryable driver error naming the servers when none answers within the connect
    /// time-out; a not retryable one for refused credentials or a server without
    /// JetStream.
    pub async fn connect(config: NatsConfig) -> Result<Self> {
        let mut options = ConnectOptions::new()
            .connection_timeout(config.connect_timeout)
            .request_timeout(Some(config.request_timeout))
            .name("streams")
            // The message id header carries ids; subjects are ours, already valid.
            .skip_subject_validation(true);
        if let Some((user, password)) = &config.credentials {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &config.token {
            options = options.token(token.clone());
        }
        let servers = config.servers.join(",");
        let connect = options.connect(config.servers.clone());
        let client = match tokio::time::timeout(config.connect_timeout, connect).await {
            Ok(Ok(client)) => client,
            Ok(Err(e)) => {
                let retryable = !matches!(
                    e.kind(),
                    async_nats::ConnectErrorKind::Authentication
                        | async_nats::ConnectErrorKind::AuthorizationViolation
                        | async_nats::ConnectErrorKind::ServerParse
                        | async_nats::ConnectErrorKind::Tls
                );
                return Err(Error::driver(
                    DRIVER,
                    "connect",
                    retryable,
                    format!("{servers}: {e}"),
                ));
            }
            Err(_) => {
                return Err(Error::driver(
                    DRIVER,
                    "connect",
                    true,
                    format!(
                        "no server answered at {servers} within {:?}",
                        config.connect_timeout
                    ),
                ))
            }
        };
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .build(client.clone());
        check_jetstream(&client, &servers, config.request_timeout).await?;
        Ok(NatsClient {
            client,
            jetstream,
            config,
        })
    }

    /// The settings this client was made with.
    pub fn config(&self) -> &NatsConfig {
        &self.config
    }

    /// The underlying `async-nats` client.
    pub fn nats(&self) -> &async_nats::Client {
        &self.client
    }

    /// The JetStream context.
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }
}

/// Asks the server for its JetStream account information: no answer means JetStream is
/// not enabled there.
async fn check_jetstream(
    client: &async_nats::Client,
    servers: &str,
    timeout: Duration,
) -> Result<()> {
    let asked = tokio::time::timeout(timeout, client.request("$JS.API.INFO", "".into())).await;
    let answer = match asked {
        Err(_) => {
            return Err(Error::driver(
                DRIVER,
                "connect",
                true,
                format!("{servers}: no JetStream answer within {timeout:?}"),
            ))
        }
        Ok(Err(e)) if matches!(e.kind(), async_nats::RequestErrorKind::NoResponders) => {
            return Err(Error::driver(
                DRIVER,
                "connect",
                false,
                format!("{servers}: JetStream is not enabled (start the server with `-js`)"),
            ))
        }
        Ok(Err(e)) => {
            return Err(Error::driver(
                DRIVER,
                "connect",
                true,
                format!("{servers}: {e}"),
            ))
        }
        Ok(Ok(answer)) => answer,
    };
    let info: serde_json::Value = serde_json::from_slice(&answer.payload).unwrap_or_default();
    match info.get("error") {
        None => Ok(()),
        Some(error) => Err(Error::driver(
            DRIVER,
            "connect",
            false,
            format!(
                "{servers}: JetStream refused this account: {}",
                error
                    .get("description")
                    .and_then(|d| d.as_str())
                    .unwrap_or("no description")
            ),
        )),
    }
}
