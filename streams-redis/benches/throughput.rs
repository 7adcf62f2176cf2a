//! Redis Streams writer and reader throughput next to raw `redis` loops doing the same
//! work with the same batch size, in the same run against the same server
//! (`STREAMS_REDIS_URL`, default `redis://127.0.0.1:6379`).
//!
//! Run with `cargo bench -p streams-redis --bench throughput`. `MESSAGES` (default
//! 100000), `SIZE` (default 256 bytes), `BATCH` (default 64: entries per `XADD`
//! pipeline and per `XREADGROUP`) and `ROUNDS` (default 2) set the run; who goes first
//! alternates between rounds. Every case uses a fresh stream. Prints figures and
//! ratios; asserts nothing. Under `cargo test` it runs a small smoke pass.
//!
//! - publish: raw pipelines of `XADD` with the same fields (id, key, content type,
//!   time, data); the driver `RedisWriter::write` with batches of `BATCH`.
//! - consume: a consumer group read from the start; raw `XREADGROUP COUNT BATCH`, reads
//!   each entry's payload and id, and sends one `XACK` for the batch in the same
//!   pipeline as the next `XREADGROUP`; the driver a
//!   `RedisReader` task (one handler at a time, `with_batch(BATCH)`) whose handler counts.

#![allow(missing_docs, clippy::print_stdout)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_redis::{RedisClient, RedisConfig, RedisReader, RedisWriter};
use tokio::sync::Notify;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn messages(stream: &str, n: usize, size: usize) -> Vec<Message> {
    let payload = bytes::Bytes::from(vec![b'x'; size]);
    (0..n)
        .map(|_| {
            Message::new(stream, payload.clone())
                .with_key("customer-7")
                .with_content_type("application/json")
        })
        .collect()
}

async fn raw_publish(c: &RedisClient, stream: &str, batch: Vec<Message>, per: usize) -> Duration {
    let mut conn = c.connection();
    let started = Instant::now();
    for chunk in batch.chunks(per) {
        let mut pipe = redis::pipe();
        for m in chunk {
            pipe.cmd("XADD")
                .arg(stream)
                .arg("*")
                .arg("id")
                .arg(&m.id)
                .arg("key")
                .arg("customer-7")
                .arg("content-type")
                .arg("application/json")
                .arg("time")
                .arg(m.time.to_rfc3339_opts(chrono::SecondsFormat::Nanos, true))
                .arg("data")
                .arg(m.data.as_ref());
        }
        let _: Vec<redis::Value> = pipe.query_async(&mut conn).await.expect("XADD");
    }
    started.elapsed()
}

async fn driver_publish(c: &RedisClient, batch: Vec<Message>, per: usize) -> Duration {
    let writer = RedisWriter::new(c.clone());
    let started = Instant::now();
    let mut batch = batch.into_iter().peekable();
    while batch.peek().is_some() {
        writer
            .write(batch.by_ref().take(per).collect())
            .await
            .expect("write");
    }
    started.elapsed()
}

async fn raw_consume(c: &RedisClient, stream: &str, n: usize, per: usize) -> Duration {
    let mut conn = c.connection();
    let _: () = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(stream)
        .arg("raw")
        .arg("0")
        .query_async(&mut conn)
        .await
        .expect("group");
    let started = Instant::now();
    let mut seen = 0;
    let mut acks: Vec<String> = Vec::new();
    while seen < n {
        // The last batch's XACK and the next XREADGROUP in one round trip.
        let mut pipe = redis::pipe();
        if !acks.is_empty() {
            pipe.cmd("XACK").arg(stream).arg("raw").arg(&acks).ignore();
        }
        pipe.cmd("XREADGROUP")
            .arg("GROUP")
            .arg("raw")
            .arg("c1")
            .arg("COUNT")
            .arg(per)
            .arg("BLOCK")
            .arg(2000)
            .arg("STREAMS")
            .arg(stream)
            .arg(">");
        let (reply,): (redis::streams::StreamReadReply,) = pipe
            .query_async(&mut conn)
            .await
            .expect("XACK + XREADGROUP");
        acks.clear();
        for key in reply.keys {
            for entry in key.ids {
                let data = entry.map.get("data").cloned();
                let id = entry.map.get("id").cloned();
                std::hint::black_box((data, id));
                acks.push(entry.id);
            }
        }
        seen += acks.len();
    }
    let _: i64 = redis::cmd("XACK")
        .arg(stream)
        .arg("raw")
        .arg(&acks)
        .query_async(&mut conn)
        .await
        .expect("XACK");
    started.elapsed()
}

async fn driver_consume(c: &RedisClient, stream: &str, n: usize) -> Duration {
    let count = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(Notify::new());
    let (k, d) = (count.clone(), done.clone());
    let h = handler(tower::service_fn(move |m: Message| {
        std::hint::black_box(m.data.len());
        if k.fetch_add(1, Ordering::Relaxed) + 1 == n {
            d.notify_one();
        }
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let cancel = CancellationToken::new();
    let sub = RedisReader::new(c.clone())
        .subscribe(ReadTask::new(stream).with_group("driver"))
        .await
        .expect("subscribe");
    let started = Instant::now();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    done.notified().await;
    let took = started.elapsed();
    cancel.cancel();
    run.await.expect("join").expect("run");
    took
}

fn rate(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let smoke = std::env::args().all(|a| a != "--bench");
    let n = if smoke {
        500
    } else {
        env_usize("MESSAGES", 100_000)
    };
    let size = env_usize("SIZE", 256);
    let per = env_usize("BATCH", 64);
    let rounds = if smoke { 1 } else { env_usize("ROUNDS", 2) };
    let url =
        std::env::var("STREAMS_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let c = RedisClient::connect(RedisConfig::new(url).with_batch(per))
        .await
        .expect("Redis");
    println!("redis throughput: {n} messages of {size} bytes, batch {per}");
    for round in 1..=rounds {
        let raw = format!("bench-raw-{}", uuid::Uuid::new_v4().simple());
        let drv = format!("bench-driver-{}", uuid::Uuid::new_v4().simple());
        let (pub_raw, pub_drv, con_raw, con_drv) = if round % 2 == 1 {
            let a = raw_publish(&c, &raw, messages(&raw, n, size), per).await;
            let b = driver_publish(&c, messages(&drv, n, size), per).await;
            let x = raw_consume(&c, &raw, n, per).await;
            let y = driver_consume(&c, &drv, n).await;
            (a, b, x, y)
        } else {
            let b = driver_publish(&c, messages(&drv, n, size), per).await;
            let a = raw_publish(&c, &raw, messages(&raw, n, size), per).await;
            let y = driver_consume(&c, &drv, n).await;
            let x = raw_consume(&c, &raw, n, per).await;
            (a, b, x, y)
        };
        let (pr, pd) = (rate(n, pub_raw), rate(n, pub_drv));
        let (cr, cd) = (rate(n, con_raw), rate(n, con_drv));
        println!(
            "round {round}: publish raw {pr:>9.0} msg/s  streams {pd:>9.0} msg/s  ratio {:.2}",
            pd / pr
        );
        println!(
            "round {round}: consume raw {cr:>9.0} msg/s  streams {cd:>9.0} msg/s  ratio {:.2}",
            cd / cr
        );
        let mut conn = c.connection();
        let _: i64 = redis::cmd("DEL")
            .arg(&raw)
            .arg(&drv)
            .query_async(&mut conn)
            .await
            .expect("DEL");
    }
}
