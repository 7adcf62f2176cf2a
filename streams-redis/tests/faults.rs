//! The server fails under a running writer and reader: it is killed and started again
//! with its append-only file (a crash), or frozen and resumed (a network partition:
//! connections stay open, nothing answers). No acknowledged entry is lost, the reader
//! keeps running, and a write that cannot complete fails with one retryable line within
//! the response timeout.
//!
//! Each test has a server of its own (streams-testkit's `PrivateServer`): a container with
//! `STREAMS_CONTAINERS=1`, else `redis-server` from `STREAMS_REDIS_SERVER_BIN` or the PATH.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_redis::{RedisClient, RedisConfig, RedisReader, RedisWriter};
use streams_testkit::{Native, PrivateServer, Service};

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

/// Every acknowledged write on disk before the acknowledgement, so a killed server keeps it.
const APPEND_ONLY: [&str; 6] = [
    "--appendonly",
    "yes",
    "--appendfsync",
    "always",
    "--save",
    "",
];

/// A server of the test's own, append-only.
async fn server(test: &str) -> PrivateServer {
    let bin = std::env::var("STREAMS_REDIS_SERVER_BIN").unwrap_or_else(|_| "redis-server".into());
    let mut args = vec!["--port", "{port}", "--bind", "127.0.0.1", "--dir", "{dir}"];
    args.extend(APPEND_ONLY);
    PrivateServer::start(
        test,
        Service::Redis,
        &APPEND_ONLY,
        Some(Native::new(bin, &args)),
    )
    .await
    .expect("a native command is given")
}

async fn client(server: &PrivateServer) -> RedisClient {
    RedisClient::connect(
        RedisConfig::new(server.address())
            .with_response_timeout(Duration::from_secs(1))
            .with_connect_timeout(Duration::from_secs(1))
            .with_claim_idle(Duration::from_secs(1))
            .with_block(Duration::from_millis(200)),
    )
    .await
    .expect("Redis")
}

/// A reader in group `g` recording the ids it handled.
async fn record(
    c: &RedisClient,
    stream: &str,
) -> (
    Arc<Mutex<HashSet<String>>>,
    CancellationToken,
    tokio::task::JoinHandle<streams_core::Result<()>>,
) {
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let hd = handled.clone();
    let h = handler(tower::service_fn(move |m: Message| {
        hd.lock().unwrap().insert(m.id);
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let cancel = CancellationToken::new();
    let sub = RedisReader::new(c.clone())
        .subscribe(ReadTask::new(stream).with_group("g"))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    (handled, cancel, run)
}

/// Waits up to a minute for every acknowledged id to be handled; panics naming how many
/// never arrived.
async fn all_arrive(acknowledged: &[String], handled: &Mutex<HashSet<String>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = acknowledged
            .iter()
            .filter(|id| !handled.lock().unwrap().contains(*id))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged entries never arrived",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_with_append_only_loses_nothing_acknowledged() {
    let mut server = server("a_restart_with_append_only_loses_nothing_acknowledged").await;
    let c = client(&server).await;
    let stream = unique("restart");
    let (handled, cancel, run) = record(&c, &stream).await;
    let writer = RedisWriter::new(c.clone());
    let mut acknowledged = Vec::new();
    let mut errors = 0;
    for round in 0..40 {
        if round == 10 {
            server.kill().await;
        }
        if round == 20 {
            server.restart().await;
        }
        let batch: Vec<_> = (0..10)
            .map(|i| Message::new(&stream, format!("{round}-{i}")))
            .collect();
        let started = Instant::now();
        match writer.write(batch.clone()).await {
            Ok(()) => acknowledged.extend(batch.into_iter().map(|m| m.id)),
            Err(e) => {
                assert!(
                    e.is_retryable(),
                    "an error during the restart is retryable: {e}"
                );
                assert!(!e.to_string().contains('\n'), "{e}");
                assert!(
                    started.elapsed() < Duration::from_secs(5),
                    "the write failed within its bound: {:?}",
                    started.elapsed()
                );
                errors += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(errors > 0, "the outage was noticed");
    all_arrive(&acknowledged, &handled).await;
    assert!(
        !run.is_finished(),
        "the reader kept running through the restart"
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fails_writes_within_the_response_timeout_and_loses_nothing() {
    let server = server("a_partition_fails_writes_within_the_response_timeout").await;
    let c = client(&server).await;
    let stream = unique("partition");
    let (handled, cancel, run) = record(&c, &stream).await;
    let writer = RedisWriter::new(c.clone());
    let batch = |tag: &str| -> Vec<Message> {
        (0..10)
            .map(|i| Message::new(&stream, format!("{tag}-{i}")))
            .collect()
    };

    let mut acknowledged = Vec::new();
    let before = batch("before");
    writer.write(before.clone()).await.expect("write before");
    acknowledged.extend(before.into_iter().map(|m| m.id));
    all_arrive(&acknowledged, &handled).await;

    server.freeze(true).await;
    // Every write during the partition fails within the response timeout (1 s), in one
    // retryable line; none hangs.
    for round in 0..3 {
        let started = Instant::now();
        let during = batch(&format!("during{round}"));
        let outcome = tokio::time::timeout(Duration::from_secs(15), writer.write(during)).await;
        let err = outcome
            .expect("the write ends within its bound")
            .expect_err("no server answers during the partition");
        let line = err.to_string();
        assert!(err.is_retryable(), "a partition is transient: {line}");
        assert!(
            !line.contains('\n') && line.starts_with("redis: "),
            "{line}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "failed within its bound: {:?}",
            started.elapsed()
        );
    }
    server.freeze(false).await;

    // Once the partition heals, writes succeed again.
    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..10 {
        let after = batch(&format!("after{round}"));
        loop {
            match writer.write(after.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    assert!(
                        Instant::now() < deadline,
                        "writes still failing a minute after the partition: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        acknowledged.extend(after.into_iter().map(|m| m.id));
    }
    all_arrive(&acknowledged, &handled).await;
    assert!(
        !run.is_finished(),
        "the reader kept running through the partition"
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}
