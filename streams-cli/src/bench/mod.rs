//! `streams bench`: publish and consume on one connection, measuring throughput,
//! publish-to-handler latency and allocations per message, next to baselines run the
//! same way in the same process: the platform without the observing decorators
//! (`bare`) and, in-process, a raw tokio channel carrying the same messages (`raw`).

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use streams::{BoxError, CancellationToken, Connection, Message, ReadTask, WriteWindow};

use crate::run::read_routed;

mod pace;
mod plot;
#[cfg(feature = "sql")]
pub(crate) mod relay;
mod stats;

pub(crate) use pace::Pace;
pub use stats::Latency;
pub(crate) use stats::{micros, per_second, thousands};

/// Header carrying a bench message's sequence number. When it was written stays in the
/// bench's [`Tally`], by sequence number: the bench's own cost per message counts in
/// what it measures, and formatting and parsing a time per message would be most of it.
const SEQ: &str = "streams-bench-seq";
/// Header marking the warm-up message.
const WARM_UP: &str = "streams-bench-warm-up";
/// Distinct keys of bench messages.
const KEYS: usize = 64;
/// Capacity of the raw baseline's channel: the in-process bus's default buffer.
const RAW_CAPACITY: usize = 1024;
/// Most messages the raw baseline's consumer takes from its channel at once.
const RAW_BURST: usize = 256;

/// What `streams bench` runs.
#[derive(Debug, Clone)]
pub struct BenchArgs {
    /// Stream to use; a new one (created, then deleted) when absent.
    pub stream: Option<String>,
    /// Messages to publish.
    pub count: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// Messages per write.
    pub batch: usize,
    /// Batches in flight ([`WriteWindow`]).
    pub inflight: usize,
    /// Publish at this steady rate (messages per second) instead of as fast as
    /// possible, in batches of at most a millisecond's worth, so that the latency
    /// measured is the platform's and not the queue's.
    pub rate: Option<u64>,
    /// Handlers at once (batch handlers at once in the `batch` case).
    pub concurrency: usize,
    /// Most messages per batch in the `batch` case.
    pub batch_handler: usize,
    /// Partitions of a created Kafka topic.
    pub partitions: u32,
    /// Give up when not everything arrived within this time after publishing.
    pub timeout: Duration,
    /// Keep a created stream.
    pub keep: bool,
    /// Draw progress bars when stderr is a terminal.
    pub progress: bool,
    /// What to run, in this order.
    pub cases: Vec<BenchCase>,
    /// The same platform without the observing decorators (spans, metrics), for
    /// [`BenchCase::Bare`].
    pub bare: Option<Connection>,
    /// Draw throughput over time and the latency percentiles of every case to this
    /// SVG file.
    pub plot: Option<PathBuf>,
    /// Measure latency from when each write was acknowledged (for an outbox: when
    /// its insert committed) instead of from when it began.
    pub from_ack: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        BenchArgs {
            stream: None,
            count: 10_000,
            size: 256,
            batch: 1000,
            inflight: 8,
            rate: None,
            concurrency: 4,
            batch_handler: 100,
            partitions: 1,
            timeout: Duration::from_secs(60),
            keep: false,
            progress: true,
            cases: vec![BenchCase::Streams],
            bare: None,
            plot: None,
            from_ack: false,
        }
    }
}

/// One way through which a bench sends its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BenchCase {
    /// The connection as `streams::connect` returns it.
    Streams,
    /// The same platform without the observing decorators (no spans, no metrics).
    Bare,
    /// A bounded tokio mpsc channel carrying the same messages, built the same way,
    /// to the same handler: the in-process raw baseline.
    Raw,
    /// The connection as `streams::connect` returns it, with a batch handler of up to
    /// [`BenchArgs::batch_handler`] messages (or what arrived within 10 ms) instead of
    /// the per-message one, on a stream of its own.
    Batch,
}

impl BenchCase {
    /// The case's name in reports.
    pub fn name(self) -> &'static str {
        match self {
            BenchCase::Streams => "streams",
            BenchCase::Bare => "bare",
            BenchCase::Raw => "raw",
            BenchCase::Batch => "batch",
        }
    }
}

/// What one case of a bench measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CaseReport {
    /// `streams` (the connection as `streams::connect` returns it), `bare` (without
    /// the observing decorators) or `raw` (a tokio mpsc channel).
    pub case: String,
    /// Messages published.
    pub published: u64,
    /// Seconds from the first write to the last acknowledged write.
    pub publish_secs: f64,
    /// Distinct messages handled.
    pub received: u64,
    /// Messages handled more than once.
    pub duplicates: u64,
    /// Seconds from the first write to the last distinct message handled.
    pub consume_secs: f64,
    /// Write-to-handler latency.
    pub latency: Latency,
    /// Heap allocations per published message, on every thread, from the first write
    /// to the last message handled; absent when the counting allocator is not the
    /// global allocator (it is in the `streams` binary).
    pub allocations_per_message: Option<f64>,
}

impl CaseReport {
    /// Published messages per second.
    pub fn publish_rate(&self) -> f64 {
        per_second(self.published, self.publish_secs)
    }

    /// Handled messages per second.
    pub fn consume_rate(&self) -> f64 {
        per_second(self.received, self.consume_secs)
    }
}

/// What a bench measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The platform.
    pub platform: String,
    /// The stream.
    pub stream: String,
    /// Payload bytes per message.
    pub size: usize,
    /// The steady rate asked for (`--rate`), when there was one.
    pub rate: Option<u64>,
    /// The first case run: the measured connection, unless `--cases` put another first.
    #[serde(flatten)]
    pub streams: CaseReport,
    /// The other cases, run in the same process after it (`bare`, `raw`).
    pub baselines: Vec<CaseReport>,
}

impl BenchReport {
    /// Published messages per second.
    pub fn publish_rate(&self) -> f64 {
        self.streams.publish_rate()
    }

    /// Handled messages per second.
    pub fn consume_rate(&self) -> f64 {
        self.streams.consume_rate()
    }

    /// The report as the CLI prints it.
    pub fn render(&self) -> String {
        let s = &self.streams;
        let mib = s.publish_rate() * self.size as f64 / (1024.0 * 1024.0);
        let paced = self
            .rate
            .map(|r| format!(" (paced at {} msg/s)", thousands(r as f64)))
            .unwrap_or_default();
        let case = if s.case == BenchCase::Streams.name() {
            String::new()
        } else {
            format!(" (case {})", s.case)
        };
        let mut out = format!(
            "platform  {}{case}\nstream    {} ({} messages of {} B)\n\
             publish   {} in {:.3} s = {} msg/s, {:.1} MiB/s{}\n\
             consume   {} in {:.3} s = {} msg/s, {} duplicate(s)\n\
             latency   {}",
            self.platform,
            self.stream,
            s.published,
            self.size,
            s.published,
            s.publish_secs,
            thousands(s.publish_rate()),
            mib,
            paced,
            s.received,
            s.consume_secs,
            thousands(s.consume_rate()),
            s.duplicates,
            s.latency.render(),
        );
        if let Some(a) = s.allocations_per_message {
            out.push_str(&format!("\nallocs    {a:.1} per message"));
        }
        if !self.baselines.is_empty() {
            out.push_str(&format!(
                "\n\n{:<8} {:>13} {:>13} {:>9} {:>9} {:>10} {:>12}",
                "case",
                "publish msg/s",
                "consume msg/s",
                "p50",
                "p99",
                "allocs/msg",
                "streams/case"
            ));
            for case in std::iter::once(s).chain(&self.baselines) {
                out.push_str(&format!(
                    "\n{:<8} {:>13} {:>13} {:>9} {:>9} {:>10} {:>12}",
                    case.case,
                    thousands(case.publish_rate()),
                    thousands(case.consume_rate()),
                    micros(case.latency.p50_us),
                    micros(case.latency.p99_us),
                    case.allocations_per_message
                        .map_or("-".into(), |a| format!("{a:.1}")),
                    format!("{:.2}", ratio(s.consume_rate(), case.consume_rate())),
                ));
            }
            out.push_str(
                "\n(streams/case: consume msg/s of the measured connection over the case's; \
                 bare: the same bus without spans and metrics, raw: tokio mpsc)",
            );
        }
        out
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Nanoseconds since the Unix epoch (one clock read, no calendar arithmetic).
fn now_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The sequence number of a bench message.
fn seq(msg: &Message) -> Option<usize> {
    msg.headers.get(SEQ)?.parse().ok()
}

/// The bench's messages: each carries its sequence number and when it was written.
struct Source {
    stream: String,
    payload: Bytes,
    keys: Vec<String>,
    pace: Pace,
    count: usize,
}

impl Source {
    fn new(stream: &str, args: &BenchArgs, count: usize) -> Self {
        Source {
            stream: stream.to_owned(),
            payload: Bytes::from((0..args.size).map(|i| (i % 251) as u8).collect::<Vec<_>>()),
            keys: (0..KEYS).map(|k| format!("k{k}")).collect(),
            pace: Pace::new(args.rate, args.batch),
            count,
        }
    }

    /// The first message of each write, in order.
    fn firsts(&self) -> impl Iterator<Item = usize> {
        (0..self.count).step_by(self.pace.batch())
    }

    /// Waits until the write starting with `first` is due, then builds it and notes
    /// in `tally` when it was sent.
    async fn next(&self, start: Instant, first: usize, tally: &Tally) -> Vec<Message> {
        self.pace.wait(start, first).await;
        let last = (first + self.pace.batch()).min(self.count);
        tally.sent(first..last, now_ns());
        let mut digits = itoa::Buffer::new();
        (first..last)
            .map(|seq| {
                Message::new(self.stream.as_str(), self.payload.clone())
                    .with_key(self.keys[seq % KEYS].as_str())
                    .with_header(SEQ, digits.format(seq))
            })
            .collect()
    }
}

/// Everything the handler updates; without a lock, so that concurrent handlers do not
/// measure each other.
struct Tally {
    seen: Vec<AtomicBool>,
    /// When each message was written, by sequence number, in nanoseconds since the
    /// Unix epoch.
    sent_ns: Vec<AtomicU64>,
    /// When each message was handled, likewise.
    handled_ns: Vec<AtomicU64>,
    received: AtomicU64,
    duplicates: AtomicU64,
    warm: CancellationToken,
    all: CancellationToken,
    /// Progress, drawn only on a terminal: updated every `BAR_STEP` messages.
    bar: Option<ProgressBar>,
}

/// Messages between two updates of a progress bar.
const BAR_STEP: u64 = 1024;

impl Tally {
    fn new(count: usize, bar: Option<ProgressBar>) -> Self {
        Tally {
            seen: (0..count).map(|_| AtomicBool::new(false)).collect(),
            sent_ns: (0..count).map(|_| AtomicU64::new(0)).collect(),
            handled_ns: (0..count).map(|_| AtomicU64::new(0)).collect(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            warm: CancellationToken::new(),
            all: CancellationToken::new(),
            bar,
        }
    }

    /// Notes that messages `seqs` were written at `at_ns`; a later note replaces an
    /// earlier one (the relay bench notes the commit after the insert).
    fn sent(&self, seqs: std::ops::Range<usize>, at_ns: u64) {
        for sent in self.sent_ns.get(seqs).unwrap_or_default() {
            sent.store(at_ns, Ordering::Relaxed);
        }
    }

    fn handle(&self, msg: &Message) -> Result<(), BoxError> {
        if msg.headers.contains_key(WARM_UP) {
            self.warm.cancel();
            return Ok(());
        }
        let Some(seq) = seq(msg) else {
            // Something else on the stream: not ours to count.
            return Ok(());
        };
        let Some(flag) = self.seen.get(seq) else {
            return Ok(());
        };
        if flag.swap(true, Ordering::AcqRel) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        self.handled_ns[seq].store(now_ns(), Ordering::Relaxed);
        let n = self.received.fetch_add(1, Ordering::AcqRel) + 1;
        if let Some(bar) = self.bar.as_ref().filter(|_| n.is_multiple_of(BAR_STEP)) {
            bar.set_position(n);
        }
        if n == self.seen.len() as u64 {
            self.all.cancel();
        }
        Ok(())
    }

    /// Waits until every message arrived, `stop` fired or `timeout` passed.
    async fn wait_all(&self, stop: &CancellationToken, timeout: Duration) {
        tokio::select! {
            _ = self.all.cancelled() => {}
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(timeout) => {}
        }
    }

    /// The case's figures, `start_ns` being when the first write began (nanoseconds
    /// since the Unix epoch).
    fn result(&self, case: &str, published: u64, publish_secs: f64, start_ns: u64) -> Case {
        let (mut latencies, mut handled) = (Vec::new(), Vec::new());
        for ((seen, sent), at) in self.seen.iter().zip(&self.sent_ns).zip(&self.handled_ns) {
            if seen.load(Ordering::Acquire) {
                let at = at.load(Ordering::Relaxed);
                latencies.push(at.saturating_sub(sent.load(Ordering::Relaxed)) / 1_000);
                handled.push(at.saturating_sub(start_ns) / 1_000);
            }
        }
        latencies.sort_unstable();
        let received = latencies.len() as u64;
        let consume_secs = handled.iter().max().map_or(0.0, |&us| us as f64 / 1e6);
        Case {
            report: CaseReport {
                case: case.to_owned(),
                published,
                publish_secs,
                received,
                duplicates: self.duplicates.load(Ordering::Relaxed),
                consume_secs,
                latency: Latency::of_sorted(&latencies),
                allocations_per_message: None,
            },
            latencies,
            handled_us: handled,
        }
    }
}

/// A case's report and the samples it came from, for the plot.
struct Case {
    report: CaseReport,
    /// Latencies, ascending, in microseconds.
    latencies: Vec<u64>,
    /// When each message was handled, in microseconds after the first write.
    handled_us: Vec<u64>,
}

/// Progress bars for one case, drawn only on a terminal.
struct Bars {
    published: ProgressBar,
    consumed: ProgressBar,
    drawn: bool,
}

impl Bars {
    fn new(case: &str, count: u64, progress: bool) -> Result<Self, BoxError> {
        let drawn = progress && std::io::stderr().is_terminal();
        let bars = MultiProgress::with_draw_target(if drawn {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let style = ProgressStyle::with_template(
            "{prefix:>16} [{bar:40}] {human_pos}/{human_len} {elapsed}",
        )
        .map_err(|e| e.to_string())?
        .progress_chars("=> ");
        let bar = |what: &str| {
            bars.add(
                ProgressBar::new(count)
                    .with_style(style.clone())
                    .with_prefix(format!("{case} {what}")),
            )
        };
        Ok(Bars {
            published: bar("publish"),
            consumed: bar("consume"),
            drawn,
        })
    }
}

/// Publishes `count` messages of `size` bytes and consumes them on the same
/// connection, measuring throughput both ways and the latency from write to handler;
/// then runs the baselines asked for (`bare`, `raw`) the same way.
///
/// A warm-up message goes first (again every half second until it arrives), so
/// subscribing and joining a consumer group are not measured.
///
/// # Errors
///
/// A write or reader failure, or messages still missing `timeout` after publishing
/// (the error says how many), in any case; a plot that cannot be written.
pub async fn bench(
    conn: &Connection,
    args: BenchArgs,
    stop: CancellationToken,
) -> Result<BenchReport, BoxError> {
    if args.count == 0 {
        return Err("--count must be at least 1".into());
    }
    if args.rate == Some(0) {
        return Err("--rate must be at least 1".into());
    }
    let count = usize::try_from(args.count).map_err(|_| "--count is too large")?;
    let stream = args
        .stream
        .clone()
        .unwrap_or_else(|| format!("streams-bench-{}", uuid::Uuid::now_v7().simple()));

    let mut cases = Vec::with_capacity(args.cases.len());
    for &case in &args.cases {
        cases.push(match case {
            BenchCase::Streams => {
                connection_case(case.name(), conn, &stream, &args, count, &stop).await?
            }
            BenchCase::Bare => {
                let bare = args.bare.as_ref().ok_or(
                    "the bare case needs the platform without decorators (memory:// only)",
                )?;
                connection_case(case.name(), bare, &stream, &args, count, &stop).await?
            }
            BenchCase::Raw => raw_case(&stream, &args, count, &stop).await?,
            BenchCase::Batch => {
                // A stream of its own: a group reading one another case wrote would
                // start with that case's messages.
                let batch_stream = format!("{stream}-batch");
                connection_case(case.name(), conn, &batch_stream, &args, count, &stop).await?
            }
        });
    }
    if let Some(path) = &args.plot {
        plot::draw(path, conn.platform(), &args, &cases)?;
    }

    let mut reports = cases.into_iter().map(|c| c.report);
    let streams = reports.next().ok_or("no case ran")?;
    let report = BenchReport {
        platform: conn.platform().to_owned(),
        stream,
        size: args.size,
        rate: args.rate,
        streams,
        baselines: reports.collect(),
    };
    for case in std::iter::once(&report.streams).chain(&report.baselines) {
        if case.received < case.published {
            return Err(format!(
                "{}: {} of {} messages did not arrive within {}\n{}",
                case.case,
                case.published - case.received,
                case.published,
                humantime::format_duration(args.timeout),
                report.render()
            )
            .into());
        }
    }
    Ok(report)
}

/// One case through a [`Connection`]: the measured one, or the bare baseline.
async fn connection_case(
    case: &str,
    conn: &Connection,
    stream: &str,
    args: &BenchArgs,
    count: usize,
    stop: &CancellationToken,
) -> Result<Case, BoxError> {
    let reader = conn.reader()?;
    let writer = conn.writer();
    conn.create_stream(stream, args.partitions).await?;
    let bars = Bars::new(case, args.count, args.progress)?;
    let tally = Arc::new(Tally::new(count, bars.drawn.then(|| bars.consumed.clone())));
    let finish = CancellationToken::new();
    let mut task = ReadTask::new(stream).with_concurrency(args.concurrency.max(1));
    if crate::has_groups(conn.platform()) {
        task = task.with_group(format!("streams-bench-{}", uuid::Uuid::now_v7().simple()));
    }
    let subscribe = {
        let tally = tally.clone();
        let batch = (case == BenchCase::Batch.name())
            .then(|| streams::BatchSize::new(args.batch_handler, Duration::from_millis(10)));
        move |router: &mut streams::Router| match batch {
            None => {
                router.subscribe(
                    task,
                    tower::service_fn(move |msg: Message| std::future::ready(tally.handle(&msg))),
                );
            }
            Some(size) => {
                router.subscribe_batch(
                    task,
                    size,
                    tower::service_fn(move |batch: streams::Batch| {
                        let handled = batch
                            .messages()
                            .iter()
                            .try_for_each(|msg| tally.handle(msg))
                            .map(|()| streams::BatchOutcome::ok());
                        std::future::ready(handled)
                    }),
                );
            }
        }
    };
    let attached = CancellationToken::new();
    let mut reading = tokio::spawn(read_routed(
        reader,
        stream.to_owned(),
        subscribe,
        finish.clone(),
        stop.clone(),
        None,
        Some(attached.clone()),
    ));
    // Publish only once the reader is attached: on RabbitMQ the group's queue is made
    // then, and a message published before would have nowhere to go.
    tokio::select! {
        _ = attached.cancelled() => {}
        ended = &mut reading => {
            return Err(match ended {
                Ok(Ok(_)) => "the reader ended before it attached".into(),
                Ok(Err(e)) => e,
                Err(e) => BoxError::from(e),
            });
        }
    }

    let source = Source::new(stream, args, count);
    let outcome = async {
        // Warm up: until the reader has seen a message, everything else would measure
        // the group join.
        let warm_deadline = Instant::now() + Duration::from_secs(60).max(args.timeout);
        while !tally.warm.is_cancelled() {
            if Instant::now() > warm_deadline {
                return Err::<_, BoxError>(
                    "the reader saw no message within the time-out (warm-up)".into(),
                );
            }
            writer
                .write(vec![
                    Message::new(stream, "warm-up").with_header(WARM_UP, "1")
                ])
                .await?;
            tokio::select! {
                _ = tally.warm.cancelled() => {}
                _ = stop.cancelled() => return Err("interrupted".into()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }

        let allocations = crate::alloc::counting();
        let (start, start_ns) = (Instant::now(), now_ns());
        let writer: Arc<dyn streams::Writer> = if args.from_ack {
            Arc::new(AckStamp {
                inner: writer.clone(),
                tally: tally.clone(),
            })
        } else {
            writer.clone()
        };
        let mut window = WriteWindow::new(writer, args.inflight);
        for first in source.firsts() {
            let msgs = source.next(start, first, &tally).await;
            let n = msgs.len() as u64;
            window.write(msgs).await?;
            bars.published.inc(n);
        }
        window.flush().await?;
        let publish_secs = start.elapsed().as_secs_f64();
        bars.published.finish();
        tally.wait_all(stop, args.timeout).await;
        let allocations = allocations.map(|a| a.allocations());
        Ok((publish_secs, start_ns, allocations))
    }
    .await;

    finish.cancel();
    let read = reading.await.map_err(|e| format!("reader task: {e}"))?;
    bars.consumed
        .set_position(tally.received.load(Ordering::Acquire));
    bars.consumed.finish();
    if args.stream.is_none() && !args.keep {
        if let Err(e) = conn.delete_stream(stream).await {
            tracing::warn!(%stream, error = %e, "could not delete the bench stream");
        }
    }
    let (publish_secs, start_ns, allocations) = outcome?;
    read?;
    let mut result = tally.result(case, args.count, publish_secs, start_ns);
    result.report.allocations_per_message = allocations.map(|a| a as f64 / args.count as f64);
    Ok(result)
}

/// Notes in the tally when each write was acknowledged, for `from_ack`.
#[derive(Debug)]
struct AckStamp {
    inner: Arc<dyn streams::Writer>,
    tally: Arc<Tally>,
}

impl std::fmt::Debug for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tally")
            .field("received", &self.received)
            .finish_non_exhaustive()
    }
}

#[streams::async_trait]
impl streams::Writer for AckStamp {
    async fn write(&self, batch: Vec<Message>) -> streams::Result<()> {
        // A bench batch is a run of consecutive sequence numbers.
        let first = batch.first().and_then(seq);
        let n = batch.len();
        self.inner.write(batch).await?;
        if let Some(first) = first {
            self.tally.sent(first..first + n, now_ns());
        }
        Ok(())
    }

    async fn close(&self) -> streams::Result<()> {
        self.inner.close().await
    }
}

/// The raw baseline: the same messages, built the same way, through a bounded tokio
/// mpsc channel (the capacity of the bus's default buffer) to one consumer that takes
/// what is waiting at once and calls the same handler.
async fn raw_case(
    stream: &str,
    args: &BenchArgs,
    count: usize,
    stop: &CancellationToken,
) -> Result<Case, BoxError> {
    let bars = Bars::new("raw", args.count, args.progress)?;
    let tally = Arc::new(Tally::new(count, bars.drawn.then(|| bars.consumed.clone())));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Message>(RAW_CAPACITY);
    let consumer = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let mut taken = Vec::with_capacity(RAW_BURST);
            while rx.recv_many(&mut taken, RAW_BURST).await > 0 {
                for msg in taken.drain(..) {
                    tally.handle(&msg)?;
                }
            }
            Ok::<_, BoxError>(())
        })
    };
    let source = Source::new(stream, args, count);
    let allocations = crate::alloc::counting();
    let (start, start_ns) = (Instant::now(), now_ns());
    for first in source.firsts() {
        let msgs = source.next(start, first, &tally).await;
        let n = msgs.len() as u64;
        for msg in msgs {
            // As the bus does: a channel with room takes the message at once; only a
            // full one is waited on.
            match tx.try_send(msg) {
                Ok(()) => {}
                Err(tokio::sync::mpsc::error::TrySendError::Full(msg)) => {
                    tx.send(msg).await.map_err(|_| "the raw consumer ended")?;
                }
                Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => {
                    return Err("the raw consumer ended".into());
                }
            }
        }
        bars.published.inc(n);
    }
    let publish_secs = start.elapsed().as_secs_f64();
    bars.published.finish();
    tally.wait_all(stop, args.timeout).await;
    let allocations = allocations.map(|a| a.allocations());
    drop(tx);
    consumer.await.map_err(|e| format!("raw consumer: {e}"))??;
    bars.consumed
        .set_position(tally.received.load(Ordering::Acquire));
    bars.consumed.finish();
    let mut result = tally.result("raw", args.count, publish_secs, start_ns);
    result.report.allocations_per_message = allocations.map(|a| a as f64 / args.count as f64);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(case: &str, received: u64, secs: f64) -> CaseReport {
        CaseReport {
            case: case.into(),
            published: received,
            publish_secs: secs,
            received,
            duplicates: 0,
            consume_secs: secs,
            latency: Latency::default(),
            allocations_per_message: Some(9.0),
        }
    }

    #[test]
    fn the_report_puts_baselines_beside_the_measured_case() {
        let r = BenchReport {
            platform: "memory".into(),
            stream: "s".into(),
            size: 16,
            rate: None,
            streams: report("streams", 1000, 1.0),
            baselines: vec![report("bare", 1000, 0.5), report("raw", 1000, 0.25)],
        };
        let text = r.render();
        assert!(text.contains("allocs    9.0 per message"), "{text}");
        let bare = text.lines().find(|l| l.starts_with("bare")).unwrap();
        assert!(bare.trim_end().ends_with("0.50"), "{text}");
        let raw = text.lines().find(|l| l.starts_with("raw")).unwrap();
        assert!(raw.trim_end().ends_with("0.25"), "{text}");
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["received"], 1000,
            "the measured case is flattened: {json}"
        );
        assert_eq!(json["baselines"][1]["case"], "raw");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tally_counts_each_message_once() {
        let args = BenchArgs {
            count: 10,
            batch: 4,
            ..BenchArgs::default()
        };
        let source = Source::new("s", &args, 10);
        let tally = Tally::new(10, None);
        let start = Instant::now();
        let mut sizes = Vec::new();
        for first in source.firsts() {
            let batch = source.next(start, first, &tally).await;
            sizes.push(batch.len());
            for m in &batch {
                tally.handle(m).unwrap();
            }
            tally.handle(&batch[0]).unwrap();
        }
        assert_eq!(sizes, [4, 4, 2]);
        tally.handle(&Message::new("s", "other")).unwrap();
        assert!(tally.all.is_cancelled());
        let case = tally.result("streams", 10, 0.1, now_ns());
        assert_eq!(case.report.received, 10);
        assert_eq!(case.report.duplicates, 3);
        assert_eq!(case.latencies.len(), 10);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn raw_baseline_delivers_everything() {
        let args = BenchArgs {
            count: 5000,
            progress: false,
            ..BenchArgs::default()
        };
        let case = raw_case("s", &args, 5000, &CancellationToken::new())
            .await
            .unwrap();
        assert_eq!(case.report.received, 5000);
        assert_eq!(case.report.duplicates, 0);
        assert_eq!(case.handled_us.len(), 5000);
    }
}
