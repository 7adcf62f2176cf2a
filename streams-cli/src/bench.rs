//! `streams bench`.

use std::io::IsTerminal as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;
use streams::{BoxError, CancellationToken, Connection, Message, ReadTask, WriteWindow};

/// Header carrying a bench message's sequence number.
const SEQ: &str = "streams-bench-seq";
/// Header carrying when a bench message was written, in nanoseconds since the Unix epoch.
const SENT: &str = "streams-bench-sent-ns";
/// Header marking the warm-up message.
const WARM_UP: &str = "streams-bench-warm-up";

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
    /// Handlers at once (batch handlers at once with `batch_handler`).
    pub concurrency: usize,
    /// Hand messages to a batch handler, this many at most per batch (or what arrived
    /// within 10 ms), instead of one at a time.
    pub batch_handler: Option<usize>,
    /// Partitions of a created Kafka topic.
    pub partitions: u32,
    /// Give up when not everything arrived within this time after publishing.
    pub timeout: Duration,
    /// Keep a created stream.
    pub keep: bool,
    /// Draw progress bars when stderr is a terminal.
    pub progress: bool,
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
            batch_handler: None,
            partitions: 1,
            timeout: Duration::from_secs(60),
            keep: false,
            progress: true,
        }
    }
}

/// Latency percentiles from write to handler, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

/// What a bench measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BenchReport {
    /// The platform.
    pub platform: String,
    /// The stream.
    pub stream: String,
    /// Messages published.
    pub published: u64,
    /// Payload bytes per message.
    pub size: usize,
    /// The steady rate asked for (`--rate`), when there was one.
    pub rate: Option<u64>,
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
}

impl BenchReport {
    /// Published messages per second.
    pub fn publish_rate(&self) -> f64 {
        rate(self.published, self.publish_secs)
    }

    /// Handled messages per second.
    pub fn consume_rate(&self) -> f64 {
        rate(self.received, self.consume_secs)
    }

    /// The report as the CLI prints it.
    pub fn render(&self) -> String {
        let mib = |n: u64, secs: f64| rate(n, secs) * self.size as f64 / (1024.0 * 1024.0);
        let l = &self.latency;
        let paced = self
            .rate
            .map(|r| format!(" (paced at {} msg/s)", thousands(r as f64)))
            .unwrap_or_default();
        format!(
            "platform  {}\nstream    {} ({} messages of {} B)\n\
             publish   {} in {:.3} s = {} msg/s, {:.1} MiB/s{}\n\
             consume   {} in {:.3} s = {} msg/s, {} duplicate(s)\n\
             latency   p50 {}  p90 {}  p99 {}  p99.9 {}  max {}",
            self.platform,
            self.stream,
            self.published,
            self.size,
            self.published,
            self.publish_secs,
            thousands(self.publish_rate()),
            mib(self.published, self.publish_secs),
            paced,
            self.received,
            self.consume_secs,
            thousands(self.consume_rate()),
            self.duplicates,
            micros(l.p50_us),
            micros(l.p90_us),
            micros(l.p99_us),
            micros(l.p999_us),
            micros(l.max_us),
        )
    }
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn thousands(v: f64) -> String {
    let digits = format!("{:.0}", v.max(0.0));
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn micros(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2} s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2} ms", us as f64 / 1e3)
    } else {
        format!("{us} µs")
    }
}

/// The `q` quantile of sorted `values` (nearest rank).
fn quantile(sorted: &[u64], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn now_ns() -> u64 {
    chrono::Utc::now()
        .timestamp_nanos_opt()
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(0)
}

/// Everything the handler updates; without a lock, so that concurrent handlers do not
/// measure each other.
struct Tally {
    seen: Vec<AtomicBool>,
    /// Write-to-handler latency of each message, by sequence number.
    latencies_us: Vec<AtomicU64>,
    /// When the last distinct message arrived, in nanoseconds after `epoch`.
    last_at_ns: AtomicU64,
    epoch: Instant,
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
    fn handle(&self, msg: &Message) -> Result<(), BoxError> {
        if msg.headers.contains_key(WARM_UP) {
            self.warm.cancel();
            return Ok(());
        }
        let (Some(seq), Some(sent)) = (
            msg.headers.get(SEQ).and_then(|s| s.parse::<usize>().ok()),
            msg.headers.get(SENT).and_then(|s| s.parse::<u64>().ok()),
        ) else {
            // Something else on the stream: not ours to count.
            return Ok(());
        };
        let Some(flag) = self.seen.get(seq) else {
            return Ok(());
        };
        if flag.swap(true, Ordering::SeqCst) {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let latency = now_ns().saturating_sub(sent) / 1_000;
        self.latencies_us[seq].store(latency, Ordering::Relaxed);
        let at = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.last_at_ns.fetch_max(at, Ordering::Relaxed);
        let n = self.received.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(bar) = self.bar.as_ref().filter(|_| n.is_multiple_of(BAR_STEP)) {
            bar.set_position(n);
        }
        if n == self.seen.len() as u64 {
            self.all.cancel();
        }
        Ok(())
    }
}

/// Publishes `count` messages of `size` bytes and consumes them on the same
/// connection, measuring throughput both ways and the latency from write to handler.
///
/// A warm-up message goes first (again every half second until it arrives), so
/// subscribing and joining a consumer group are not measured.
///
/// # Errors
///
/// A write or reader failure, or messages still missing `timeout` after publishing
/// (the error says how many).
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
    let reader = conn.reader()?;
    let writer = conn.writer();
    let created = args.stream.is_none();
    let stream = args
        .stream
        .clone()
        .unwrap_or_else(|| format!("streams-bench-{}", uuid::Uuid::now_v7().simple()));
    conn.create_stream(&stream, args.partitions).await?;

    let drawn = args.progress && std::io::stderr().is_terminal();
    let draw = if drawn {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bars = MultiProgress::with_draw_target(draw);
    let style =
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {human_pos}/{human_len} {elapsed}")
            .map_err(|e| e.to_string())?
            .progress_chars("=> ");
    let published_bar = bars.add(
        ProgressBar::new(args.count)
            .with_style(style.clone())
            .with_prefix("publish"),
    );
    let consumed_bar = bars.add(
        ProgressBar::new(args.count)
            .with_style(style)
            .with_prefix("consume"),
    );

    let tally = Arc::new(Tally {
        seen: (0..count).map(|_| AtomicBool::new(false)).collect(),
        latencies_us: (0..count).map(|_| AtomicU64::new(0)).collect(),
        last_at_ns: AtomicU64::new(0),
        epoch: Instant::now(),
        received: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        warm: CancellationToken::new(),
        all: CancellationToken::new(),
        bar: drawn.then(|| consumed_bar.clone()),
    });
    let finish = CancellationToken::new();
    let mut task = ReadTask::new(&stream).with_concurrency(args.concurrency.max(1));
    if crate::has_groups(conn.platform()) {
        task = task.with_group(format!("streams-bench-{}", uuid::Uuid::now_v7().simple()));
    }
    let tally_for_batches = tally.clone();
    let service = {
        let tally = tally.clone();
        tower::service_fn(move |msg: Message| {
            let tally = tally.clone();
            async move { tally.handle(&msg) }
        })
    };
    let attached = CancellationToken::new();
    let batch_size = args
        .batch_handler
        .map(|n| streams::BatchSize::new(n, Duration::from_millis(10)));
    let mut reading = tokio::spawn(crate::run::read_routed(
        reader,
        stream.clone(),
        move |router| match batch_size {
            None => {
                router.subscribe(task, service);
            }
            Some(size) => {
                let tally = tally_for_batches;
                router.subscribe_batch(
                    task,
                    size,
                    tower::service_fn(move |batch: streams::Batch| {
                        let tally = tally.clone();
                        async move {
                            for msg in batch.messages() {
                                tally.handle(msg)?;
                            }
                            Ok::<_, BoxError>(streams::BatchOutcome::ok())
                        }
                    }),
                );
            }
        },
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

    let outcome = async {
        // Warm up: until the reader has seen a message, everything else would measure
        // the group join.
        let warm_deadline = Instant::now() + Duration::from_secs(60).max(args.timeout);
        while !tally.warm.is_cancelled() {
            if Instant::now() > warm_deadline {
                return Err::<(f64, Instant), BoxError>(
                    "the reader saw no message within the time-out (warm-up)".into(),
                );
            }
            writer
                .write(vec![
                    Message::new(&stream, "warm-up").with_header(WARM_UP, "1")
                ])
                .await?;
            tokio::select! {
                _ = tally.warm.cancelled() => {}
                _ = stop.cancelled() => return Err("interrupted".into()),
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }

        let payload = Bytes::from((0..args.size).map(|i| (i % 251) as u8).collect::<Vec<_>>());
        let batch = match args.rate {
            // At most a millisecond's worth per batch, so the pace is steady.
            Some(rate) => args
                .batch
                .clamp(1, usize::try_from(rate / 1000).unwrap_or(1).max(1)),
            None => args.batch.max(1),
        };
        let start = Instant::now();
        let mut window = WriteWindow::new(writer.clone(), args.inflight);
        for first in (0..count).step_by(batch) {
            let last = (first + batch).min(count);
            if let Some(rate) = args.rate {
                // Batch `first` is due `first / rate` seconds after the start.
                let due = start + Duration::from_secs_f64(first as f64 / rate as f64);
                tokio::time::sleep_until(due.into()).await;
            }
            let sent = now_ns().to_string();
            let msgs: Vec<Message> = (first..last)
                .map(|seq| {
                    Message::new(&stream, payload.clone())
                        .with_key(format!("k{}", seq % 64))
                        .with_header(SEQ, seq.to_string())
                        .with_header(SENT, sent.clone())
                })
                .collect();
            window.write(msgs).await?;
            published_bar.inc((last - first) as u64);
        }
        window.flush().await?;
        let publish_secs = start.elapsed().as_secs_f64();
        published_bar.finish();
        tokio::select! {
            _ = tally.all.cancelled() => {}
            _ = stop.cancelled() => {}
            _ = tokio::time::sleep(args.timeout) => {}
        }
        Ok((publish_secs, start))
    }
    .await;

    finish.cancel();
    let read = reading.await.map_err(|e| format!("reader task: {e}"))?;
    consumed_bar.set_position(tally.received.load(Ordering::SeqCst));
    consumed_bar.finish();
    if created && !args.keep {
        if let Err(e) = conn.delete_stream(&stream).await {
            tracing::warn!(%stream, error = %e, "could not delete the bench stream");
        }
    }
    let (publish_secs, start) = outcome?;
    read?;

    let received = tally.received.load(Ordering::SeqCst);
    let mut lat: Vec<u64> = tally
        .seen
        .iter()
        .zip(&tally.latencies_us)
        .filter(|(seen, _)| seen.load(Ordering::SeqCst))
        .map(|(_, l)| l.load(Ordering::Relaxed))
        .collect();
    let last_at = tally.epoch + Duration::from_nanos(tally.last_at_ns.load(Ordering::SeqCst));
    let consume_secs = if received == 0 {
        0.0
    } else {
        last_at.saturating_duration_since(start).as_secs_f64()
    };
    lat.sort_unstable();
    let report = BenchReport {
        platform: conn.platform().to_owned(),
        stream,
        published: args.count,
        size: args.size,
        rate: args.rate,
        publish_secs,
        received,
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        consume_secs,
        latency: Latency {
            p50_us: quantile(&lat, 0.50),
            p90_us: quantile(&lat, 0.90),
            p99_us: quantile(&lat, 0.99),
            p999_us: quantile(&lat, 0.999),
            max_us: lat.last().copied().unwrap_or(0),
        },
    };
    if received < args.count {
        return Err(format!(
            "{} of {} messages did not arrive within {}\n{}",
            args.count - received,
            args.count,
            humantime::format_duration(args.timeout),
            report.render()
        )
        .into());
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_and_formatting() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(quantile(&v, 0.5), 500);
        assert_eq!(quantile(&v, 0.99), 990);
        assert_eq!(quantile(&v, 0.999), 999);
        assert_eq!(quantile(&[], 0.5), 0);
        assert_eq!(thousands(1_234_567.4), "1,234,567");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(micros(1_500), "1.50 ms");
        assert_eq!(micros(42), "42 µs");
    }
}
