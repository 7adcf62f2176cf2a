//! Kafka-specific behaviour against a real broker (`STREAMS_KAFKA_BROKERS`, default
//! `localhost:9092`).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use streams_core::{handler, BoxError, Error, Message, ReadTask, Writer};
use streams_kafka::{
    KafkaWriter, HEADER_CURRENT_OFFSET, HEADER_GROUP_ID, HEADER_INIT_OFFSET, HEADER_PARTITION_ID,
};

const PATIENCE: Duration = Duration::from_secs(60);

/// Writes each message as its own record batch. tansu (the broker CI runs) answers a
/// fetch from an offset inside a record batch with nothing, where Kafka returns the
/// batch; one record per batch lets these tests start and resume at any offset.
async fn write_one_by_one(writer: &KafkaWriter, messages: &[Message]) {
    for m in messages {
        writer.write(vec![m.clone()]).await.unwrap();
    }
}

fn ids(m: &[Message]) -> HashSet<String> {
    m.iter().map(|m| m.id.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_resumes_where_it_committed() {
    let t = topic("resume", 2).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let first = batch(&t, 20, "a");
    writer.write(first.clone()).await.unwrap();
    let mut r = run(ReadTask::new(&t).with_group(format!("g-{t}")));
    let got = r.take(20, PATIENCE).await;
    assert_eq!(ids(&got), ids(&first));
    r.stop().await;

    let second = batch(&t, 10, "b");
    writer.write(second.clone()).await.unwrap();
    let mut r = run(ReadTask::new(&t).with_group(format!("g-{t}")));
    let mut got = r.take(10, PATIENCE).await;
    got.extend(r.rest(Duration::from_secs(2)).await);
    r.stop().await;
    assert_eq!(
        ids(&got),
        ids(&second),
        "exactly the messages after the commit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_groups_each_receive_everything() {
    let t = topic("two-groups", 3).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 30, "x");
    writer.write(sent.clone()).await.unwrap();
    let mut a = run(ReadTask::new(&t).with_group(format!("a-{t}")));
    let mut b = run(ReadTask::new(&t).with_group(format!("b-{t}")));
    assert_eq!(ids(&a.take(30, PATIENCE).await), ids(&sent));
    assert_eq!(ids(&b.take(30, PATIENCE).await), ids(&sent));
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_and_offset_reading() {
    let t = topic("direct", 1).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 10, "d");
    write_one_by_one(&writer, &sent).await;
    let mut r = run(ReadTask::new(&t).with_partition(0).with_start_offset(4));
    let got = r.take(6, PATIENCE).await;
    let extra = r.rest(Duration::from_secs(1)).await;
    r.stop().await;
    assert!(extra.is_empty(), "nothing before offset 4: {extra:?}");
    let offsets: Vec<_> = got
        .iter()
        .map(|m| m.header(HEADER_CURRENT_OFFSET).unwrap().to_owned())
        .collect();
    assert_eq!(offsets, ["4", "5", "6", "7", "8", "9"]);
    let want: Vec<_> = sent[4..].iter().map(|m| m.id.clone()).collect();
    assert_eq!(got.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), want);
    assert_eq!(got[0].header(HEADER_INIT_OFFSET), Some("4"));
    assert_eq!(got[0].header(HEADER_GROUP_ID), Some(""));
    assert_eq!(got[0].header(HEADER_PARTITION_ID), Some("0"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_message_is_redelivered_without_losing_or_reordering() {
    let t = topic("redeliver", 1).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 10, "r");
    let poison = sent[3].id.clone();
    let failures = Arc::new(AtomicUsize::new(0));
    let handled = Arc::new(Mutex::new(Vec::new()));
    let (f, h) = (failures.clone(), handled.clone());
    let svc = handler(tower::service_fn(move |m: Message| {
        let (f, h, poison) = (f.clone(), h.clone(), poison.clone());
        async move {
            if m.id == poison && f.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err::<(), BoxError>("transient".into());
            }
            h.lock().unwrap().push(m.id);
            Ok(())
        }
    }));
    let (cancel, join) = start(
        config(),
        ReadTask::new(&t).with_group(format!("g-{t}")),
        svc,
    );
    writer.write(sent.clone()).await.unwrap();
    for _ in 0..600 {
        if handled.lock().unwrap().len() >= 10 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    join.await.unwrap().unwrap();
    let handled = handled.lock().unwrap().clone();
    let want: Vec<_> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(
        handled, want,
        "every message once, in order, the failed one after its retries"
    );
    assert_eq!(
        failures.load(Ordering::SeqCst),
        3,
        "two failures then success"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_key_with_many_keys_and_concurrent_partitions() {
    let t = topic("order", 4).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let mut sent = Vec::new();
    for seq in 0..25 {
        for k in 0..20 {
            sent.push(
                Message::new(&t, format!("{k}:{seq}"))
                    .with_key(format!("key-{k}"))
                    .with_header("seq", seq.to_string()),
            );
        }
    }
    let running = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let seen = Arc::new(Mutex::new(BTreeMap::<String, Vec<u32>>::new()));
    let (r, p, s) = (running.clone(), peak.clone(), seen.clone());
    let svc = handler(tower::service_fn(move |m: Message| {
        let (r, p, s) = (r.clone(), p.clone(), s.clone());
        async move {
            let now = r.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(now, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(1)).await;
            let seq = m.header("seq").unwrap().parse().unwrap();
            s.lock()
                .unwrap()
                .entry(m.key.clone().unwrap())
                .or_default()
                .push(seq);
            r.fetch_sub(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    }));
    let (cancel, join) = start(
        config(),
        ReadTask::new(&t).with_group(format!("g-{t}")),
        svc,
    );
    for chunk in sent.chunks(100) {
        writer.write(chunk.to_vec()).await.unwrap();
    }
    for _ in 0..600 {
        if seen.lock().unwrap().values().map(Vec::len).sum::<usize>() >= 500 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    join.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 20);
    for (key, seqs) in &seen {
        assert_eq!(seqs, &(0..25).collect::<Vec<u32>>(), "key {key}");
    }
    assert!(
        peak.load(Ordering::SeqCst) >= 2,
        "partitions are handled concurrently"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_aborted_mid_stream_and_restarted_loses_nothing() {
    let t = topic("abort", 2).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&t, 200, "k");
    write_one_by_one(&writer, &sent).await;
    let handled = Arc::new(Mutex::new(HashSet::new()));
    let slow = |h: Arc<Mutex<HashSet<String>>>| {
        handler(tower::service_fn(move |m: Message| {
            let h = h.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(5)).await;
                h.lock().unwrap().insert(m.id);
                Ok::<_, BoxError>(())
            }
        }))
    };
    let group = format!("g-{t}");
    let (_cancel, join) = start(
        config(),
        ReadTask::new(&t).with_group(&group),
        slow(handled.clone()),
    );
    for _ in 0..600 {
        if handled.lock().unwrap().len() >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Not a graceful stop: the task is dropped wherever it is.
    join.abort();
    let _ = join.await;
    let before = handled.lock().unwrap().len();
    assert!(before < 200, "aborted mid-stream ({before} handled)");
    let (cancel, join) = start(
        config(),
        ReadTask::new(&t).with_group(&group),
        slow(handled.clone()),
    );
    for _ in 0..1200 {
        if handled.lock().unwrap().len() >= 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cancel.cancel();
    join.await.unwrap().unwrap();
    let handled = handled.lock().unwrap().clone();
    let missing = ids(&sent).difference(&handled).count();
    assert_eq!(missing, 0, "{missing} messages lost across the abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_library_records_and_malformed_records_reach_the_handler() {
    let t = topic("foreign", 1).await;
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config().bootstrap_servers())
        .create()
        .unwrap();
    // As the Go library writes: key, value, timestamp, message_id, content_type, user headers.
    let go_headers = OwnedHeaders::new()
        .insert(Header {
            key: "message_id",
            value: Some("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R"),
        })
        .insert(Header {
            key: "content_type",
            value: Some("application/json"),
        })
        .insert(Header {
            key: "tenant",
            value: Some("acme"),
        });
    producer
        .send(
            FutureRecord::to(&t)
                .key("acct-42")
                .payload(r#"{"amount":100}"#)
                .timestamp(1_700_000_000_123)
                .headers(go_headers),
            Timeout::Never,
        )
        .await
        .unwrap();
    // No streams headers at all, a binary key and payload.
    producer
        .send(
            FutureRecord::to(&t)
                .key(&[0xffu8, 0x00][..])
                .payload(&[0u8, 159, 146, 150][..]),
            Timeout::Never,
        )
        .await
        .unwrap();
    // A well-formed message behind them proves the partition is not stuck.
    let writer = KafkaWriter::new(&config()).unwrap();
    let last = Message::new(&t, "after");
    writer.write(vec![last.clone()]).await.unwrap();

    let mut r = run(ReadTask::new(&t).with_group(format!("g-{t}")));
    let got = r.take(3, PATIENCE).await;
    r.stop().await;
    assert_eq!(got.len(), 3);
    let go = &got[0];
    assert_eq!(go.id, "2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R");
    assert_eq!(go.stream, t);
    assert_eq!(go.key.as_deref(), Some("acct-42"));
    assert_eq!(go.content_type, "application/json");
    assert_eq!(go.header("tenant"), Some("acme"));
    assert_eq!(&go.data[..], br#"{"amount":100}"#);
    assert_eq!(go.time.timestamp_millis(), 1_700_000_000_123);
    let bare = &got[1];
    assert_eq!(bare.id, format!("{t}-0-1"));
    assert_eq!(&bare.data[..], &[0u8, 159, 146, 150]);
    assert_eq!(bare.content_type, "application/octet-stream");
    assert_eq!(got[2].id, last.id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_message_is_rejected_by_id_and_size_and_the_rest_is_written() {
    let t = topic("too-big", 1).await;
    // The producer's own limit: librdkafka refuses the message before sending it.
    let writer = KafkaWriter::new(&config().with_property("message.max.bytes", "10000")).unwrap();
    let before = Message::new(&t, "before");
    let big = Message::new(&t, vec![1u8; 50_000]);
    let after = Message::new(&t, "after");
    let err = writer
        .write(vec![before.clone(), big.clone(), after.clone()])
        .await
        .unwrap_err();
    match &err {
        Error::Rejected { failed } => {
            assert_eq!(failed.len(), 1, "{err}");
            assert_eq!(failed[0].id, big.id);
            let reason = &failed[0].reason;
            assert!(reason.contains(&format!("topic `{t}`")), "{reason}");
            assert!(reason.contains("MessageSizeTooLarge"), "{reason}");
            assert!(reason.contains("value 50000 bytes"), "{reason}");
            assert!(reason.contains("message.max.bytes is 10000"), "{reason}");
        }
        other => panic!("want Rejected, got {other}"),
    }
    assert!(err.is_message_fault());
    assert!(
        !err.is_retryable(),
        "a too-large message is not retryable: {err}"
    );
    let mut r = run(ReadTask::new(&t).with_group(format!("g-{t}")));
    let mut got = r.take(2, PATIENCE).await;
    got.extend(r.rest(Duration::from_secs(2)).await);
    r.stop().await;
    let got: Vec<_> = got.into_iter().map(|m| m.id).collect();
    assert_eq!(
        got,
        [before.id, after.id],
        "the other messages were written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topic_fails_at_once_naming_it() {
    let t = unique("missing");
    let writer = KafkaWriter::new(&config()).unwrap();
    let started = std::time::Instant::now();
    // Whether a broker creates a topic on first use is its own setting: only check the
    // answer when it does not.
    if let Err(e) = writer.write(vec![Message::new(&t, "x")]).await {
        let text = e.to_string();
        assert!(
            text.starts_with(&format!(
                "kafka: produce failed: topic `{t}`: UnknownTopicOrPartition"
            )),
            "{text}"
        );
        assert!(!e.is_retryable() && !e.is_message_fault(), "{text}");
    }
    let e = streams_core::Reader::read(
        &streams_kafka::KafkaReader::new(config()),
        ReadTask::new(unique("missing")).with_group("g"),
        forwarding(tokio::sync::mpsc::unbounded_channel().0),
        streams_core::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    let text = e.to_string();
    assert!(
        text.starts_with("kafka: subscribe failed: topic `"),
        "{text}"
    );
    assert!(text.contains("UnknownTopicOrPartition"), "{text}");
    assert!(!e.is_retryable(), "{text}");
    let t = topic("one-partition", 1).await;
    let e = streams_core::Reader::read(
        &streams_kafka::KafkaReader::new(config()),
        ReadTask::new(&t).with_partition(3),
        forwarding(tokio::sync::mpsc::unbounded_channel().0),
        streams_core::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(
        e.to_string().starts_with(&format!(
            "kafka: assign failed: topic `{t}`: UnknownPartition"
        )),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn reading_needs_a_group_or_a_partition() {
    let reader = streams_kafka::KafkaReader::new(config());
    let err = streams_core::Reader::read(
        &reader,
        ReadTask::new("anything"),
        forwarding(tokio::sync::mpsc::unbounded_channel().0),
        streams_core::CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
}

#[allow(dead_code)]
fn count_by_id(m: &[Message]) -> HashMap<String, usize> {
    let mut c = HashMap::new();
    for m in m {
        *c.entry(m.id.clone()).or_default() += 1;
    }
    c
}

/// `ReadTask::concurrency` bounds handler calls across partitions: with 1, one call
/// at a time although three partitions have work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_bounds_handler_calls_across_partitions() {
    let topic = topic("concurrency", 3).await;
    let writer = KafkaWriter::new(&config()).unwrap();
    let sent = batch(&topic, 15, "c");
    write_one_by_one(&writer, &sent).await;
    let (running, peak, done) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
        Arc::new(AtomicUsize::new(0)),
    );
    let h = {
        let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
        handler(tower::service_fn(move |_m: Message| {
            let (running, peak, done) = (running.clone(), peak.clone(), done.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(30)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                done.fetch_add(1, Ordering::SeqCst);
                Ok::<_, BoxError>(())
            }
        }))
    };
    let task = ReadTask::new(&topic)
        .with_group(unique("g-concurrency"))
        .with_concurrency(1);
    let (cancel, join) = start(config(), task, h);
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while done.load(Ordering::SeqCst) < sent.len() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    join.await.unwrap().unwrap();
    assert_eq!(done.load(Ordering::SeqCst), sent.len());
    assert_eq!(peak.load(Ordering::SeqCst), 1, "one handler call at a time");
}
