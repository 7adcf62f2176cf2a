use std::fmt;
use std::sync::Arc;

use streams_core::{
    async_trait, Bus, CancellationToken, Error, Handler, ObservedReader, ObservedWriter, ReadTask,
    Reader, Result, Writer,
};

use crate::target::{ensure_enabled, scheme_of, Target};

/// The environment variable [`connect_from_env`] reads.
pub const URL_ENV: &str = "STREAMS_URL";

/// The URL [`connect_from_env`] uses when [`URL_ENV`] is unset: the in-process bus.
pub const DEFAULT_URL: &str = "memory://";

/// A writer and, where the platform has one, a reader, built by [`connect`].
///
/// Clones share the writer and reader.
#[derive(Debug, Clone)]
pub struct Connection {
    platform: &'static str,
    writer: Arc<dyn Writer>,
    reader: Option<Arc<dyn Reader>>,
    admin: Admin,
}

/// What a connection can provision.
#[derive(Debug, Clone)]
#[cfg_attr(not(any(feature = "chanbuf", feature = "sql")), allow(dead_code))]
enum Admin {
    /// Streams need no creating (the in-process bus, SQL outboxes).
    Nothing,
    /// The platform has streams but this build cannot create them (`sns`, or a
    /// connection made with [`Connection::new`]).
    Unsupported,
    #[cfg(feature = "kafka")]
    Kafka(streams_kafka::KafkaConfig),
    #[cfg(feature = "sqs")]
    Sqs(streams_sqs::SqsClient),
}

impl Connection {
    /// A connection from parts, for platforms [`connect`] does not know and for tests.
    pub fn new(
        platform: &'static str,
        writer: Arc<dyn Writer>,
        reader: Option<Arc<dyn Reader>>,
    ) -> Self {
        Connection {
            platform,
            writer,
            reader,
            admin: Admin::Unsupported,
        }
    }

    #[cfg_attr(
        not(any(
            feature = "chanbuf",
            feature = "kafka",
            feature = "sqs",
            feature = "sql"
        )),
        allow(dead_code)
    )]
    fn with_admin(mut self, admin: Admin) -> Self {
        self.admin = admin;
        self
    }

    /// Creates `stream` where the platform needs streams created first: a Kafka topic
    /// with `partitions` partitions (replication factor 1 is the broker default, so
    /// use the platform's tools for production topics), an SQS queue (FIFO when the
    /// name ends in `.fifo`). A stream that exists already is left as it is. On the
    /// in-process bus and SQL outboxes there is nothing to create.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] where this connection cannot create streams (`sns://`, or a
    /// connection built with [`Connection::new`]); a driver error from the platform.
    pub async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()> {
        let _ = (stream, partitions);
        match &self.admin {
            Admin::Nothing => Ok(()),
            Admin::Unsupported => Err(self.cannot("create")),
            #[cfg(feature = "kafka")]
            Admin::Kafka(config) => {
                let partitions = i32::try_from(partitions.max(1)).unwrap_or(i32::MAX);
                streams_kafka::create_topic(config, stream, partitions, 1).await
            }
            #[cfg(feature = "sqs")]
            Admin::Sqs(client) => client.create_queue(stream).await.map(drop),
        }
    }

    /// Deletes `stream` where [`create_stream`](Self::create_stream) would create it; a
    /// missing Kafka topic is not an error.
    ///
    /// # Errors
    ///
    /// As [`create_stream`](Self::create_stream).
    pub async fn delete_stream(&self, stream: &str) -> Result<()> {
        let _ = stream;
        match &self.admin {
            Admin::Nothing => Ok(()),
            Admin::Unsupported => Err(self.cannot("delete")),
            #[cfg(feature = "kafka")]
            Admin::Kafka(config) => streams_kafka::delete_topic(config, stream).await,
            #[cfg(feature = "sqs")]
            Admin::Sqs(client) => client.delete_queue(stream).await,
        }
    }

    /// Wraps the writer in [`ObservedWriter`] and the reader in [`ObservedReader`], so
    /// every connection from [`connect`] has publish and handle spans and metrics.
    fn observed(mut self) -> Self {
        // OpenTelemetry's `messaging.system` values where it has one.
        let system = match self.platform {
            "memory" => "in_process",
            "sqs" => "aws_sqs",
            "sns" => "aws_sns",
            "postgres" | "mysql" => "outbox",
            other => other,
        };
        self.writer = Arc::new(ObservedWriter::new(self.writer).with_system(system));
        self.reader = self
            .reader
            .map(|r| Arc::new(ObservedReader::new(r).with_system(system)) as Arc<dyn Reader>);
        self
    }

    fn cannot(&self, what: &str) -> Error {
        Error::invalid(
            "stream",
            format!(
                "this `{}://` connection cannot {what} streams; use the platform's own tools",
                self.platform
            ),
        )
    }

    /// The platform: `memory`, `kafka`, `sqs`, `sns`, `postgres` or `mysql`.
    pub fn platform(&self) -> &'static str {
        self.platform
    }

    /// The writer.
    pub fn writer(&self) -> Arc<dyn Writer> {
        self.writer.clone()
    }

    /// The reader.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] on write-only platforms (`sns`, `postgres`, `mysql`): read
    /// from where their messages go instead, an SQS queue subscribed to the topic or
    /// the destination of the outbox relay.
    pub fn reader(&self) -> Result<Arc<dyn Reader>> {
        self.reader.clone().ok_or_else(|| {
            Error::invalid(
                "reader",
                format!(
                    "`{}://` connections are write-only; read from where the messages are \
                     delivered (an SQS queue subscribed to an SNS topic, the destination of \
                     an outbox relay)",
                    self.platform
                ),
            )
        })
    }

    /// Whether the platform has a reader.
    pub fn has_reader(&self) -> bool {
        self.reader.is_some()
    }

    /// A typed-event [`Bus`] over this connection's writer and reader.
    ///
    /// # Errors
    ///
    /// As [`reader`](Self::reader), on write-only platforms.
    pub fn bus(&self) -> Result<Bus> {
        Ok(Bus::new(self.writer(), self.reader()?))
    }

    /// The writer and the reader, if any.
    pub fn into_parts(self) -> (Arc<dyn Writer>, Option<Arc<dyn Reader>>) {
        (self.writer, self.reader)
    }
}

/// Builds the writer and reader a URL names, so that the platform is configuration
/// rather than code. See the [crate documentation](crate#connection-urls) for the
/// grammar.
///
/// ```
/// # #[cfg(not(feature = "chanbuf"))] fn main() {}
/// # #[cfg(feature = "chanbuf")]
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> streams::Result<()> {
/// let conn = streams::connect("memory://?capacity=256").await?;
/// assert_eq!(conn.platform(), "memory");
/// conn.writer().write(vec![streams::Message::new("orders", "hello")]).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`] for a malformed URL, an unknown scheme or one whose cargo feature
/// this build does not enable (the message lists the supported and the enabled
/// schemes); a driver error when the platform client cannot be created (for SQL, when
/// the database cannot be reached).
pub async fn connect(url: &str) -> Result<Connection> {
    // The feature is checked before the details, so a disabled platform is reported as
    // such rather than as a detail of its URL.
    ensure_enabled(scheme_of(url)?)?;
    Ok(open(Target::parse(url)?).await?.observed())
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

async fn open(target: Target) -> Result<Connection> {
    match target {
        #[cfg(feature = "chanbuf")]
        Target::Memory {
            capacity,
            concurrency,
        } => {
            let mut builder = streams_chanbuf::ChanBus::builder();
            if let Some(capacity) = capacity {
                builder = builder.capacity(capacity);
            }
            if let Some(concurrency) = concurrency {
                builder = builder.concurrency(concurrency);
            }
            let bus = Arc::new(builder.build());
            Ok(Connection::new("memory", bus.clone(), Some(bus)).with_admin(Admin::Nothing))
        }
        #[cfg(feature = "kafka")]
        Target::Kafka {
            brokers,
            group,
            settings,
        } => {
            let config = settings
                .into_iter()
                .fold(streams_kafka::KafkaConfig::new(brokers), |c, (k, v)| {
                    c.set(k, v)
                });
            let writer = Arc::new(streams_kafka::KafkaWriter::new(&config)?);
            let reader = streams_kafka::KafkaReader::new(config.clone());
            let reader: Arc<dyn Reader> = match group {
                Some(group) => Arc::new(DefaultGroupReader::new(reader, group)),
                None => Arc::new(reader),
            };
            Ok(Connection::new("kafka", writer, Some(reader)).with_admin(Admin::Kafka(config)))
        }
        #[cfg(feature = "sqs")]
        Target::Sqs { aws, wait_secs } => {
            let mut builder = streams_sqs::SqsClient::builder();
            if let Some(endpoint) = aws.endpoint {
                builder = builder.endpoint(endpoint);
            }
            if let Some(region) = aws.region {
                builder = builder.region(region);
            }
            if let Some((id, secret)) = aws.credentials {
                builder = builder.static_credentials(id, secret);
            }
            let client = builder.build().await;
            Ok(Connection::new(
                "sqs",
                Arc::new(streams_sqs::SqsWriter::new(client.clone())),
                Some(Arc::new(match wait_secs {
                    Some(secs) => streams_sqs::SqsReader::builder(client.clone())
                        .wait_time(std::time::Duration::from_secs(secs))
                        .build(),
                    None => streams_sqs::SqsReader::new(client.clone()),
                })),
            )
            .with_admin(Admin::Sqs(client)))
        }
        #[cfg(feature = "sns")]
        Target::Sns { aws, account_id } => {
            let mut builder = streams_sns::SnsWriter::builder();
            if let Some(endpoint) = aws.endpoint {
                builder = builder.endpoint(endpoint);
            }
            if let Some(region) = aws.region {
                builder = builder.region(region);
            }
            if let Some((id, secret)) = aws.credentials {
                builder = builder.static_credentials(id, secret);
            }
            let account_id = account_id.or_else(|| {
                std::env::var("AWS_ACCOUNT_ID")
                    .ok()
                    .filter(|a| !a.is_empty())
            });
            if let Some(account_id) = account_id {
                builder = builder.account_id(account_id);
            }
            Ok(Connection::new(
                "sns",
                Arc::new(builder.build().await?),
                None,
            ))
        }
        #[cfg(feature = "sql")]
        Target::Postgres(sql) => {
            use streams_sql::sqlx::PgPool;
            let pool = PgPool::connect(&sql.url)
                .await
                .map_err(|e| Error::driver("postgres", "connect", true, e))?;
            let outbox = streams_sql::PgOutbox::new(&sql.table)?;
            if sql.create_table {
                outbox.migrate(&pool).await?;
            }
            Ok(Connection::new(
                "postgres",
                Arc::new(streams_sql::PgOutboxWriter::new(pool, outbox)),
                None,
            )
            .with_admin(Admin::Nothing))
        }
        #[cfg(feature = "sql")]
        Target::MySql(sql) => {
            use streams_sql::sqlx::MySqlPool;
            let pool = MySqlPool::connect(&sql.url)
                .await
                .map_err(|e| Error::driver("mysql", "connect", true, e))?;
            let outbox = streams_sql::MySqlOutbox::new(&sql.table)?;
            if sql.create_table {
                outbox.migrate(&pool).await?;
            }
            Ok(Connection::new(
                "mysql",
                Arc::new(streams_sql::MySqlOutboxWriter::new(pool, outbox)),
                None,
            )
            .with_admin(Admin::Nothing))
        }
        // Platforms whose feature is off; `connect` reported them already.
        #[allow(unreachable_patterns)]
        _ => Err(Error::invalid(
            "streams URL",
            "this platform is not enabled in this build",
        )),
    }
}

/// A [`Reader`] that gives read tasks without a consumer group a default one.
///
/// `connect` wraps the Kafka reader in it when the URL has `group=...`, so handlers
/// subscribe with `ReadTask::new("orders")` and the deployment picks the group.
///
/// ```
/// use streams::{DefaultGroupReader, ReadTask};
/// # #[derive(Debug)] struct KafkaReader;
///
/// let reader = DefaultGroupReader::new(KafkaReader, "billing");
/// assert_eq!(reader.group(), "billing");
/// assert_eq!(reader.apply(ReadTask::new("orders")).group.as_deref(), Some("billing"));
/// assert_eq!(
///     reader.apply(ReadTask::new("orders").with_group("audit")).group.as_deref(),
///     Some("audit"),
/// );
/// ```
#[derive(Clone)]
pub struct DefaultGroupReader<R> {
    inner: R,
    group: String,
}

impl<R> DefaultGroupReader<R> {
    /// Wraps `inner`, filling in `group` where a task has none.
    pub fn new(inner: R, group: impl Into<String>) -> Self {
        DefaultGroupReader {
            inner,
            group: group.into(),
        }
    }

    /// The default group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The task as the inner reader receives it.
    pub fn apply(&self, mut task: ReadTask) -> ReadTask {
        if task.group.is_none() {
            task.group = Some(self.group.clone());
        }
        task
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: fmt::Debug> fmt::Debug for DefaultGroupReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultGroupReader")
            .field("group", &self.group)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl<R: Reader> Reader for DefaultGroupReader<R> {
    async fn read(
        &self,
        task: ReadTask,
        handler: Handler,
        cancel: CancellationToken,
    ) -> Result<()> {
        self.inner.read(self.apply(task), handler, cancel).await
    }
}
