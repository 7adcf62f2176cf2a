//! The AWS emulator fails under a running writer and reader: it is killed and started
//! again, or frozen and resumed (a network partition: connections stay open, nothing
//! answers). Writes meeting the outage fail with one retryable line within the operation
//! timeout, the reader keeps running, and both resume once the emulator is back: every
//! acknowledged message is handled. The emulator keeps its queues in memory (moto, and
//! LocalStack without persistence), so after a restart the test creates the queue again;
//! a reader that met the missing queue meanwhile has ended in one line naming it, and a
//! new subscription resumes.
//!
//! Each test has an emulator of its own: a container (streams-testkit's `PrivateServer`)
//! with `STREAMS_CONTAINERS=1`. Without containers the tests say so in one line and pass.

mod common;

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_sqs::{SqsClient, SqsReader, SqsWriter};
use streams_testkit::{PrivateServer, Service};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Restart,
    Partition,
}

async fn client(server: &PrivateServer) -> SqsClient {
    SqsClient::builder()
        .with_endpoint(server.address())
        .with_region(common::REGION)
        .with_static_credentials("test", "test")
        .with_connect_timeout(Duration::from_secs(1))
        .with_operation_timeout(Duration::from_secs(2))
        .connect()
        .await
}

/// Waits up to a minute for every acknowledged id to be handled.
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
            "{missing} of {} acknowledged messages never arrived",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn through(fault: Fault, test: &str) {
    let Some(mut server) = PrivateServer::start(test, Service::Aws, &[], None).await else {
        return;
    };
    let c = client(&server).await;
    let stream = common::unique("faults");
    c.create_queue(&stream).await.expect("create queue");
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let hd = handled.clone();
    let h = handler(tower::service_fn(move |m: Message| {
        hd.lock().unwrap().insert(m.id);
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let cancel = CancellationToken::new();
    let reader = SqsReader::builder(c.clone())
        .with_wait_time(Duration::from_secs(1))
        .build();
    let sub = reader
        .subscribe(ReadTask::new(&stream))
        .await
        .expect("subscribe");
    let mut run = tokio::spawn(sub.run(h.clone(), cancel.clone()));
    let writer = SqsWriter::new(c.clone());
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

    match fault {
        Fault::Restart => server.kill().await,
        Fault::Partition => server.freeze(true).await,
    }
    for round in 0..3 {
        let started = Instant::now();
        let outcome = tokio::time::timeout(
            Duration::from_secs(30),
            writer.write(batch(&format!("during{round}"))),
        )
        .await;
        let err = outcome
            .expect("the write ends within its bound")
            .expect_err("no emulator answers during the outage");
        let line = common::assert_one_line(&err);
        assert!(err.is_retryable(), "an outage is transient: {line}");
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "failed within its bound: {:?}: {line}",
            started.elapsed()
        );
    }
    assert!(
        !run.is_finished(),
        "the reader keeps running during the outage"
    );
    match fault {
        Fault::Restart => {
            server.restart().await;
            c.create_queue(&stream).await.expect("create queue again");
            // A reader that polled the restarted emulator before the queue was created
            // again met a deleted queue: that ends a read for good, in one line naming
            // the queue. A new subscription takes over; one that did not poll goes on. A
            // poll that met the deleted queue may still be ending when the queue is back:
            // wait out the reader's long poll (1 s) and more before deciding.
            let settle = Instant::now() + Duration::from_secs(3);
            while !run.is_finished() && Instant::now() < settle {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            if run.is_finished() {
                let err = (&mut run)
                    .await
                    .expect("join")
                    .expect_err("a reader ends only on an error");
                let line = common::assert_one_line(&err);
                assert!(line.contains(&stream) && !err.is_retryable(), "{line}");
                let sub = reader
                    .subscribe(ReadTask::new(&stream))
                    .await
                    .expect("subscribe again");
                run = tokio::spawn(sub.run(h.clone(), cancel.clone()));
            }
        }
        Fault::Partition => server.freeze(false).await,
    }

    let deadline = Instant::now() + Duration::from_secs(60);
    for round in 0..5 {
        let after = batch(&format!("after{round}"));
        loop {
            match writer.write(after.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(e.is_retryable(), "{e}");
                    assert!(
                        Instant::now() < deadline,
                        "writes still failing a minute after the outage: {e}"
                    );
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        acknowledged.extend(after.into_iter().map(|m| m.id));
    }
    all_arrive(&acknowledged, &handled).await;
    assert!(!run.is_finished(), "the reader kept running");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the reader stops when cancelled")
        .expect("join")
        .expect("the reader ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emulator_restart_fails_writes_in_one_line_and_both_sides_resume() {
    through(
        Fault::Restart,
        "emulator_restart_fails_writes_in_one_line_and_both_sides_resume",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_fails_writes_within_the_timeout_and_loses_nothing() {
    through(
        Fault::Partition,
        "partition_fails_writes_within_the_timeout_and_loses_nothing",
    )
    .await;
}
