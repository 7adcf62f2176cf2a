//! Publish-to-handler throughput of the in-process bus next to a raw tokio mpsc channel
//! carrying the same `Message`s in the same run, and of the bus behind the observed
//! decorators `streams::connect` adds (no tracing subscriber, no metrics recorder).
//!
//! Run with `cargo bench -p streams-chanbuf --bench throughput`. Set `MESSAGES` to change
//! the number of messages per case (default 500,000). Prints figures; asserts nothing.

#![allow(missing_docs, clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use streams_chanbuf::MemoryBus;
use streams_core::{
    handler, BoxError, CancellationToken, Message, ObservedReader, ObservedWriter, ReadTask,
    Reader, Writer,
};
use tokio::sync::{mpsc, Notify};

const CAPACITY: usize = 1024;
/// Messages per `write` call on the bus side (and per loop turn on the raw side).
const BATCH: usize = 64;

fn make(stream: &str, payload: &Bytes, n: usize) -> Vec<Message> {
    (0..n)
        .map(|i| {
            Message::new(stream, payload.clone()).with_key(if i % 2 == 0 { "even" } else { "odd" })
        })
        .collect()
}

/// Each subscriber counts; the last message of the last subscriber wakes the publisher.
fn counter(total: usize, seen: Arc<AtomicUsize>, done: Arc<Notify>) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        std::hint::black_box(&m);
        if seen.fetch_add(1, Ordering::Relaxed) + 1 == total {
            done.notify_one();
        }
        std::future::ready(Ok::<_, BoxError>(()))
    }))
}

/// Through the bus, or with `observed` through `ObservedWriter`/`ObservedReader` around
/// it (what `streams::connect` returns), with no tracing subscriber and no metrics
/// recorder installed.
async fn bus_case(subscribers: usize, payload: &Bytes, n: usize, observed: bool) -> Duration {
    let bus = Arc::new(MemoryBus::builder().with_queue_depth(CAPACITY).build());
    let (writer, reader): (Arc<dyn Writer>, Arc<dyn Reader>) = if observed {
        (
            Arc::new(ObservedWriter::new(bus.clone())),
            Arc::new(ObservedReader::new(bus.clone())),
        )
    } else {
        (bus.clone(), bus.clone())
    };
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let cancel = CancellationToken::new();
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let h = counter(n * subscribers, seen.clone(), done.clone());
        let (reader, cancel) = (reader.clone(), cancel.clone());
        readers.push(tokio::spawn(async move {
            reader.read(ReadTask::new("bench"), h, cancel).await
        }));
    }
    while bus.subscribers("bench") < subscribers {
        tokio::task::yield_now().await;
    }
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        writer
            .write(make("bench", payload, k))
            .await
            .expect("write");
        left -= k;
    }
    done.notified().await;
    let elapsed = started.elapsed();
    cancel.cancel();
    for r in readers {
        r.await.expect("join").expect("read");
    }
    elapsed
}

async fn raw_case(subscribers: usize, payload: &Bytes, n: usize) -> Duration {
    let seen = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let total = n * subscribers;
    let mut senders = Vec::new();
    let mut consumers = Vec::new();
    for _ in 0..subscribers {
        let (tx, mut rx) = mpsc::channel::<Message>(CAPACITY);
        senders.push(tx);
        let (seen, done) = (seen.clone(), done.clone());
        consumers.push(tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                std::hint::black_box(&m);
                if seen.fetch_add(1, Ordering::Relaxed) + 1 == total {
                    done.notify_one();
                }
            }
        }));
    }
    let started = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(BATCH);
        for m in make("bench", payload, k) {
            let (last, rest) = senders.split_last().expect("one subscriber");
            for tx in rest {
                tx.send(m.clone()).await.expect("send");
            }
            last.send(m).await.expect("send");
        }
        left -= k;
    }
    done.notified().await;
    let elapsed = started.elapsed();
    drop(senders);
    for c in consumers {
        c.await.expect("join");
    }
    elapsed
}

fn main() {
    let n: usize = std::env::var("MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(500_000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    println!("in-process bus vs raw tokio mpsc, {n} messages per case, publish to handler");
    println!(
        "{:>11} {:>8} {:>15} {:>15} {:>7} | {:>15} {:>13}",
        "subscribers",
        "payload",
        "bus msg/s",
        "raw mpsc msg/s",
        "ratio",
        "observed msg/s",
        "bus/observed"
    );
    rt.block_on(async {
        // Warm up allocator and runtime.
        bus_case(1, &Bytes::from(vec![0u8; 16]), 20_000, false).await;
        bus_case(1, &Bytes::from(vec![0u8; 16]), 20_000, true).await;
        raw_case(1, &Bytes::from(vec![0u8; 16]), 20_000).await;
        for subscribers in [1, 4] {
            for size in [16, 256, 4096] {
                let payload = Bytes::from(vec![7u8; size]);
                // Best of three, alternating, so both sides see the same machine state.
                let mut bus = Duration::MAX;
                let mut raw = Duration::MAX;
                let mut observed = Duration::MAX;
                for _ in 0..3 {
                    bus = bus.min(bus_case(subscribers, &payload, n, false).await);
                    raw = raw.min(raw_case(subscribers, &payload, n).await);
                    observed = observed.min(bus_case(subscribers, &payload, n, true).await);
                }
                let delivered = (n * subscribers) as f64;
                let bus_rate = delivered / bus.as_secs_f64();
                let raw_rate = delivered / raw.as_secs_f64();
                let observed_rate = delivered / observed.as_secs_f64();
                println!(
                    "{subscribers:>11} {size:>8} {bus_rate:>15.0} {raw_rate:>15.0} {:>7.2} | {observed_rate:>15.0} {:>13.2}",
                    bus_rate / raw_rate,
                    bus_rate / observed_rate,
                );
            }
        }
    });
}
