//! A partition whose handler is stuck is paused while the reader keeps polling: the
//! other partitions deliver everything, the member stays in its group, and the stuck
//! partition goes on in order, each message once, when the handler succeeds.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use streams_core::{handler, BoxError, Message, ReadTask};
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// `partitions assigned` events per consumer group, seen through `tracing`.
fn assignments() -> &'static Mutex<HashMap<String, usize>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

struct CountAssignments;

/// `partition paused` events per topic.
fn pauses() -> &'static Mutex<HashMap<String, usize>> {
    static COUNTS: OnceLock<Mutex<HashMap<String, usize>>> = OnceLock::new();
    COUNTS.get_or_init(Default::default)
}

#[derive(Default)]
struct Fields {
    message: String,
    group: String,
    topic: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => self.message = format!("{value:?}"),
            "group" => self.group = format!("{value:?}"),
            "topic" => self.topic = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: Subscriber> Layer<S> for CountAssignments {
    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let mut fields = Fields::default();
        event.record(&mut fields);
        if fields.message == "partitions assigned" {
            *assignments()
                .lock()
                .unwrap()
                .entry(fields.group)
                .or_default() += 1;
        }
        if fields.message.starts_with("partition paused") {
            *pauses().lock().unwrap().entry(fields.topic).or_default() += 1;
        }
    }
}

/// Writes one record of `size` bytes to `partition`, awaiting it, so each record is a
/// batch of its own (tansu cannot fetch from inside a batch, which a resume after a
/// pause may need).
async fn send(producer: &FutureProducer, topic: &str, partition: i32, id: &str, size: usize) {
    let headers = OwnedHeaders::new().insert(Header {
        key: "message_id",
        value: Some(id),
    });
    let payload = vec![b'x'; size];
    producer
        .send(
            FutureRecord::<(), _>::to(topic)
                .partition(partition)
                .payload(&payload)
                .headers(headers),
            Timeout::Never,
        )
        .await
        .expect("send");
}

fn trace() {
    let _ = tracing_subscriber::registry()
        .with(CountAssignments)
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::from_default_env()),
        )
        .try_init();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stuck_partition_is_paused_while_others_go_on_and_no_rebalance_happens() {
    trace();
    let config = common::config().with_queue_depth(4);
    let paused = stuck_partition(config, 2).await;
    assert!(
        paused >= 1,
        "the stuck partition was paused ({paused} pauses)"
    );
}

/// Large records: the queue's byte bound pauses the stuck partition long before its
/// record bound (10,000) would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_partition_of_large_records_is_paused_by_its_byte_bound() {
    trace();
    let config = common::config()
        .with_queue_depth(10_000)
        .with_queue_bytes(64 * 1024);
    let paused = stuck_partition(config, 16 * 1024).await;
    assert!(
        paused >= 1,
        "the stuck partition was paused ({paused} pauses)"
    );
}

/// Partition 0's first message fails for 30 s: partition 1 delivers everything meanwhile,
/// then partition 0 goes on in order, each message once, and the member never leaves its
/// group. Returns how often the topic's partitions were paused.
async fn stuck_partition(config: streams_kafka::KafkaConfig, size: usize) -> usize {
    const STUCK_FOR: Duration = Duration::from_secs(30);
    let config = config
        .with_property("max.poll.interval.ms", "10000")
        .with_property("session.timeout.ms", "6000");
    let t = common::topic("pause", 2).await;
    let group = format!("g-{t}");
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", config.bootstrap_servers())
        .set("linger.ms", "0")
        .create()
        .unwrap();

    // Partition 0: a message whose handler fails for 30 s, and more than the queue
    // bound (4 records, or 64 KiB of 16 KiB records) behind it.
    let stuck: Vec<String> = (0..12).map(|i| format!("p0-{i}")).collect();
    for id in &stuck {
        send(&producer, &t, 0, id, size).await;
    }

    let first_attempt = Arc::new(OnceLock::<Instant>::new());
    let handled = Arc::new(Mutex::new(Vec::<(i32, String)>::new()));
    let (f, h) = (first_attempt.clone(), handled.clone());
    let svc = handler(tower::service_fn(move |m: Message| {
        let (f, h) = (f.clone(), h.clone());
        async move {
            if m.id == "p0-0" && f.get_or_init(Instant::now).elapsed() < STUCK_FOR {
                return Err::<(), BoxError>("stuck".into());
            }
            let partition = m.header(streams_kafka::HEADER_PARTITION_ID).unwrap();
            h.lock().unwrap().push((partition.parse().unwrap(), m.id));
            Ok(())
        }
    }));
    let (cancel, join) = common::start(config, ReadTask::new(&t).with_group(&group), svc);

    // Once partition 0 is stuck (and its queue full), partition 1 gets messages.
    let deadline = Instant::now() + Duration::from_secs(60);
    while first_attempt.get().is_none() {
        assert!(Instant::now() < deadline, "the reader never started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stuck_since = *first_attempt.get().unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let free: Vec<String> = (0..20).map(|i| format!("p1-{i}")).collect();
    for id in &free {
        send(&producer, &t, 1, id, size).await;
    }
    let of = |p: i32| -> Vec<String> {
        handled
            .lock()
            .unwrap()
            .iter()
            .filter(|(q, _)| *q == p)
            .map(|(_, id)| id.clone())
            .collect()
    };
    // Partition 1 delivers everything while partition 0 is stuck.
    while of(1).len() < free.len() && stuck_since.elapsed() < STUCK_FOR {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let on_free = of(1);
    let on_stuck = of(0);
    assert_eq!(
        on_free,
        free,
        "partition 1 delivered everything, in order, while partition 0 was stuck \
         (stuck for {:?})",
        stuck_since.elapsed()
    );
    assert!(
        on_stuck.is_empty(),
        "nothing passed the stuck message: {on_stuck:?}"
    );

    // Once the handler succeeds, partition 0 goes on: in order, each message once.
    let deadline = Instant::now() + STUCK_FOR + Duration::from_secs(60);
    while of(0).len() < stuck.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), join)
        .await
        .expect("reader stops")
        .expect("join")
        .expect("reader ok");
    assert_eq!(of(0), stuck, "partition 0 in order, each message once");
    assert_eq!(of(1), free, "partition 1 once each");
    let rebalances = assignments().lock().unwrap().get(&group).copied();
    assert_eq!(
        rebalances,
        Some(1),
        "one assignment: the member never left its group while a handler was stuck"
    );
    let paused = pauses().lock().unwrap().get(&t).copied().unwrap_or(0);
    paused
}
