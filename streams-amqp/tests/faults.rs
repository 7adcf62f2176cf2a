//! The broker fails under a running writer and reader: it is stopped and started again
//! with its data (the quorum queues keep what they confirmed), or frozen and
//! resumed (a network partition: connections stay open, nothing answers). No confirmed
//! message is lost, the reader keeps running, and a write that cannot complete fails with
//! one retryable line within the operation timeout.
//!
//! Each test has a broker of its own: a container (streams-testkit's `PrivateServer`) with
//! `STREAMS_CONTAINERS=1`. Without containers the tests say so in one line and pass (a
//! private native RabbitMQ node is not started here; amqp.rs closes the native broker's
//! connections instead).

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_amqp::{create_stream, AmqpClient, AmqpConfig, AmqpReader, AmqpWriter};
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_testkit::{PrivateServer, Service};

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn client(server: &PrivateServer) -> AmqpClient {
    AmqpClient::connect(
        AmqpConfig::new(server.address())
            .with_connect_timeout(Duration::from_secs(2))
            .with_operation_timeout(Duration::from_secs(2))
            .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(200)),
    )
    .await
    .expect("RabbitMQ")
}

/// A reader in group `g` recording the ids it handled (its queue exists once this returns).
async fn record(
    c: &AmqpClient,
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
    let sub = AmqpReader::new(c.clone())
        .subscribe(ReadTask::new(stream).with_group("g"))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    (handled, cancel, run)
}

/// Waits up to a minute for every confirmed id to be handled; panics naming how many
/// never arrived.
async fn all_arrive(confirmed: &[String], handled: &Mutex<HashSet<String>>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = confirmed
            .iter()
            .filter(|id| !handled.lock().unwrap().contains(*id))
            .count();
        if missing == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} confirmed messages never arrived",
            confirmed.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Writes `batch` until it is confirmed, each failure retryable, one line and within the
/// bound; gives up after a minute.
async fn write_until_confirmed(writer: &AmqpWriter, batch: Vec<Message>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let started = Instant::now();
        match writer.write(batch.clone()).await {
            Ok(()) => return,
            Err(e) => {
                let line = e.to_string();
                assert!(e.is_retryable(), "an outage is transient: {line}");
                assert!(!line.contains('\n') && line.starts_with("amqp: "), "{line}");
                assert!(
                    started.elapsed() < Duration::from_secs(10),
                    "the write failed within its bound: {:?}",
                    started.elapsed()
                );
                assert!(
                    Instant::now() < deadline,
                    "writes still failing after a minute: {line}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_loses_nothing_confirmed() {
    // The broker stops while the writer and reader run.
    let test = "a_broker_restart_loses_nothing_confirmed";
    let Some(mut broker) = PrivateServer::start(test, Service::RabbitMq, &[], None).await else {
        return;
    };
    let c = client(&broker).await;
    let stream = unique("restart");
    create_stream(&c, &stream).await.unwrap();
    let (handled, cancel, run) = record(&c, &stream).await;
    let writer = AmqpWriter::new(c.clone());
    let mut confirmed = Vec::new();
    let mut errors = 0;
    for round in 0..30 {
        if round == 10 {
            // Stopped, not killed: RabbitMQ 3.10 registers a quorum queue in a file it
            // flushes lazily (names.dets), and a node killed within minutes of creating
            // the queue came back without it ("leader not known" for good). Abruptly
            // lost connections are what the reconnect scenario and amqp.rs cover.
            broker.stop(Duration::from_secs(30)).await;
        }
        if round == 15 {
            broker.restart().await;
        }
        let batch: Vec<_> = (0..10)
            .map(|i| Message::new(&stream, format!("{round}-{i}")))
            .collect();
        if (10..15).contains(&round) {
            // The broker is down: the write fails in one retryable line within its bound.
            let started = Instant::now();
            let err = writer
                .write(batch)
                .await
                .expect_err("no broker while it is down");
            assert!(err.is_retryable(), "{err}");
            assert!(!err.to_string().contains('\n'), "{err}");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            errors += 1;
        } else {
            write_until_confirmed(&writer, batch.clone()).await;
            confirmed.extend(batch.into_iter().map(|m| m.id));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(errors > 0, "the outage was noticed");
    all_arrive(&confirmed, &handled).await;
    assert!(
        !run.is_finished(),
        "the reader kept running through the restart"
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_fails_writes_within_the_operation_timeout_and_loses_nothing() {
    let test = "a_partition_fails_writes_within_the_operation_timeout";
    let Some(broker) = PrivateServer::start(test, Service::RabbitMq, &[], None).await else {
        return;
    };
    let c = client(&broker).await;
    let stream = unique("partition");
    create_stream(&c, &stream).await.unwrap();
    let (handled, cancel, run) = record(&c, &stream).await;
    let writer = AmqpWriter::new(c.clone());
    let batch = |tag: &str| -> Vec<Message> {
        (0..10)
            .map(|i| Message::new(&stream, format!("{tag}-{i}")))
            .collect()
    };

    let mut confirmed = Vec::new();
    let before = batch("before");
    writer.write(before.clone()).await.expect("write before");
    confirmed.extend(before.into_iter().map(|m| m.id));
    all_arrive(&confirmed, &handled).await;

    broker.freeze(true).await;
    for round in 0..3 {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(20),
            writer.write(batch(&format!("during{round}"))),
        )
        .await;
        let err = outcome
            .expect("the write ends within its bound")
            .expect_err("no broker answers during the partition");
        let line = err.to_string();
        assert!(err.is_retryable(), "a partition is transient: {line}");
        assert!(!line.contains('\n') && line.starts_with("amqp: "), "{line}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "failed within its bound: {:?}",
            started.elapsed()
        );
    }
    broker.freeze(false).await;

    for round in 0..10 {
        let after = batch(&format!("after{round}"));
        write_until_confirmed(&writer, after.clone()).await;
        confirmed.extend(after.into_iter().map(|m| m.id));
    }
    all_arrive(&confirmed, &handled).await;
    assert!(
        !run.is_finished(),
        "the reader kept running through the partition"
    );
    cancel.cancel();
    run.await.unwrap().unwrap();
}
