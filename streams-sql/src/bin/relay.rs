//! `streams-sql-relay`: moves batches from a SQL outbox table to a destination.
//!
//! ```text
//! streams-sql-relay --database-url postgres://postgres@127.0.0.1:5432/test \
//!     --table streams_egress --destination stdout
//! ```
//!
//! Every flag has an environment variable (`STREAMS_SQL_*`, see `--help`). PostgreSQL
//! URLs get `LISTEN/NOTIFY` wake-ups plus polling; MySQL/MariaDB URLs poll. Stops
//! gracefully on Ctrl-C or SIGTERM, after the pass in flight.

#![allow(clippy::print_stdout)]

use std::fmt;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use streams_core::{async_trait, CancellationToken, Message, Result, Writer};
use streams_sql::RelaySource;

/// Relays batches from a transactional outbox table to a destination.
#[derive(Debug, Parser)]
#[command(name = "streams-sql-relay", version)]
struct Args {
    /// Source database (`postgres://...` or `mysql://...`).
    #[arg(long, env = "STREAMS_SQL_DATABASE_URL")]
    database_url: String,

    /// Outbox table.
    #[arg(long, env = "STREAMS_SQL_TABLE", default_value = streams_sql::DEFAULT_TABLE)]
    table: String,

    /// Where relayed messages go.
    #[arg(long, env = "STREAMS_SQL_DESTINATION", value_enum, default_value_t = Destination::Stdout)]
    destination: Destination,

    /// Milliseconds between polls when nothing wakes the relay.
    #[arg(long, env = "STREAMS_SQL_POLL_INTERVAL_MS", default_value_t = 1000)]
    poll_interval_ms: u64,

    /// Outbox rows (batches) claimed per pass.
    #[arg(long, env = "STREAMS_SQL_BATCH_SIZE", default_value_t = 100)]
    batch_size: usize,

    /// Seconds a claim lasts before another relay may take the rows over.
    #[arg(long, env = "STREAMS_SQL_LEASE_SECS", default_value_t = 60)]
    lease_secs: u64,

    /// Fixed relay id; a restarted relay with the same id resumes its claims at once.
    #[arg(long, env = "STREAMS_SQL_RELAY_ID")]
    relay_id: Option<String>,

    /// Claim disjoint sets alongside other relays (no order across relays).
    #[arg(long, env = "STREAMS_SQL_PARALLEL")]
    parallel: bool,

    /// Create the outbox and quarantine tables if missing.
    #[arg(long, env = "STREAMS_SQL_CREATE_TABLE")]
    create_table: bool,

    /// Do not use PostgreSQL LISTEN/NOTIFY; poll only.
    #[arg(long, env = "STREAMS_SQL_NO_LISTEN")]
    no_listen: bool,

    /// Kafka bootstrap servers, for `--destination kafka`.
    #[cfg(feature = "kafka")]
    #[arg(long, env = "STREAMS_KAFKA_BROKERS", default_value = "localhost:9092")]
    kafka_brokers: String,
}

/// Destinations. Kafka, SQS and SNS plug in here behind the cargo features of their
/// driver crates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Destination {
    /// One JSON line per message on standard output.
    Stdout,
    /// One `tracing` event per message (RUST_LOG=info).
    Log,
    /// Kafka topics named by the message streams (`--kafka-brokers`).
    #[cfg(feature = "kafka")]
    Kafka,
    /// SQS queues named by the message streams (AWS settings from the environment,
    /// `STREAMS_AWS_ENDPOINT` for an emulator).
    #[cfg(feature = "sqs")]
    Sqs,
    /// SNS topics named by the message streams (AWS settings from the environment).
    #[cfg(feature = "sns")]
    Sns,
}

impl Destination {
    async fn writer(self, args: &Args) -> Result<Arc<dyn Writer>> {
        let _ = args;
        Ok(match self {
            Destination::Stdout => Arc::new(StdoutWriter),
            Destination::Log => Arc::new(LogWriter),
            #[cfg(feature = "kafka")]
            Destination::Kafka => Arc::new(streams_kafka::KafkaWriter::new(
                &streams_kafka::KafkaConfig::new(&args.kafka_brokers),
            )?),
            #[cfg(feature = "sqs")]
            Destination::Sqs => Arc::new(streams_sqs::SqsWriter::new(
                streams_sqs::SqsClient::from_env().await,
            )),
            #[cfg(feature = "sns")]
            Destination::Sns => Arc::new(streams_sns::SnsWriterBuilder::from_env().build().await?),
        })
    }
}

/// Prints each message as a JSON line.
#[derive(Debug)]
struct StdoutWriter;

#[async_trait]
impl Writer for StdoutWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        let mut out = std::io::stdout().lock();
        for m in &batch {
            let line = json_line(m);
            writeln!(out, "{line}")
                .map_err(|e| streams_core::Error::driver("stdout", "write", false, e))?;
        }
        out.flush()
            .map_err(|e| streams_core::Error::driver("stdout", "flush", false, e))
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Logs each message.
#[derive(Debug)]
struct LogWriter;

#[async_trait]
impl Writer for LogWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        for m in &batch {
            tracing::info!(message = %json_line(m), "relayed");
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

fn json_line(m: &Message) -> serde_json::Value {
    let mut v = serde_json::json!({
        "id": m.id,
        "stream": m.stream,
        "key": m.key,
        "headers": m.headers,
        "content_type": m.content_type,
        "time": m.time.to_rfc3339(),
    });
    // Text payloads stay readable; anything else is shown as hex, byte for byte.
    match std::str::from_utf8(&m.data) {
        Ok(text) => v["data"] = text.into(),
        Err(_) => v["data_hex"] = Hex(&m.data).to_string().into(),
    }
    v
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

#[tokio::main]
async fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let shutdown = shutdown_signal()?;
    let destination = args.destination.writer(&args).await?;
    let mut source = RelaySource::new(&args.database_url)
        .table(&args.table)
        .lease(Duration::from_secs(args.lease_secs))
        .parallel(args.parallel)
        .create_table(args.create_table)
        .listen(!args.no_listen)
        .fetch_limit(args.batch_size)
        .poll_interval(Duration::from_millis(args.poll_interval_ms));
    if let Some(id) = &args.relay_id {
        source = source.relay_id(id);
    }
    let relay = source.open(destination.clone()).await?;

    let cancel = CancellationToken::new();
    let running = relay.spawn(cancel.clone());
    shutdown.await;
    tracing::info!("shutting down after the pass in flight");
    cancel.cancel();
    running.await??;
    destination.close().await?;
    Ok(())
}

/// Resolves on Ctrl-C or SIGTERM. The handlers are installed when this is called, so
/// call it before anything a signal should stop can start.
fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()>> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        Ok(async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}
