//! NATS JetStream against the suite's server (streams-testkit: a container of this test
//! binary, or the native one): what the conformance suite does not cover. The fault tests
//! are in faults.rs.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_core::{
    handler, BoxError, CancellationToken, Error, Message, ReadTask, Reader, Writer,
};
use streams_nats::{
    create_stream, delete_stream, nats_name, NatsClient, NatsConfig, NatsReader, NatsWriter,
    HEADER_DELIVERED,
};
use tokio::sync::mpsc;

fn servers() -> String {
    streams_testkit::nats_servers()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn client(config: NatsConfig) -> NatsClient {
    NatsClient::connect(config)
        .await
        .expect("NATS with JetStream")
}

/// Starts `task` with a handler sending what it gets to the returned receiver.
async fn collect(
    reader: &NatsReader,
    task: ReadTask,
) -> (
    mpsc::UnboundedReceiver<Message>,
    CancellationToken,
    tokio::task::JoinHandle<streams_core::Result<()>>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).map_err(BoxError::from) }
    }));
    let cancel = CancellationToken::new();
    let sub = reader.subscribe(task).await.expect("subscribe");
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    (rx, cancel, run)
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Message>, within: Duration) -> Message {
    tokio::time::timeout(within, rx.recv())
        .await
        .expect("a message in time")
        .expect("reader running")
}

#[tokio::test]
async fn nothing_listening_fails_within_the_connect_timeout() {
    // A port nothing listens on: refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap();
    let started = Instant::now();
    let err = NatsClient::connect(
        NatsConfig::new(&format!("127.0.0.1:{port}")).with_connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_retryable(), "{err}");
    let line = err.to_string();
    assert!(line.starts_with("nats: connect failed"), "{line}");
    assert!(
        line.contains(&port.to_string()) && !line.contains('\n'),
        "{line}"
    );

    // A server that accepts and never speaks: bounded by the connect timeout.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    let err = NatsClient::connect(
        NatsConfig::new(&addr.to_string()).with_connect_timeout(Duration::from_secs(2)),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    assert!(
        err.is_retryable() && err.to_string().contains("nats: connect failed"),
        "{err}"
    );
    holder.abort();
}

#[tokio::test]
async fn a_missing_stream_is_named_at_once_on_write_and_on_subscribe() {
    let c = client(NatsConfig::new(&servers())).await;
    let stream = unique("missing");
    let err = NatsWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x"), Message::new(&stream, "y")])
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(
        err.to_string().contains(&stream) && err.to_string().contains("streams create"),
        "{err}"
    );
    let err = NatsReader::new(c)
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap_err();
    assert!(!err.is_retryable(), "{err}");
    assert!(err.to_string().contains(&stream), "{err}");
}

#[tokio::test]
async fn oversized_and_unsendable_messages_are_rejected_before_sending() {
    let c = client(NatsConfig::new(&servers())).await;
    let stream = unique("rejected");
    create_stream(&c, &stream).await.unwrap();
    let max = c.nats().server_info().max_payload;
    let big = Message::new(&stream, vec![7u8; max + 1]);
    let bad_header = Message::new(&stream, "x").with_header("two words", "v");
    let fine = Message::new(&stream, "fine");
    let err = NatsWriter::new(c.clone())
        .write(vec![fine.clone(), big.clone(), bad_header.clone()])
        .await
        .unwrap_err();
    match &err {
        Error::Rejected { failed } => {
            let ids: Vec<_> = failed.iter().map(|f| f.id.as_str()).collect();
            assert_eq!(ids, [big.id.as_str(), bad_header.id.as_str()]);
            assert!(
                failed[0].reason.contains("max_payload"),
                "{}",
                failed[0].reason
            );
        }
        other => panic!("want Rejected, got {other:?}"),
    }
    assert!(err.is_message_fault());
    // Nothing of that batch was sent, the good message included.
    let info = c
        .jetstream()
        .get_stream(nats_name(&stream).unwrap())
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(info, 0);
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_name_payload_and_header_make_the_trip() {
    let c = client(NatsConfig::new(&servers())).await;
    let stream = format!("{} with spaces/slashes*and>wildcards", unique("odd"));
    create_stream(&c, &stream).await.unwrap();
    let reader = NatsReader::new(c.clone());
    let (mut rx, cancel, run) =
        collect(&reader, ReadTask::new(&stream).with_group("odd group.name")).await;
    let payload: Vec<u8> = (0..=255u8).collect();
    let sent = Message::new(&stream, payload.clone())
        .with_key("k.1")
        .with_header("x-tenant", "acme");
    NatsWriter::new(c.clone())
        .write(vec![sent.clone()])
        .await
        .unwrap();
    let got = next(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(got.stream, stream);
    assert_eq!(got.id, sent.id);
    assert_eq!(got.key.as_deref(), Some("k.1"));
    assert_eq!(&got.data[..], &payload[..]);
    assert_eq!(got.headers["x-tenant"], "acme");
    assert_eq!(got.time, sent.time);
    cancel.cancel();
    run.await.unwrap().unwrap();
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_publish_is_stored_once() {
    let c = client(NatsConfig::new(&servers())).await;
    let stream = unique("dedup");
    create_stream(&c, &stream).await.unwrap();
    let writer = NatsWriter::new(c.clone());
    let m = Message::new(&stream, "once");
    writer.write(vec![m.clone()]).await.unwrap();
    writer.write(vec![m.clone()]).await.unwrap();
    let stored = c
        .jetstream()
        .get_stream(nats_name(&stream).unwrap())
        .await
        .unwrap()
        .cached_info()
        .state
        .messages;
    assert_eq!(stored, 1, "Nats-Msg-Id dropped the second publish");
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_message_comes_back_after_the_delay_with_its_delivery_count() {
    let c = client(
        NatsConfig::new(&servers())
            .with_retry_backoff(Duration::from_millis(300), Duration::from_secs(1)),
    )
    .await;
    let stream = unique("nak");
    create_stream(&c, &stream).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    let h = handler(tower::service_fn(move |m: Message| {
        let s = s.clone();
        async move {
            let n: u32 = m.headers[HEADER_DELIVERED].parse().unwrap();
            s.lock().unwrap().push((Instant::now(), n));
            if n < 3 {
                Err::<(), BoxError>("not yet".into())
            } else {
                Ok(())
            }
        }
    }));
    let cancel = CancellationToken::new();
    let sub = NatsReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    NatsWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    while seen.lock().unwrap().len() < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing after the success.
    tokio::time::sleep(Duration::from_millis(700)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(), [1, 2, 3]);
    // First redelivery after 300 ms, the second after 600 ms (doubled).
    assert!(
        seen[1].0 - seen[0].0 >= Duration::from_millis(250),
        "{:?}",
        seen[1].0 - seen[0].0
    );
    assert!(
        seen[2].0 - seen[1].0 >= Duration::from_millis(550),
        "{:?}",
        seen[2].0 - seen[1].0
    );
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_message_past_the_ack_wait() {
    let c = client(NatsConfig::new(&servers()).with_ack_wait(Duration::from_secs(1))).await;
    let stream = unique("progress");
    create_stream(&c, &stream).await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let k = calls.clone();
    let h = handler(tower::service_fn(move |_m: Message| {
        let k = k.clone();
        async move {
            k.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(3500)).await;
            Ok::<_, BoxError>(())
        }
    }));
    let reader = NatsReader::new(c.clone());
    let cancel = CancellationToken::new();
    // Two members: a message whose ack wait passed would go to the idle one.
    let a = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let b = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let runs = [
        tokio::spawn(a.run(h.clone(), cancel.clone())),
        tokio::spawn(b.run(h, cancel.clone())),
    ];
    NatsWriter::new(c.clone())
        .write(vec![Message::new(&stream, "slow")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "delivered once, 3.5 s handler, 1 s ack wait"
    );
    cancel.cancel();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_dies_has_its_messages_delivered_to_another() {
    let c = client(NatsConfig::new(&servers()).with_ack_wait(Duration::from_secs(2))).await;
    let stream = unique("crash");
    create_stream(&c, &stream).await.unwrap();
    let reader = NatsReader::new(c.clone());
    // Member A takes the message and never finishes: its run is aborted (a crash).
    let (started_tx, mut started_rx) = mpsc::unbounded_channel();
    let stuck = handler(tower::service_fn(move |m: Message| {
        let _ = started_tx.send(m.id.clone());
        std::future::pending::<Result<(), BoxError>>()
    }));
    let a = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let a = tokio::spawn(a.run(stuck, CancellationToken::new()));
    let sent = Message::new(&stream, "survives");
    NatsWriter::new(c.clone())
        .write(vec![sent.clone()])
        .await
        .unwrap();
    let took = tokio::time::timeout(Duration::from_secs(10), started_rx.recv())
        .await
        .unwrap();
    assert_eq!(took.as_deref(), Some(sent.id.as_str()));
    a.abort();
    let _ = a.await;
    // Member B of the same group gets it once the ack wait has passed.
    let (mut rx, cancel, run) = collect(&reader, ReadTask::new(&stream).with_group("g")).await;
    let got = next(&mut rx, Duration::from_secs(15)).await;
    assert_eq!(got.id, sent.id);
    assert_eq!(got.headers[HEADER_DELIVERED], "2");
    cancel.cancel();
    run.await.unwrap().unwrap();
    delete_stream(&c, &stream).await.unwrap();
}

/// When each delivery came, and its delivery count.
type Seen = Arc<Mutex<Vec<(Instant, Option<u32>)>>>;

/// Fails deliveries before `until` with `delay`, recording each delivery count.
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
async fn a_delay_chosen_by_the_handler_replaces_the_backoff_and_zero_is_at_once() {
    // A long backoff that a chosen delay must override.
    let c = client(
        NatsConfig::new(&servers())
            .with_retry_backoff(Duration::from_secs(30), Duration::from_secs(30)),
    )
    .await;
    let stream = unique("nak-zero");
    create_stream(&c, &stream).await.unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let cancel = CancellationToken::new();
    let sub = NatsReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(delaying(Duration::ZERO, 3, seen.clone()), cancel.clone()));
    NatsWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    wait_for(&seen, 3, Duration::from_secs(10)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
    assert!(seen[2].0 - seen[0].0 < Duration::from_secs(5));
    delete_stream(&c, &stream).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_while_a_delay_is_pending_loses_nothing() {
    let c = client(NatsConfig::new(&servers())).await;
    let stream = unique("nak-shutdown");
    create_stream(&c, &stream).await.unwrap();
    let delay = Duration::from_secs(2);
    let seen = Arc::new(Mutex::new(Vec::new()));
    let task = ReadTask::new(&stream).with_group("g");
    let cancel = CancellationToken::new();
    let sub = NatsReader::new(c.clone())
        .subscribe(task.clone())
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(delaying(delay, 2, seen.clone()), cancel.clone()));
    NatsWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    wait_for(&seen, 1, Duration::from_secs(10)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("shutdown does not wait for the delay")
        .unwrap()
        .unwrap();
    let cancel = CancellationToken::new();
    let sub = NatsReader::new(c.clone()).subscribe(task).await.unwrap();
    let run = tokio::spawn(sub.run(delaying(delay, 2, seen.clone()), cancel.clone()));
    wait_for(&seen, 2, Duration::from_secs(15)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [Some(1), Some(2)],
        "the delayed message comes back on the next run"
    );
    assert!(
        seen[1].0 - seen[0].0 >= delay,
        "{:?}",
        seen[1].0 - seen[0].0
    );
    delete_stream(&c, &stream).await.unwrap();
}
