//! RabbitMQ against the suite's broker (streams-testkit: a container of this test binary,
//! or the native one): what the conformance suite does not cover. The restart and
//! partition tests are in faults.rs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_amqp::{
    create_stream, delete_stream, AmqpClient, AmqpConfig, AmqpReader, AmqpWriter, HEADER_DELIVERED,
};
use streams_core::{
    handler, BoxError, CancellationToken, Error, Message, ReadTask, Reader, Writer,
};
use streams_testkit::Service;
use tokio::sync::mpsc;

fn url() -> String {
    streams_testkit::amqp_url()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn client() -> AmqpClient {
    client_of(url()).await
}

async fn client_of(url: String) -> AmqpClient {
    AmqpClient::connect(
        AmqpConfig::new(url)
            .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
            .with_operation_timeout(Duration::from_secs(5)),
    )
    .await
    .expect("RabbitMQ")
}

#[tokio::test]
async fn nothing_listening_fails_within_the_connect_timeout() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let started = Instant::now();
    let err = AmqpClient::connect(
        AmqpConfig::new(format!("amqp://guest:guest@127.0.0.1:{port}/%2f"))
            .with_connect_timeout(Duration::from_secs(1)),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    let line = err.to_string();
    assert!(
        err.is_retryable()
            && line.starts_with("amqp: connect failed")
            && line.contains(&port.to_string()),
        "{line}"
    );
    assert!(!line.contains("guest:guest"), "{line}");
    // Refused credentials are not retryable.
    let wrong = url().replacen("guest:guest@", "guest:wrong@", 1);
    assert_ne!(wrong, url(), "the suite's broker takes guest:guest");
    let err = AmqpClient::connect(AmqpConfig::new(wrong))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
}

#[tokio::test]
async fn a_missing_stream_and_an_unroutable_message_are_errors() {
    let c = client().await;
    let missing = unique("missing");
    let err = AmqpReader::new(c.clone())
        .subscribe(ReadTask::new(&missing).with_group("g"))
        .await
        .unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains(&missing),
        "{err}"
    );
    // A stream with no group yet: the broker returns the message.
    let stream = unique("unrouted");
    create_stream(&c, &stream).await.unwrap();
    let err = AmqpWriter::new(c.clone())
        .write(vec![Message::new(&stream, "nobody listens")])
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no queue is bound"), "{err}");
    assert!(!err.is_retryable(), "{err}");
    // Hostile input: a header name AMQP cannot carry.
    let err = AmqpWriter::new(c.clone())
        .write(vec![
            Message::new(&stream, "x").with_header("h".repeat(300), "v")
        ])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Rejected { .. }), "{err}");
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_comes_back_with_the_quorum_delivery_count() {
    let c = client().await;
    let stream = unique("count");
    create_stream(&c, &stream).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = handler(tower::service_fn(move |m: Message| {
        let s = s.clone();
        async move {
            let n: u32 = m.headers[HEADER_DELIVERED].parse().unwrap();
            s.lock().unwrap().push(n);
            if n < 3 {
                Err::<(), BoxError>("not yet".into())
            } else {
                Ok(())
            }
        }
    }));
    let sub = AmqpReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    AmqpWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_eq!(*seen.lock().unwrap(), [1, 2, 3]);
    delete_stream(&c, &stream).await.unwrap();
}

/// The broker closes every client connection (`rabbitmqctl close_all_connections`)
/// while messages are written and read: nothing is lost. The broker is a container of the
/// test's own in container mode (rabbitmqctl runs in it), else the native one (rabbitmqctl
/// from the PATH).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_closed_by_the_broker_lose_nothing() {
    let own = if streams_testkit::containers_enabled() {
        Some(streams_testkit::PrivateService::start(Service::RabbitMq, &[], &[]).await)
    } else {
        None
    };
    let c = match &own {
        Some(broker) => client_of(broker.address()).await,
        None => client().await,
    };
    let stream = unique("closed");
    create_stream(&c, &stream).await.unwrap();
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let hd = handled.clone();
    let (tx, mut rx) = mpsc::unbounded_channel::<()>();
    let h = handler(tower::service_fn(move |m: Message| {
        hd.lock().unwrap().insert(m.id);
        let _ = tx.send(());
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let sub = AmqpReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    let writer = AmqpWriter::new(c.clone());
    let mut sent = Vec::new();
    let mut errors = 0;
    for round in 0..30 {
        if round == 10 {
            let command = ["rabbitmqctl", "close_all_connections", "streams fault test"];
            let said = match &own {
                Some(broker) => broker.exec(&command).await.expect("rabbitmqctl"),
                None => {
                    let out = tokio::process::Command::new(command[0])
                        .args(&command[1..])
                        .output()
                        .await
                        .expect("rabbitmqctl on the PATH");
                    assert!(
                        out.status.success(),
                        "{}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    String::from_utf8_lossy(&out.stdout).into_owned()
                }
            };
            let closed: usize = said
                .split("Closed ")
                .nth(1)
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert!(closed >= 1, "the broker closed our connection: {said}");
        }
        let batch: Vec<_> = (0..10)
            .map(|i| Message::new(&stream, format!("{round}-{i}")))
            .collect();
        loop {
            match writer.write(batch.clone()).await {
                Ok(()) => break,
                Err(e) => {
                    assert!(
                        e.is_retryable(),
                        "an error after the broker closed us is retryable: {e}"
                    );
                    errors += 1;
                    assert!(errors < 50, "writes keep failing: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        sent.extend(batch.into_iter().map(|m| m.id));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let missing = sent
            .iter()
            .filter(|id| !handled.lock().unwrap().contains(*id))
            .count();
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} messages never arrived"
        );
        let _ = tokio::time::timeout(Duration::from_millis(200), rx.recv()).await;
    }
    assert!(!run.is_finished(), "the reader kept running");
    cancel.cancel();
    run.await.unwrap().unwrap();
    delete_stream(&c, &stream).await.unwrap();
}

/// When each delivery came, and its delivery attempt.
type Seen = Arc<Mutex<Vec<(Instant, Option<u32>)>>>;

/// Fails deliveries before `until` with `delay`, recording each.
fn delaying(delay: Duration, until: u32, seen: Seen) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        let seen = seen.clone();
        async move {
            let n = m.delivery_attempt();
            seen.lock().unwrap().push((Instant::now(), n));
            if n.unwrap_or(1) < until {
                Err::<(), BoxError>(streams_core::RetryAfter::new(delay, "later").into())
            } else {
                Ok(())
            }
        }
    }))
}

async fn wait_for(seen: &Seen, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_over_the_limit_is_refused_and_the_message_comes_back_after_the_backoff() {
    let c = client().await;
    let stream = unique("delay-long");
    create_stream(&c, &stream).await.unwrap();
    let seen: Seen = Arc::default();
    let sub = AmqpReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let too_long = streams_amqp::MAX_DELAY + Duration::from_secs(1);
    let run = tokio::spawn(sub.run(delaying(too_long, 2, seen.clone()), cancel.clone()));
    AmqpWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    // The client's backoff is 20 ms: back at once rather than in 25 minutes.
    wait_for(&seen, 2, Duration::from_secs(10)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_delivery_frees_its_lane_and_shutdown_gives_it_back() {
    let c = client().await;
    let stream = unique("delay-hold");
    create_stream(&c, &stream).await.unwrap();
    let task = ReadTask::new(&stream).with_group("g");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    // One lane: the second message is handled while the first is held.
    let h = handler(tower::service_fn(move |m: Message| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push((Instant::now(), m.delivery_attempt()));
            if m.data.as_ref() == b"slow" {
                Err::<(), BoxError>(
                    streams_core::RetryAfter::new(Duration::from_secs(60), "later").into(),
                )
            } else {
                Ok(())
            }
        }
    }));
    let sub = AmqpReader::new(c.clone())
        .subscribe(task.clone().with_concurrency(1))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    AmqpWriter::new(c.clone())
        .write(vec![
            Message::new(&stream, "slow"),
            Message::new(&stream, "fast"),
        ])
        .await
        .unwrap();
    wait_for(&seen, 2, Duration::from_secs(10)).await;
    assert_eq!(seen.lock().unwrap().len(), 2, "the lane went on");
    // Time for the second message's acknowledgement to reach the broker (the handler
    // records before its delivery is acknowledged).
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Shutdown with the delivery held for a minute: it goes back to the queue.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("shutdown does not wait for the delay")
        .unwrap()
        .unwrap();
    let again: Seen = Arc::default();
    let sub = AmqpReader::new(c.clone()).subscribe(task).await.unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(delaying(Duration::ZERO, 0, again.clone()), cancel.clone()));
    wait_for(&again, 1, Duration::from_secs(10)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let again = again.lock().unwrap().clone();
    // At least its second delivery: a shutdown can return it twice (given back, then
    // delivered again to the closing consumer and returned with its channel).
    assert!(
        again.len() == 1 && again[0].1.is_some_and(|n| n >= 2),
        "the held message comes back on the next run, counted: {again:?}"
    );
    delete_stream(&c, &stream).await.unwrap();
}
