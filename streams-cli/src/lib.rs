//! The `streams` command-line tool, as a library: the argument grammar ([`Cli`]) and
//! each command as an async function over a [`Connection`](streams::Connection), so programs and tests can
//! run them in-process (on the in-process bus, for instance).
//!
//! ```text
//! streams --url kafka://localhost:9092 publish orders '{"id":1}' -t json -k customer-7
//! streams --url kafka://localhost:9092 consume orders --group audit --count 10
//! streams --url sqs://localhost:4566?region=us-east-1 dlq redrive orders --dry-run
//! streams --url kafka://localhost:9092 relay --from postgres://postgres@localhost/test
//! streams --url memory:// bench --count 100000 --size 256
//! streams --url kafka://broker:9092 asyncapi payments.yaml --format json
//! streams schema check payments-v1.yaml payments-v2.yaml
//! ```
//!
//! The URL comes from `--url` or `STREAMS_URL` (default `memory://`); its grammar is
//! the one of [`streams::connect`].

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

#[allow(unsafe_code)] // `GlobalAlloc` is an unsafe trait; see the module.
pub mod alloc;
pub mod bench;
pub mod consume;
pub mod contract;
pub mod dlq;
pub mod output;
pub mod publish;
#[cfg(feature = "sql")]
pub mod relay;
mod run;

pub use bench::{bench, BenchArgs, BenchCase, BenchReport};
pub use consume::{consume, ConsumeArgs};
pub use contract::{asyncapi, schema_check, AsyncapiArgs, DocFormat};
pub use dlq::{redrive, RedriveArgs, RedriveReport};
pub use output::{JsonMessage, Output};
pub use publish::{publish, InputFormat, PublishArgs};

/// Publish, consume, relay, benchmark and redrive dead letters on any platform.
#[derive(Debug, Parser)]
#[command(name = "streams", version, about, long_about = None)]
pub struct Cli {
    /// Platform URL: memory://, kafka://host:port?group=G, nats://host:port?group=G,
    /// redis://host:port?group=G, amqp://user:pass@host:port/vhost?group=G,
    /// sqs://host:port?region=R, sns://..., postgres://..., mysql://...
    #[arg(
        short,
        long,
        global = true,
        env = "STREAMS_URL",
        default_value = "memory://",
        hide_env_values = true
    )]
    pub url: String,

    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish messages from arguments, a file or stdin (one per line).
    Publish(PublishCmd),
    /// Print messages as JSON lines; stop after --count, after --idle or on Ctrl-C.
    Consume(ConsumeCmd),
    /// Move a SQL outbox to the --url platform (or stdout) until Ctrl-C or SIGTERM.
    #[cfg(feature = "sql")]
    Relay(RelayCmd),
    /// Publish and consume N messages, then print throughput and latency percentiles.
    Bench(BenchCmd),
    /// Create a stream (Kafka topic, SQS queue) where the platform needs one.
    Create(CreateCmd),
    /// Delete a stream (Kafka topic, SQS queue).
    Delete(DeleteCmd),
    /// Dead-letter streams (`<stream>.dlq`).
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Print a program's AsyncAPI document with the server and bindings of --url.
    Asyncapi(AsyncapiCmd),
    /// Event contracts.
    #[command(subcommand)]
    Schema(SchemaCommand),
}

/// `streams asyncapi`.
///
/// A service writes its own document from its event registry (the payments example:
/// `cargo run -p streams-examples --example payments_agentless --features sql --
/// asyncapi`); this adds where it runs: the server of --url, the protocol's channel
/// and message bindings, and the headers its driver sets.
#[derive(Debug, Args)]
pub struct AsyncapiCmd {
    /// The document the program wrote (YAML or JSON); `-` or none reads stdin.
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t = DocFormat::Yaml)]
    pub format: DocFormat,
    /// The server's name in the document (default: the platform, e.g. `kafka`).
    #[arg(long)]
    pub server: Option<String>,
}

/// `streams schema ...`.
#[derive(Debug, Subcommand)]
pub enum SchemaCommand {
    /// Exit 1 when NEW breaks consumers of OLD (AsyncAPI documents or JSON Schemas),
    /// one line per change: `<event>: <field>: <rule>: <detail>`; 2 on unreadable input.
    Check(SchemaCheckCmd),
}

/// `streams schema check`.
#[derive(Debug, Args)]
pub struct SchemaCheckCmd {
    /// The contract consumers use now.
    pub old: PathBuf,
    /// The contract about to be deployed.
    pub new: PathBuf,
    /// The event's name when comparing two JSON Schemas (default: the schema's title,
    /// else NEW's file name).
    #[arg(long)]
    pub name: Option<String>,
}

/// `streams publish`.
#[derive(Debug, Args)]
pub struct PublishCmd {
    /// Stream (topic, queue) to publish to.
    pub stream: String,
    /// Payloads; without any, lines are read from --file or stdin.
    pub messages: Vec<String>,
    /// Read lines from this file (`-` for stdin).
    #[arg(short, long, conflicts_with = "messages")]
    pub file: Option<PathBuf>,
    /// Key of every message (partition key; FIFO group).
    #[arg(short, long)]
    pub key: Option<String>,
    /// Header of every message, KEY=VALUE; repeatable.
    #[arg(short = 'H', long = "header", value_parser = publish::header)]
    pub headers: Vec<(String, String)>,
    /// Content type: a MIME type, or json, protobuf, text, bytes.
    #[arg(short = 't', long, value_parser = publish::content_type)]
    pub content_type: Option<String>,
    /// How input lines are read.
    #[arg(long, value_enum, default_value_t = InputFormat::Text)]
    pub format: InputFormat,
    /// Messages per write.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
}

/// `streams consume`.
#[derive(Debug, Args)]
pub struct ConsumeCmd {
    /// Stream (topic, queue) to read.
    pub stream: String,
    /// Consumer group (Kafka, in-process bus); default: the URL's `group`.
    #[arg(short, long)]
    pub group: Option<String>,
    /// Read this partition instead of joining a group (Kafka).
    #[arg(short, long, conflicts_with = "group")]
    pub partition: Option<i32>,
    /// With --partition: the first offset (default: the beginning).
    #[arg(short, long, requires = "partition", conflicts_with = "group")]
    pub offset: Option<i64>,
    /// Stop after this many messages.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long (`5s`, `1m`).
    #[arg(long, value_parser = duration)]
    pub idle: Option<Duration>,
    /// Handlers at once; above 1, lines may be out of order.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
}

/// `streams relay`.
#[cfg(feature = "sql")]
#[derive(Debug, Args)]
pub struct RelayCmd {
    /// The outbox database: postgres://..., mysql://... or mariadb://...
    #[arg(long, env = "STREAMS_RELAY_FROM", hide_env_values = true)]
    pub from: String,
    /// The outbox table.
    #[arg(long, default_value = streams::sql::DEFAULT_TABLE)]
    pub table: String,
    /// Where messages go: `stdout` for JSON lines; default: --url.
    #[arg(long)]
    pub to: Option<String>,
    /// Outbox rows claimed per pass.
    #[arg(long, default_value_t = 100)]
    pub batch_size: usize,
    /// Poll interval when nothing wakes the relay.
    #[arg(long, default_value = "1s", value_parser = duration)]
    pub poll_interval: Duration,
    /// How long a claim lasts before another relay may take the rows over.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub lease: Duration,
    /// Fixed relay id; a restarted relay with the same id resumes its claims at once.
    #[arg(long)]
    pub relay_id: Option<String>,
    /// Claim disjoint sets alongside other relays (no order across relays).
    #[arg(long)]
    pub parallel: bool,
    /// Create the outbox and quarantine tables if missing.
    #[arg(long)]
    pub create_table: bool,
    /// Poll only, without PostgreSQL LISTEN/NOTIFY.
    #[arg(long)]
    pub no_listen: bool,
    /// Relay what the outbox holds, then exit.
    #[arg(long)]
    pub once: bool,
}

/// `streams bench`.
#[derive(Debug, Args)]
pub struct BenchCmd {
    /// Messages.
    #[arg(short = 'n', long, default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: u64,
    /// Payload bytes per message.
    #[arg(short, long, default_value_t = 256)]
    pub size: usize,
    /// Messages per write.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Writes (batches) in flight: a wide window keeps Kafka's producer queues full
    /// (see `streams::WriteWindow`).
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub inflight: u32,
    /// Publish at this steady rate (messages per second), in batches of at most a
    /// millisecond's worth, so that the latency percentiles are publish-to-handler
    /// rather than time spent queueing behind a burst.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: Option<u64>,
    /// Handlers at once.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u32).range(1..))]
    pub concurrency: u32,
    /// Use this stream instead of a new one (which is created, then deleted).
    #[arg(long)]
    pub stream: Option<String>,
    /// Partitions of the created Kafka topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
    /// Give up when messages are still missing this long after publishing.
    #[arg(long, default_value = "60s", value_parser = duration)]
    pub timeout: Duration,
    /// Keep the created stream.
    #[arg(long)]
    pub keep: bool,
    /// No progress bars.
    #[arg(long)]
    pub no_progress: bool,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// What to run, in order: `streams` (the connection), `bare` (the in-process bus
    /// without spans and metrics), `raw` (a tokio mpsc channel carrying the same
    /// messages to the same handler) and `batch` (the connection with a batch handler,
    /// see `--batch-handler`). Default: `streams,bare,raw` on memory://, `streams`
    /// elsewhere, followed by `batch` when `--batch-handler` is given; `bare` and `raw`
    /// are in-process only.
    #[arg(long, value_delimiter = ',', value_enum)]
    pub cases: Vec<bench::BenchCase>,
    /// Messages per batch of the `batch` case (or what arrived within 10 ms); given
    /// without `--cases`, adds that case after the default ones, so the batch handler
    /// is measured next to the per-message one in the same run.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub batch_handler: Option<u32>,
    /// Draw throughput over time and the latency percentiles of every case to this
    /// SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
    /// Bench the outbox relay: write to the outbox of the `--url` database (table
    /// `streams_bench_outbox`, created if missing), relay it with LISTEN/NOTIFY to
    /// this URL, and measure from each insert's commit to the handler there.
    #[arg(long, value_name = "URL")]
    pub relay_to: Option<String>,
}

/// `streams create`.
#[derive(Debug, Args)]
pub struct CreateCmd {
    /// Stream to create.
    pub stream: String,
    /// Partitions of a Kafka topic.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    pub partitions: u32,
}

/// `streams delete`.
#[derive(Debug, Args)]
pub struct DeleteCmd {
    /// Stream to delete.
    pub stream: String,
}

/// `streams dlq ...`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Move messages from `<stream>.dlq` back to `<stream>`, printing each.
    Redrive(RedriveCmd),
}

/// `streams dlq redrive`.
#[derive(Debug, Args)]
pub struct RedriveCmd {
    /// The stream whose dead letters to move (they are read from `<stream>.dlq`).
    pub stream: String,
    /// Move them to this stream instead of back to the original one.
    #[arg(long)]
    pub to: Option<String>,
    /// Print what would move; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Stop after this many.
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Stop when nothing arrives for this long.
    #[arg(long, default_value = "5s", value_parser = duration)]
    pub idle: Duration,
    /// Consumer group on the dead-letter stream (Kafka).
    #[arg(short, long)]
    pub group: Option<String>,
}

/// Parses a duration: `500ms`, `5s`, `2m`, `1h 30m`; a bare number is seconds.
///
/// # Errors
///
/// A one-line reason.
pub fn duration(value: &str) -> Result<Duration, String> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return if secs.is_finite() && secs >= 0.0 {
            Ok(Duration::from_secs_f64(secs))
        } else {
            Err(format!("`{value}` is not a duration"))
        };
    }
    humantime::parse_duration(v)
        .map_err(|e| format!("`{value}` is not a duration ({e}); try 500ms, 5s, 2m"))
}

/// Whether readers of `platform` take consumer groups (SQS queues have none).
pub(crate) fn has_groups(platform: &str) -> bool {
    matches!(platform, "kafka" | "memory" | "nats" | "redis" | "amqp")
}

/// The line `streams schema check` reports after its findings.
pub fn schema_summary(breaking: usize) -> String {
    if breaking == 0 {
        "schema check: compatible, no change breaks consumers".to_owned()
    } else {
        format!("schema check: {breaking} breaking change(s)")
    }
}

/// What a command reports on stderr when it succeeds.
pub type Summary = String;

/// Connects to `cli.url` and runs the command, reading stdin where the command does
/// and printing to `out`; returns the line to report on stderr.
///
/// # Errors
///
/// Whatever the command reports; main prints it as one line and exits with 1.
pub async fn run(
    cli: Cli,
    stdin: impl tokio::io::AsyncBufRead + Unpin + Send + 'static,
    out: Output,
    stop: streams::CancellationToken,
) -> Result<Summary, streams::BoxError> {
    let url = cli.url.trim().to_owned();
    match cli.command {
        Command::Asyncapi(cmd) => {
            asyncapi(
                AsyncapiArgs {
                    url,
                    file: cmd.file,
                    format: cmd.format,
                    server: cmd.server,
                },
                stdin,
                out,
            )
            .await
        }
        Command::Schema(SchemaCommand::Check(cmd)) => {
            let findings = schema_check(&cmd.old, &cmd.new, cmd.name.as_deref())?;
            for f in &findings {
                out.line(&f.to_string())?;
            }
            if findings.is_empty() {
                Ok(schema_summary(0))
            } else {
                Err(schema_summary(findings.len()).into())
            }
        }
        #[cfg(feature = "sql")]
        Command::Relay(cmd) => {
            let (destination, to): (std::sync::Arc<dyn streams::Writer>, &str) = match cmd
                .to
                .as_deref()
            {
                Some("stdout" | "-") => (std::sync::Arc::new(relay::PrintWriter(out)), "stdout"),
                Some(to) => {
                    let conn = streams::connect(to).await?;
                    (conn.writer(), conn.platform())
                }
                None => {
                    let conn = streams::connect(&url).await?;
                    (conn.writer(), conn.platform())
                }
            };
            let from = cmd
                .from
                .split_once("://")
                .map_or("outbox", |(s, _)| s)
                .to_owned();
            let report = relay::relay(
                relay::RelayArgs {
                    from: cmd.from,
                    table: cmd.table,
                    batch_size: cmd.batch_size,
                    poll_interval: cmd.poll_interval,
                    lease: cmd.lease,
                    relay_id: cmd.relay_id,
                    parallel: cmd.parallel,
                    create_table: cmd.create_table,
                    no_listen: cmd.no_listen,
                    once: cmd.once,
                },
                destination,
                stop,
            )
            .await
            // The error names the failing side (its table, queue or topic); this names
            // the relay, and says that nothing was lost.
            .map_err(|e| format!("relay from {from} to {to} stopped, the outbox rows not relayed stay in place: {e}"))?;
            Ok(if cmd.once {
                format!(
                    "relayed {} message(s) in {} batch(es), {} quarantined",
                    report.messages, report.batches, report.quarantined
                )
            } else {
                "relay stopped".to_owned()
            })
        }
        #[cfg(feature = "sql")]
        Command::Bench(cmd) if cmd.relay_to.is_some() => {
            bench::relay::bench_relay(&url, cmd, out, stop).await
        }
        Command::Bench(cmd) if url.starts_with("memory:") => {
            let conn = streams::connect(&url).await?;
            // The same bus without the observing decorators, for the overhead ratio.
            let bare = streams::chanbuf::connect(&url).await?;
            bench_command(&conn, cmd, Some(bare), out, stop).await
        }
        command => {
            let conn = streams::connect(&url).await?;
            let result = run_on(&conn, command, stdin, out, stop).await;
            // Flushes and releases the platform clients; a failure matters only when
            // the command itself succeeded.
            let closed = conn.writer().close().await;
            let summary = result?;
            closed?;
            Ok(summary)
        }
    }
}

/// `streams bench` on `conn`, with `bare` (the same platform without the observing
/// decorators) as a baseline; the raw baseline runs with it.
pub(crate) async fn bench_command(
    conn: &streams::Connection,
    cmd: BenchCmd,
    bare: Option<streams::Connection>,
    out: Output,
    stop: streams::CancellationToken,
) -> Result<Summary, streams::BoxError> {
    let cases = if !cmd.cases.is_empty() {
        cmd.cases
    } else {
        let mut cases = if bare.is_some() {
            vec![
                bench::BenchCase::Streams,
                bench::BenchCase::Bare,
                bench::BenchCase::Raw,
            ]
        } else {
            vec![bench::BenchCase::Streams]
        };
        if cmd.batch_handler.is_some() {
            cases.push(bench::BenchCase::Batch);
        }
        cases
    };
    if cases
        .iter()
        .any(|c| matches!(c, bench::BenchCase::Bare | bench::BenchCase::Raw))
        && bare.is_none()
    {
        return Err("--cases bare and raw run on memory:// only".into());
    }
    if cmd.relay_to.is_some() && !cfg!(feature = "sql") {
        return Err("--relay-to needs the `sql` feature".into());
    }
    let report = bench(
        conn,
        BenchArgs {
            stream: cmd.stream,
            count: cmd.count,
            size: cmd.size,
            batch: cmd.batch as usize,
            inflight: cmd.inflight as usize,
            concurrency: cmd.concurrency as usize,
            batch_handler: cmd.batch_handler.map_or(100, |n| n as usize),
            partitions: cmd.partitions,
            rate: cmd.rate,
            timeout: cmd.timeout,
            keep: cmd.keep,
            progress: !cmd.no_progress,
            cases,
            bare,
            plot: cmd.plot,
            from_ack: cmd.relay_to.is_some(),
        },
        stop,
    )
    .await?;
    let text = if cmd.json {
        serde_json::to_string(&report)?
    } else {
        report.render()
    };
    out.line(&text)?;
    Ok(format!("bench on {} done", conn.platform()))
}

/// Runs a command on an open connection (everything but `relay`, which needs no
/// source connection).
///
/// # Errors
///
/// Whatever the command reports.
pub async fn run_on(
    conn: &streams::Connection,
    command: Command,
    stdin: impl tokio::io::AsyncBufRead + Unpin + Send + 'static,
    out: Output,
    stop: streams::CancellationToken,
) -> Result<Summary, streams::BoxError> {
    let platform = conn.platform();
    match command {
        Command::Publish(cmd) => {
            let stream = cmd.stream.clone();
            let n = publish(
                conn,
                PublishArgs {
                    stream: cmd.stream,
                    messages: cmd.messages,
                    file: cmd.file,
                    key: cmd.key,
                    headers: cmd.headers,
                    content_type: cmd.content_type,
                    format: cmd.format,
                    batch: cmd.batch as usize,
                },
                stdin,
            )
            .await?;
            let mut summary = format!("published {n} message(s) to `{stream}` ({platform})");
            if platform == "memory" {
                summary.push_str(
                    "; memory:// is in-process, so only subscribers in this process could see them",
                );
            }
            Ok(summary)
        }
        Command::Consume(cmd) => {
            let stream = cmd.stream.clone();
            let n = consume(
                conn,
                ConsumeArgs {
                    stream: cmd.stream,
                    group: cmd.group,
                    partition: cmd.partition,
                    offset: cmd.offset,
                    count: cmd.count,
                    idle: cmd.idle,
                    concurrency: cmd.concurrency as usize,
                },
                out,
                stop,
            )
            .await?;
            Ok(format!(
                "consumed {n} message(s) from `{stream}` ({platform})"
            ))
        }
        Command::Bench(cmd) => bench_command(conn, cmd, None, out, stop).await,
        Command::Create(cmd) => {
            conn.create_stream(&cmd.stream, cmd.partitions).await?;
            Ok(format!("created `{}` ({platform})", cmd.stream))
        }
        Command::Delete(cmd) => {
            conn.delete_stream(&cmd.stream).await?;
            Ok(format!("deleted `{}` ({platform})", cmd.stream))
        }
        Command::Dlq(DlqCommand::Redrive(cmd)) => {
            let (stream, to) = (cmd.stream.clone(), cmd.to.clone());
            let report = redrive(
                conn,
                RedriveArgs {
                    stream: cmd.stream,
                    to: cmd.to,
                    dry_run: cmd.dry_run,
                    count: cmd.count,
                    idle: cmd.idle,
                    group: cmd.group,
                },
                out,
                stop,
            )
            .await?;
            let to = to.unwrap_or_else(|| stream.clone());
            Ok(if report.dry_run {
                format!(
                    "dry run: {} message(s) of `{stream}.dlq` would move to `{to}`; nothing was moved",
                    report.moved
                )
            } else {
                format!(
                    "moved {} message(s) from `{stream}.dlq` to `{to}`",
                    report.moved
                )
            })
        }
        #[cfg(feature = "sql")]
        Command::Relay(_) => Err("relay needs no connection; call `run`".into()),
        Command::Asyncapi(_) | Command::Schema(_) => {
            Err("asyncapi and schema need no connection; call `run`".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(duration("5").unwrap(), Duration::from_secs(5));
        assert_eq!(duration("1.5").unwrap(), Duration::from_millis(1500));
        assert_eq!(duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(duration("2m").unwrap(), Duration::from_secs(120));
        assert!(duration("soon").unwrap_err().contains("not a duration"));
        assert!(duration("-1").is_err());
    }

    #[test]
    fn the_grammar_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
