//! Relay figures against the local PostgreSQL (not a timed test): throughput from the
//! outbox to the in-process bus with 1, 10 and 100 messages per row, and latency from
//! commit to handler with `NOTIFY` wake-ups versus polling only.
//!
//! Run: `cargo bench -p streams-sql --bench relay` (`STREAMS_POSTGRES_URL` picks the
//! database; `RELAY_BENCH_ROWS` scales the throughput runs).

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use streams_chanbuf::MemoryBus;
use streams_core::Relay;
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader};
use streams_sql::{PgNotifications, PgOutbox, PgOutboxStore};
use tokio::sync::{mpsc, Notify};

const STREAM: &str = "bench.payments";

type Res<T> = Result<T, BoxError>;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Res<()> {
    let url = std::env::var("STREAMS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let pool = PgPoolOptions::new()
        .max_connections(8)
        .connect(&url)
        .await?;
    let rows_1: usize = std::env::var("RELAY_BENCH_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);

    println!("relay throughput, PostgreSQL -> in-process bus (claims of 500 rows)");
    for (per_row, rows) in [(1, rows_1), (10, rows_1 / 4), (100, rows_1 / 10)] {
        throughput(&pool, per_row, rows.max(1)).await?;
    }

    println!("commit-to-handler latency, one row of one message at a time");
    latency(&pool, true, 300).await?;
    latency(&pool, false, 150).await?;
    Ok(())
}

fn table_name(what: &str) -> String {
    format!("bench_{what}_{:08x}", fastrand::u32(..))
}

/// A bus with one subscriber on [`STREAM`] calling `on_message`.
async fn bus_with_subscriber(
    cancel: &CancellationToken,
    on_message: impl Fn(Message) + Send + Sync + Clone + 'static,
) -> Arc<MemoryBus> {
    let bus = Arc::new(MemoryBus::builder().with_queue_depth(4096).build());
    let h = handler(tower::service_fn(move |m: Message| {
        on_message(m);
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let reader = bus.clone();
    let c = cancel.clone();
    tokio::spawn(async move { reader.read(ReadTask::new(STREAM), h, c).await });
    while bus.subscribers(STREAM) == 0 {
        tokio::task::yield_now().await;
    }
    bus
}

async fn throughput(pool: &PgPool, per_row: usize, rows: usize) -> Res<()> {
    let table = table_name("tp");
    let outbox = PgOutbox::new(&table)?.without_notify();
    outbox.migrate(pool).await?;
    // Filled before the clock starts, 500 rows per transaction.
    let mut written = 0;
    while written < rows {
        let mut tx = pool.begin().await?;
        for _ in 0..500.min(rows - written) {
            let batch: Vec<Message> = (0..per_row)
                .map(|i| Message::new(STREAM, vec![b'x'; 64]).with_key(format!("k{}", i % 8)))
                .collect();
            outbox.write(&mut tx, &batch).await?;
            written += 1;
        }
        tx.commit().await?;
    }

    let total = rows * per_row;
    let cancel = CancellationToken::new();
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let bus = {
        let (count, done) = (count.clone(), done.clone());
        bus_with_subscriber(&cancel, move |_| {
            if count.fetch_add(1, Ordering::Relaxed) + 1 == total {
                done.notify_one();
            }
        })
        .await
    };
    let storage = PgOutboxStore::new(pool.clone(), &table)?;
    let started = Instant::now();
    let relay = Relay::new(Arc::new(storage), bus)
        .with_fetch_limit(500)
        .with_poll_interval(Duration::from_millis(10))
        .spawn(cancel.clone());
    done.notified().await;
    let elapsed = started.elapsed();
    cancel.cancel();
    relay.await??;
    let secs = elapsed.as_secs_f64();
    println!(
        "  {per_row:>3} msg/row: {rows:>6} rows, {total:>7} msgs in {:>6.2} s = {:>8.0} rows/s, {:>9.0} msgs/s",
        secs,
        rows as f64 / secs,
        total as f64 / secs
    );
    drop_tables(pool, &table).await
}

async fn latency(pool: &PgPool, notify: bool, samples: usize) -> Res<()> {
    let table = table_name("lat");
    let outbox = PgOutbox::new(&table)?;
    outbox.migrate(pool).await?;
    let cancel = CancellationToken::new();
    let (tx_seen, mut seen) = mpsc::unbounded_channel::<Instant>();
    let bus = bus_with_subscriber(&cancel, move |_| {
        let _ = tx_seen.send(Instant::now());
    })
    .await;
    let poll = Duration::from_millis(100);
    let storage = PgOutboxStore::new(pool.clone(), &table)?;
    let mut relay = Relay::new(Arc::new(storage), bus).with_poll_interval(poll);
    if notify {
        relay = relay.with_wake_source(PgNotifications::new(pool.clone(), &table)?);
    }
    let running = relay.spawn(cancel.clone());

    // Warm up (and let the listener connect) before measuring.
    for _ in 0..5 {
        let mut tx = pool.begin().await?;
        outbox
            .write(&mut tx, &[Message::new(STREAM, "warm")])
            .await?;
        tx.commit().await?;
        seen.recv().await.ok_or("bus stopped")?;
    }
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        // A random gap so commits do not line up with the poll timer.
        tokio::time::sleep(Duration::from_millis(fastrand::u64(0..50))).await;
        let mut tx = pool.begin().await?;
        outbox.write(&mut tx, &[Message::new(STREAM, "x")]).await?;
        let committed = Instant::now();
        tx.commit().await?;
        let handled = seen.recv().await.ok_or("bus stopped")?;
        lat.push(handled.saturating_duration_since(committed));
    }
    cancel.cancel();
    running.await??;
    lat.sort();
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    println!(
        "  {:<28} p50 {:>7.2} ms  p99 {:>7.2} ms  max {:>7.2} ms ({samples} samples)",
        if notify {
            "LISTEN/NOTIFY (+100 ms poll):".to_owned()
        } else {
            format!("polling every {} ms only:", poll.as_millis())
        },
        ms(pct(0.50)),
        ms(pct(0.99)),
        ms(*lat.last().unwrap_or(&Duration::ZERO)),
    );
    drop_tables(pool, &table).await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

async fn drop_tables(pool: &PgPool, table: &str) -> Res<()> {
    for suffix in ["", "_quarantine"] {
        sqlx::query(&format!("DROP TABLE IF EXISTS {table}{suffix}"))
            .execute(pool)
            .await?;
    }
    Ok(())
}
