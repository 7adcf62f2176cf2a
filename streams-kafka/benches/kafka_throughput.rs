//! Kafka produce and consume throughput through the streams Writer and Reader, next to
//! raw rdkafka (`FutureProducer`, `StreamConsumer`) doing the same work against the same
//! broker in the same run, with client CPU time per message.
//!
//! Run with a broker on `STREAMS_KAFKA_BROKERS` (default `localhost:9092`):
//! `cargo bench -p streams-kafka --bench kafka_throughput`. `MESSAGES` sets the count
//! (default 100,000), payloads are 256 bytes. Prints figures; asserts nothing.
//!
//! `FILL=<topic>` only writes `MESSAGES` to a new topic; `CASE=streams|raw|raw-decode
//! TOPIC=<topic>` only runs that consumer on it, so that `valgrind` can count one
//! consumer's instructions and allocations (run two counts and take the difference per
//! message: the README shows the commands).

#![allow(missing_docs, clippy::print_stdout, clippy::print_stderr)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::future::join_all;
use futures::stream::StreamExt as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::Message as _;
use streams_core::{
    handler, BoxError, CancellationToken, Message, ReadTask, Reader, WriteWindow, Writer,
};
use streams_kafka::{create_topic, KafkaConfig, KafkaReader, KafkaWriter};
use tokio::sync::Notify;

const PAYLOAD: usize = 256;
const BATCH: usize = 1000;

/// Process CPU time (all threads, librdkafka's included) from /proc/self/stat.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line; 12 and 13 after the ')'.
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

struct Figures {
    elapsed: Duration,
    cpu: Duration,
}

impl Figures {
    fn rate(&self, n: usize) -> f64 {
        n as f64 / self.elapsed.as_secs_f64()
    }
}

fn messages(topic: &str, n: usize) -> Vec<Message> {
    let payload = Bytes::from(vec![b'x'; PAYLOAD]);
    (0..n)
        .map(|i| {
            Message::new(topic, payload.clone())
                .with_key(format!("key-{}", i % 64))
                .with_content_type("application/octet-stream")
        })
        .collect()
}

/// Batches (of `BATCH`) in flight in both producers: the same window of 8,000 messages.
const WINDOW: usize = 8;

async fn produce_streams(config: &KafkaConfig, topic: &str, n: usize) -> Figures {
    let writer: Arc<dyn Writer> = Arc::new(KafkaWriter::new(config).expect("writer"));
    // The first write waits for the connection and the topic's metadata: not measured.
    writer.write(messages(topic, 1)).await.expect("warm-up");
    let all = messages(topic, n);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    let mut window = WriteWindow::new(writer, WINDOW);
    for chunk in all.chunks(BATCH) {
        window.write(chunk.to_vec()).await.expect("write");
    }
    window.flush().await.expect("write");
    Figures {
        elapsed: t0.elapsed(),
        cpu: cpu_time() - cpu0,
    }
}

/// Sends one message as a streams record, by hand.
fn send_raw<'a>(
    producer: &'a FutureProducer,
    topic: &'a str,
    m: &'a Message,
) -> impl std::future::Future<Output = rdkafka::producer::future_producer::OwnedDeliveryResult> + 'a
{
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "message_id",
            value: Some(m.id.as_str()),
        })
        .insert(Header {
            key: "content_type",
            value: Some(m.content_type.as_str()),
        });
    let record = FutureRecord::to(topic)
        .payload(&m.data[..])
        .key(m.key.as_deref().unwrap_or_default())
        .timestamp(m.time.timestamp_millis())
        .headers(headers);
    producer.send(record, Timeout::Never)
}

/// The best raw loop: `WINDOW` chunks of `BATCH` records in flight, every delivery
/// report awaited, with the streams record layout (id and content type headers).
async fn produce_raw(config: &KafkaConfig, topic: &str, n: usize) -> Figures {
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.bootstrap_servers())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let warm = messages(topic, 1);
    send_raw(&producer, topic, &warm[0]).await.expect("warm-up");
    let all = messages(topic, n);
    let (cpu0, t0) = (cpu_time(), Instant::now());
    // `WINDOW` chunks of `BATCH` in flight, each awaited as a whole: as the writer does.
    futures::stream::iter(all.chunks(BATCH))
        .map(|chunk| join_all(chunk.iter().map(|m| send_raw(&producer, topic, m))))
        .buffer_unordered(WINDOW)
        .for_each(|results| async move {
            for r in results {
                r.expect("delivery");
            }
        })
        .await;
    Figures {
        elapsed: t0.elapsed(),
        cpu: cpu_time() - cpu0,
    }
}

/// Consumes `n` messages with a new group; time runs from the first message to the last,
/// so group joining is not counted.
async fn consume_streams(config: &KafkaConfig, topic: &str, n: usize) -> Figures {
    let reader = Arc::new(KafkaReader::new(config.clone()));
    let seen = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(Notify::new());
    let done = Arc::new(Notify::new());
    let (s, f, d) = (seen.clone(), first.clone(), done.clone());
    let h = handler(tower::service_fn(move |m: Message| {
        std::hint::black_box(&m);
        let k = s.fetch_add(1, Ordering::Relaxed) + 1;
        if k == 1 {
            f.notify_one();
        }
        if k == n {
            d.notify_one();
        }
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let cancel = CancellationToken::new();
    let task = ReadTask::new(topic).with_group(format!("bench-streams-{}", uuid()));
    let c = cancel.clone();
    let join = tokio::spawn(async move { reader.read(task, h, c).await });
    first.notified().await;
    let (cpu0, t0) = (cpu_time(), Instant::now());
    done.notified().await;
    let figures = Figures {
        elapsed: t0.elapsed(),
        cpu: cpu_time() - cpu0,
    };
    cancel.cancel();
    join.await.expect("join").expect("read");
    figures
}

/// Builds the `Message` the Go layout describes from a record by hand: what any
/// application reading streams records with raw rdkafka has to do.
fn decode_by_hand(m: &rdkafka::message::BorrowedMessage<'_>) -> Message {
    use rdkafka::message::Headers as _;
    let mut id = String::new();
    let mut content_type = String::new();
    let mut headers = streams_core::Headers::new();
    if let Some(hs) = m.headers() {
        for h in hs.iter() {
            let v = String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned();
            match h.key {
                "message_id" => id = v,
                "content_type" => content_type = v,
                k => {
                    headers.insert(k.to_owned(), v);
                }
            }
        }
    }
    Message {
        id,
        stream: m.topic().to_owned(),
        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
        headers,
        metadata: Default::default(),
        content_type,
        data: Bytes::copy_from_slice(m.payload().unwrap_or_default()),
        time: chrono::DateTime::from_timestamp_millis(m.timestamp().to_millis().unwrap_or(0))
            .unwrap_or_default(),
    }
}

async fn consume_raw(config: &KafkaConfig, topic: &str, n: usize, decode: bool) -> Figures {
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.bootstrap_servers())
        .set("group.id", format!("bench-raw-{}", uuid()))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("enable.auto.offset.store", "false")
        .set("session.timeout.ms", "6000")
        // As the streams reader does by default.
        .set("fetch.wait.max.ms", "10")
        .create()
        .expect("consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut t0 = None;
    let mut cpu0 = Duration::ZERO;
    for k in 0..n {
        let m = consumer.recv().await.expect("recv");
        if k == 0 {
            t0 = Some(Instant::now());
            cpu0 = cpu_time();
        }
        // At least once, as the streams reader: take the payload (or the whole message)
        // out, then store the offset.
        if decode {
            std::hint::black_box(decode_by_hand(&m));
        } else {
            std::hint::black_box(Bytes::copy_from_slice(m.payload().unwrap_or_default()));
        }
        // The cheapest store librdkafka offers: from the message itself, no partition
        // list built.
        consumer.store_offset_from_message(&m).expect("store");
    }
    let figures = Figures {
        elapsed: t0.expect("received").elapsed(),
        cpu: cpu_time() - cpu0,
    };
    let _ = consumer.commit_consumer_state(CommitMode::Sync);
    figures
}

fn uuid() -> String {
    streams_core::IdFactory::new_id(&streams_core::UuidFactory)
}

fn row(what: &str, n: usize, ours: &Figures, raw: &Figures) {
    let mb = |f: &Figures| f.rate(n) * PAYLOAD as f64 / 1e6;
    let cpu = |f: &Figures| f.cpu.as_secs_f64() * 1e6 / n as f64;
    println!(
        "{what:<8} {:>12.0} {:>12.0} {:>6.2} | {:>8.1} {:>8.1} | {:>9.2} {:>9.2} {:>6.2}",
        ours.rate(n),
        raw.rate(n),
        ours.rate(n) / raw.rate(n),
        mb(ours),
        mb(raw),
        cpu(ours),
        cpu(raw),
        if cpu(raw) > 0.0 {
            cpu(ours) / cpu(raw)
        } else {
            f64::NAN
        },
    );
}

fn main() {
    let n: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let config = KafkaConfig::from_env().with_property("session.timeout.ms", "6000");
        println!(
            "kafka at {}, {n} messages of {PAYLOAD} bytes per case, best of 2",
            config.bootstrap_servers()
        );
        println!(
            "{:<8} {:>12} {:>12} {:>6} | {:>8} {:>8} | {:>9} {:>9} {:>6}",
            "", "streams/s", "raw/s", "ratio", "MB/s", "raw MB/s", "cpu us/m", "raw us/m", "ratio"
        );
        let mut best: [Option<Figures>; 5] = [None, None, None, None, None];
        let keep = |slot: &mut Option<Figures>, f: Figures| {
            if slot.as_ref().is_none_or(|b| f.elapsed < b.elapsed) {
                *slot = Some(f);
            }
        };
        // FILL=topic creates the topic and writes `n` messages to it; CASE=streams, raw or
        // raw-decode with TOPIC=topic then runs that one consumer on it, for counting
        // instructions and allocations per message under valgrind (see the README).
        if let Ok(topic) = std::env::var("FILL") {
            create_topic(&config, &topic, 3, 1).await.expect("topic");
            produce_raw(&config, &topic, n).await;
            println!("{topic}: {n} messages written");
            return;
        }
        if let (Ok(case), Ok(topic)) = (std::env::var("CASE"), std::env::var("TOPIC")) {
            let f = match case.as_str() {
                "streams" => consume_streams(&config, &topic, n).await,
                "raw" => consume_raw(&config, &topic, n, false).await,
                "raw-decode" => consume_raw(&config, &topic, n, true).await,
                other => panic!("CASE={other}: streams, raw or raw-decode"),
            };
            println!("{case}: {n} messages consumed at {:.0}/s", f.rate(n));
            return;
        }
        // PHASE=consume measures only the consumers (for profiling them).
        let consume_only = std::env::var("PHASE").is_ok_and(|p| p == "consume");
        for round in 0..2 {
            let topic = format!("bench-{}-{round}", uuid());
            if consume_only {
                create_topic(&config, &topic, 3, 1).await.expect("topic");
                produce_raw(&config, &topic, n).await;
                keep(&mut best[2], consume_streams(&config, &topic, n).await);
                keep(&mut best[3], consume_raw(&config, &topic, n, false).await);
                keep(&mut best[4], consume_raw(&config, &topic, n, true).await);
                continue;
            }
            create_topic(&config, &topic, 3, 1).await.expect("topic");
            let raw_topic = format!("{topic}-raw");
            create_topic(&config, &raw_topic, 3, 1)
                .await
                .expect("topic");
            eprintln!("round {round}: produce through streams");
            keep(&mut best[0], produce_streams(&config, &topic, n).await);
            eprintln!("round {round}: produce through raw rdkafka");
            keep(&mut best[1], produce_raw(&config, &raw_topic, n).await);
            // Both consumers read the same topic, so they see the same records.
            eprintln!("round {round}: consume through streams");
            keep(&mut best[2], consume_streams(&config, &topic, n).await);
            eprintln!("round {round}: consume through raw rdkafka");
            keep(&mut best[3], consume_raw(&config, &topic, n, false).await);
            eprintln!("round {round}: consume through raw rdkafka, decoding messages by hand");
            keep(&mut best[4], consume_raw(&config, &topic, n, true).await);
        }
        let [p, pr, c, cr, cd] = best;
        if let (Some(p), Some(pr)) = (p, pr) {
            row("produce", n, &p, &pr);
        }
        let c = c.expect("measured");
        row("consume", n, &c, &cr.expect("measured"));
        // Against raw rdkafka that also builds the message (id, key, headers, payload,
        // time) from each record: the reader's own overhead.
        row("consume*", n, &c, &cd.expect("measured"));
    });
}
