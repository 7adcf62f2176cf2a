//! Behaviour specific to the in-process bus: backpressure, bounds, shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams_chanbuf::MemoryBus;
use streams_core::{
    handler, BoxError, CancellationToken, Error, Message, ReadTask, Reader, Writer,
};
use tokio::sync::{mpsc, Semaphore};

fn collecting(tx: mpsc::UnboundedSender<Message>) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).map_err(BoxError::from) }
    }))
}

/// `subscribe` joins at once: no waiting for a reader task to get going.
fn assert_subscribed(bus: &MemoryBus, stream: &str, groups: usize) {
    assert_eq!(
        bus.subscribers(stream),
        groups,
        "groups subscribed to {stream}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_and_groups_share() {
    let bus = Arc::new(MemoryBus::new());
    let cancel = CancellationToken::new();
    let (tx1, mut rx1) = mpsc::unbounded_channel();
    let (tx2, mut rx2) = mpsc::unbounded_channel();
    let (tx3, mut rx3) = mpsc::unbounded_channel();
    let mut readers = tokio::task::JoinSet::new();
    for (task, tx) in [
        (ReadTask::new("s"), tx1),
        (ReadTask::new("s").with_group("g"), tx2),
        (ReadTask::new("s").with_group("g"), tx3),
    ] {
        let bus = bus.clone();
        let cancel = cancel.clone();
        readers.spawn(
            bus.subscribe(task)
                .await
                .unwrap()
                .run(collecting(tx), cancel),
        );
    }
    assert_subscribed(&bus, "s", 2);
    let batch: Vec<_> = (0..100)
        .map(|i| Message::new("s", format!("{i}")))
        .collect();
    bus.write(batch).await.unwrap();
    cancel.cancel();
    while let Some(r) = readers.join_next().await {
        r.unwrap().unwrap();
    }
    let drain = |rx: &mut mpsc::UnboundedReceiver<Message>| {
        let mut n = 0;
        while rx.try_recv().is_ok() {
            n += 1;
        }
        n
    };
    assert_eq!(drain(&mut rx1), 100, "plain subscriber gets everything");
    let (a, b) = (drain(&mut rx2), drain(&mut rx3));
    assert_eq!(a + b, 100, "group members share the messages: {a} + {b}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_waits_when_full_and_try_write_fails_fast() {
    let bus = Arc::new(MemoryBus::builder().with_queue_depth(2).build());
    let gate = Arc::new(Semaphore::new(0));
    let handled = Arc::new(AtomicUsize::new(0));
    let (g, h) = (gate.clone(), handled.clone());
    let slow = handler(tower::service_fn(move |_m: Message| {
        let (g, h) = (g.clone(), h.clone());
        async move {
            g.acquire().await.unwrap().forget();
            h.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    }));
    let cancel = CancellationToken::new();
    let reader = {
        let (bus, cancel) = (bus.clone(), cancel.clone());
        tokio::spawn(
            bus.subscribe(ReadTask::new("s"))
                .await
                .unwrap()
                .run(slow, cancel),
        )
    };
    assert_subscribed(&bus, "s", 1);
    // One message in the handler, two in the buffer.
    bus.write((0..3).map(|i| Message::new("s", format!("{i}"))).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = bus.try_write(vec![Message::new("s", "x")]).unwrap_err();
    assert!(matches!(err, Error::Full { .. }), "{err}");
    assert!(err.is_retryable());

    let blocked = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.write(vec![Message::new("s", "waits")]).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !blocked.is_finished(),
        "publish waits while the buffer is full"
    );
    gate.add_permits(100);
    blocked.await.unwrap().unwrap();
    cancel.cancel();
    reader.await.unwrap().unwrap();
    assert_eq!(
        handled.load(Ordering::SeqCst),
        4,
        "graceful stop drains what was accepted"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_is_bounded_per_subscriber() {
    let bus = Arc::new(MemoryBus::new());
    let now = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let (n, p, d) = (now.clone(), peak.clone(), done.clone());
    let h = handler(tower::service_fn(move |_m: Message| {
        let (n, p, d) = (n.clone(), p.clone(), d.clone());
        async move {
            let cur = n.fetch_add(1, Ordering::SeqCst) + 1;
            p.fetch_max(cur, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(5)).await;
            n.fetch_sub(1, Ordering::SeqCst);
            d.fetch_add(1, Ordering::SeqCst);
            Ok::<_, BoxError>(())
        }
    }));
    let cancel = CancellationToken::new();
    let reader = {
        let (bus, cancel) = (bus.clone(), cancel.clone());
        tokio::spawn(
            bus.subscribe(ReadTask::new("s").with_concurrency(3))
                .await
                .unwrap()
                .run(h, cancel),
        )
    };
    assert_subscribed(&bus, "s", 1);
    bus.write((0..60).map(|i| Message::new("s", format!("{i}"))).collect())
        .await
        .unwrap();
    while done.load(Ordering::SeqCst) < 60 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    reader.await.unwrap().unwrap();
    let peak = peak.load(Ordering::SeqCst);
    assert!(peak <= 3, "at most 3 handlers at once, saw {peak}");
    assert!(peak >= 2, "lanes run concurrently, saw {peak}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handler_timeouts_and_failures_do_not_stop_the_reader() {
    let bus = Arc::new(MemoryBus::new());
    let ok = Arc::new(AtomicUsize::new(0));
    let o = ok.clone();
    // Time-outs are tower's own layer.
    let h = handler(
        tower::ServiceBuilder::new()
            .layer(tower::timeout::TimeoutLayer::new(Duration::from_millis(50)))
            .service_fn(move |m: Message| {
                let o = o.clone();
                async move {
                    match &m.data[..] {
                        b"hang" => tokio::time::sleep(Duration::from_secs(60)).await,
                        b"fail" => return Err::<(), BoxError>("boom".into()),
                        b"panic" => panic!("handler bug"),
                        _ => {}
                    }
                    o.fetch_add(1, Ordering::SeqCst);
                    Ok(())
                }
            }),
    );
    let cancel = CancellationToken::new();
    let reader = {
        let (bus, cancel) = (bus.clone(), cancel.clone());
        tokio::spawn(
            bus.subscribe(ReadTask::new("s"))
                .await
                .unwrap()
                .run(h, cancel),
        )
    };
    assert_subscribed(&bus, "s", 1);
    let batch = ["hang", "ok", "fail", "ok", "panic", "ok"]
        .into_iter()
        .map(|d| Message::new("s", d))
        .collect();
    bus.write(batch).await.unwrap();
    for _ in 0..100 {
        if ok.load(Ordering::SeqCst) == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        ok.load(Ordering::SeqCst),
        3,
        "reader survives time-outs, errors and panics"
    );
    cancel.cancel();
    reader.await.unwrap().unwrap();
}

#[tokio::test]
async fn close_refuses_writes_and_ends_readers_after_backlog() {
    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = {
        let bus = bus.clone();
        tokio::spawn(
            bus.subscribe(ReadTask::new("s"))
                .await
                .unwrap()
                .run(collecting(tx), CancellationToken::new()),
        )
    };
    assert_subscribed(&bus, "s", 1);
    bus.write((0..10).map(|i| Message::new("s", format!("{i}"))).collect())
        .await
        .unwrap();
    Writer::close(bus.as_ref()).await.unwrap();
    let err = bus
        .write(vec![Message::new("s", "late")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Closed(_)));
    assert!(!err.is_retryable());
    assert!(matches!(
        bus.try_write(vec![Message::new("s", "late")]),
        Err(Error::Closed(_))
    ));
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("reader ends after close")
        .unwrap()
        .unwrap();
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    assert_eq!(n, 10);
}

#[tokio::test]
async fn empty_stream_name_is_rejected() {
    let bus = MemoryBus::new();
    let err = bus
        .read(
            ReadTask::new(""),
            collecting(mpsc::unbounded_channel().0),
            CancellationToken::new(),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }));
}

/// What the members of one group did: per key, the sequence numbers in the order they
/// were handled; keys handled by two members (or twice) at once; messages per member.
#[derive(Default)]
struct Ledger {
    busy: std::collections::HashSet<String>,
    seqs: std::collections::BTreeMap<String, Vec<u32>>,
    overlaps: Vec<String>,
    per_member: std::collections::HashMap<&'static str, usize>,
}

type SharedLedger = Arc<std::sync::Mutex<Ledger>>;

/// A member's handler: records into the ledger and takes a little time per message, so
/// that two handlers of one key would overlap.
fn member(name: &'static str, ledger: SharedLedger, pause: Duration) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        let ledger = ledger.clone();
        async move {
            let key = m.key.clone().unwrap_or_default();
            {
                let mut l = ledger.lock().unwrap();
                if !l.busy.insert(key.clone()) {
                    l.overlaps.push(key.clone());
                }
            }
            if pause.is_zero() {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(pause).await;
            }
            let seq = m
                .header("seq")
                .and_then(|s| s.parse().ok())
                .unwrap_or(u32::MAX);
            let mut l = ledger.lock().unwrap();
            l.busy.remove(&key);
            l.seqs.entry(key).or_default().push(seq);
            *l.per_member.entry(name).or_default() += 1;
            Ok::<_, BoxError>(())
        }
    }))
}

fn keyed(stream: &str, keys: u32, from: u32, to: u32) -> Vec<Message> {
    let mut batch = Vec::new();
    for seq in from..to {
        for k in 0..keys {
            batch.push(
                Message::new(stream, format!("{k}:{seq}"))
                    .with_key(format!("key-{k}"))
                    .with_header("seq", seq.to_string()),
            );
        }
    }
    batch
}

struct Member {
    cancel: CancellationToken,
    join: tokio::task::JoinHandle<streams_core::Result<()>>,
}

impl Member {
    async fn start(bus: &Arc<MemoryBus>, stream: &str, h: streams_core::Handler) -> Member {
        let cancel = CancellationToken::new();
        let (bus, c) = (bus.clone(), cancel.clone());
        let task = ReadTask::new(stream).with_group("g").with_concurrency(4);
        let join = tokio::spawn(bus.subscribe(task).await.unwrap().run(h, c));
        Member { cancel, join }
    }

    async fn leave(self) {
        self.cancel.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.join)
            .await
            .expect("member leaves")
            .unwrap()
            .unwrap();
    }
}

async fn handled(ledger: &SharedLedger, n: usize) {
    for _ in 0..3000 {
        if ledger
            .lock()
            .unwrap()
            .seqs
            .values()
            .map(Vec::len)
            .sum::<usize>()
            >= n
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not all {n} messages handled within 30 s");
}

/// Every key's sequence numbers were handled once each, in publish order, and never two
/// of one key at once.
fn assert_in_order(ledger: &SharedLedger, keys: u32, per_key: u32) {
    let l = ledger.lock().unwrap();
    assert!(
        l.overlaps.is_empty(),
        "keys handled twice at once: {:?}",
        l.overlaps
    );
    assert_eq!(
        l.seqs.len(),
        keys as usize,
        "keys seen: {:?}",
        l.seqs.keys()
    );
    let want: Vec<u32> = (0..per_key).collect();
    for (key, seqs) in &l.seqs {
        assert_eq!(seqs, &want, "{key} handled out of order, lost or twice");
    }
}

/// Publishes keyless probes until every named member handled one, so that a test
/// starts with all members taking turns.
async fn until_members_take_part(
    bus: &MemoryBus,
    stream: &str,
    ledger: &SharedLedger,
    names: &[&str],
) {
    for _ in 0..1000 {
        if names
            .iter()
            .all(|n| ledger.lock().unwrap().per_member.contains_key(n))
        {
            return;
        }
        bus.write(vec![Message::new(stream, "probe")])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("members {names:?} never all took part");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_members_of_a_group_keep_order_per_key() {
    let bus = Arc::new(MemoryBus::builder().with_queue_depth(64).build());
    let ledger = SharedLedger::default();
    let pause = Duration::from_millis(1);
    let a = Member::start(&bus, "two", member("a", ledger.clone(), pause)).await;
    let b = Member::start(&bus, "two", member("b", ledger.clone(), pause)).await;
    assert_subscribed(&bus, "two", 1);
    until_members_take_part(&bus, "two", &ledger, &["a", "b"]).await;
    // Probes are keyless: wait until they are all handled before counting.
    tokio::time::sleep(Duration::from_millis(50)).await;
    *ledger.lock().unwrap() = Ledger::default();

    for chunk in keyed("two", 8, 0, 40).chunks(16) {
        bus.write(chunk.to_vec()).await.unwrap();
    }
    handled(&ledger, 8 * 40).await;
    a.leave().await;
    b.leave().await;
    assert_in_order(&ledger, 8, 40);
    let l = ledger.lock().unwrap();
    assert!(
        l.per_member.get("a").is_some_and(|n| *n > 0)
            && l.per_member.get("b").is_some_and(|n| *n > 0),
        "both members share the load: {:?}",
        l.per_member
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_joining_and_leaving_mid_stream_lose_and_reorder_nothing() {
    let bus = Arc::new(MemoryBus::builder().with_queue_depth(32).build());
    let ledger = SharedLedger::default();
    let pause = Duration::from_micros(300);
    let (keys, per_key) = (8, 80);
    let a = Member::start(&bus, "churn", member("a", ledger.clone(), pause)).await;
    assert_subscribed(&bus, "churn", 1);
    // A quarter with one member, a quarter with two, then the first leaves, a third
    // joins, the second leaves, and the third, the last, drains the rest.
    bus.write(keyed("churn", keys, 0, 20)).await.unwrap();
    let b = Member::start(&bus, "churn", member("b", ledger.clone(), pause)).await;
    bus.write(keyed("churn", keys, 20, 40)).await.unwrap();
    a.leave().await;
    bus.write(keyed("churn", keys, 40, 50)).await.unwrap();
    let c = Member::start(&bus, "churn", member("c", ledger.clone(), pause)).await;
    bus.write(keyed("churn", keys, 50, 65)).await.unwrap();
    b.leave().await;
    bus.write(keyed("churn", keys, 65, per_key)).await.unwrap();
    c.leave().await;
    assert_eq!(bus.subscribers("churn"), 0, "the last member left");
    assert_in_order(&ledger, keys, per_key);
    let l = ledger.lock().unwrap();
    for name in ["a", "b", "c"] {
        assert!(
            l.per_member.get(name).is_some_and(|n| *n > 0),
            "{name} took part: {:?}",
            l.per_member
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoining_while_the_last_member_drains_waits_for_the_backlog() {
    let bus = Arc::new(MemoryBus::builder().with_queue_depth(256).build());
    let ledger = SharedLedger::default();
    let a = Member::start(
        &bus,
        "rejoin",
        member("a", ledger.clone(), Duration::from_millis(10)),
    )
    .await;
    assert_subscribed(&bus, "rejoin", 1);
    bus.write(keyed("rejoin", 8, 0, 10)).await.unwrap();
    // The last member leaves with a backlog to handle; a new member of the same group
    // joins meanwhile and gets the next messages of the same keys.
    a.cancel.cancel();
    for _ in 0..1000 {
        if bus.subscribers("rejoin") == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let b = Member::start(&bus, "rejoin", member("b", ledger.clone(), Duration::ZERO)).await;
    assert_subscribed(&bus, "rejoin", 1);
    bus.write(keyed("rejoin", 8, 10, 20)).await.unwrap();
    assert!(
        !a.join.is_finished(),
        "the test needs a backlog still draining"
    );
    a.join.await.unwrap().unwrap();
    handled(&ledger, 8 * 20).await;
    b.leave().await;
    assert_in_order(&ledger, 8, 20);
}

/// A task field the bus cannot honour is refused, naming the field, not ignored.
#[tokio::test]
async fn read_task_fields_the_bus_cannot_honour_are_refused() {
    let bus = MemoryBus::new();
    let h = handler(tower::service_fn(|_m: Message| async {
        Ok::<_, BoxError>(())
    }));
    for (task, field) in [
        (ReadTask::new("s").with_partition(0), "`partition`"),
        (ReadTask::new("s").with_start_offset(5), "`start_offset`"),
        (ReadTask::new("s").with_arg("start", "end"), "`start`"),
    ] {
        let err = bus
            .read(task, h.clone(), CancellationToken::new())
            .await
            .unwrap_err();
        assert!(matches!(err, streams_core::Error::Invalid { .. }), "{err}");
        assert!(err.to_string().contains(field), "{err}");
    }
    assert_eq!(bus.subscribers("s"), 0, "nothing joined");
}

#[tokio::test]
async fn subscribe_attaches_before_run_and_a_dropped_subscription_leaves() {
    let bus = MemoryBus::new();
    let subscription = bus.subscribe(ReadTask::new("attach")).await.unwrap();
    assert_eq!(subscription.stream(), "attach");
    assert_subscribed(&bus, "attach", 1);
    // Written between attach and run: delivered once the run starts.
    bus.write(vec![Message::new("attach", "early")])
        .await
        .unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(subscription.run(collecting(tx), cancel.clone()));
    let got = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&got.data[..], b"early");
    cancel.cancel();
    run.await.unwrap().unwrap();
    assert_subscribed(&bus, "attach", 0);

    let unrun = bus
        .subscribe(ReadTask::new("attach").with_group("g"))
        .await
        .unwrap();
    assert_subscribed(&bus, "attach", 1);
    drop(unrun);
    assert_subscribed(&bus, "attach", 0);
    // Nobody listens: a write goes nowhere and does not wait for room.
    tokio::time::timeout(
        Duration::from_secs(1),
        bus.write(vec![Message::new("attach", "x"); 2000]),
    )
    .await
    .expect("no buffer of a departed member fills up")
    .unwrap();
}

#[tokio::test]
async fn a_bad_task_fails_at_subscribe() {
    let bus = MemoryBus::new();
    let err = bus
        .subscribe(ReadTask::new("s").with_partition(0))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("partition"), "{err}");
    assert!(bus.subscribe(ReadTask::new("")).await.is_err());
    assert_subscribed(&bus, "s", 0);
}

/// Fails a message's first delivery with `delay`, and records every delivery with the
/// attempt the bus reported.
fn delaying(
    delay: Duration,
    tx: mpsc::UnboundedSender<(String, Option<u32>, tokio::time::Instant)>,
) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            let attempt = m.delivery_attempt();
            let _ = tx.send((
                String::from_utf8_lossy(&m.data).into_owned(),
                attempt,
                tokio::time::Instant::now(),
            ));
            if attempt == Some(1) && m.data.starts_with(b"slow") {
                Err::<(), BoxError>(streams_core::RetryAfter::new(delay, "rate limited").into())
            } else {
                Ok(())
            }
        }
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_message_does_not_hold_its_lane() {
    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = bus.subscribe(ReadTask::new("s")).await.unwrap();
    let reader = tokio::spawn(sub.run(delaying(Duration::from_millis(500), tx), cancel.clone()));
    bus.write(vec![Message::new("s", "slow"), Message::new("s", "fast")])
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    // One lane: "fast" was handled while "slow" waited, and "slow" came back as attempt 2.
    let order: Vec<_> = got.iter().map(|(d, a, _)| (d.as_str(), *a)).collect();
    assert_eq!(
        order,
        [("slow", Some(1)), ("fast", Some(1)), ("slow", Some(2))]
    );
    let away = got[2].2 - got[0].2;
    assert!(away >= Duration::from_millis(500), "back after {away:?}");
    assert!(
        got[1].2 - got[0].2 < Duration::from_millis(400),
        "fast waited"
    );
    cancel.cancel();
    reader.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_delay_delivers_again_at_once() {
    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = bus.subscribe(ReadTask::new("s")).await.unwrap();
    let reader = tokio::spawn(sub.run(delaying(Duration::ZERO, tx), cancel.clone()));
    bus.write(vec![Message::new("s", "slow")]).await.unwrap();
    let first = rx.recv().await.unwrap();
    let second = tokio::time::timeout(Duration::from_secs(1), rx.recv())
        .await
        .expect("redelivered at once")
        .unwrap();
    assert_eq!((first.1, second.1), (Some(1), Some(2)));
    cancel.cancel();
    reader.await.unwrap().unwrap();
}

/// The bus keeps a packed copy of each message for a redelivery; what comes back is the
/// message as written, every field, with the next attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_message_is_the_message_as_written() {
    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = bus.subscribe(ReadTask::new("s")).await.unwrap();
    let h = handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move {
            let first = m.delivery_attempt() == Some(1);
            let _ = tx.send(m);
            if first {
                Err::<(), BoxError>(streams_core::RetryAfter::new(Duration::ZERO, "again").into())
            } else {
                Ok(())
            }
        }
    }));
    let reader = tokio::spawn(sub.run(h, cancel.clone()));
    let written = Message::new("s", vec![0u8, 255, 7])
        .with_key("k-ü")
        .with_header("tenant", "acme")
        .with_header("", "empty name")
        .with_content_type("application/x-thing");
    bus.write(vec![written.clone()]).await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap(),
        );
    }
    for (m, attempt) in got.iter_mut().zip([1, 2]) {
        assert_eq!(m.delivery_attempt(), Some(attempt));
        m.metadata = Default::default();
        assert_eq!(*m, written);
    }
    cancel.cancel();
    reader.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_member_leaving_delivers_delayed_messages_before_it_ends() {
    let bus = Arc::new(MemoryBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = bus
        .subscribe(ReadTask::new("s").with_group("g"))
        .await
        .unwrap();
    let reader = tokio::spawn(sub.run(delaying(Duration::from_millis(300), tx), cancel.clone()));
    bus.write(vec![Message::new("s", "slow")]).await.unwrap();
    assert_eq!(rx.recv().await.unwrap().1, Some(1));
    // Shutdown while the redelivery is pending: it is delivered, then the read ends.
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("reader ends once the delayed message is handled")
        .unwrap()
        .unwrap();
    let again = rx.try_recv().expect("the delayed message was not lost");
    assert_eq!(again.1, Some(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_leaving_leaves_its_delayed_messages_to_the_group() {
    let bus = Arc::new(MemoryBus::new());
    let task = ReadTask::new("s").with_group("g");
    let (tx_a, mut rx_a) = mpsc::unbounded_channel();
    let (tx_b, mut rx_b) = mpsc::unbounded_channel();
    let cancel_a = CancellationToken::new();
    let a = bus.subscribe(task.clone()).await.unwrap();
    let a = tokio::spawn(a.run(delaying(Duration::from_millis(300), tx_a), cancel_a.clone()));
    bus.write(vec![Message::new("s", "slow")]).await.unwrap();
    assert_eq!(rx_a.recv().await.unwrap().1, Some(1));
    // B joins; A leaves before the delay is over and ends at once.
    let cancel_b = CancellationToken::new();
    let b = bus.subscribe(task).await.unwrap();
    let b = tokio::spawn(b.run(delaying(Duration::from_millis(300), tx_b), cancel_b.clone()));
    cancel_a.cancel();
    tokio::time::timeout(Duration::from_millis(200), a)
        .await
        .expect("a member that is not the last leaves at once")
        .unwrap()
        .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(5), rx_b.recv())
        .await
        .expect("the remaining member gets the delayed message")
        .unwrap();
    assert_eq!((again.0.as_str(), again.1), ("slow", Some(2)));
    assert!(rx_a.try_recv().is_err());
    cancel_b.cancel();
    b.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_full_of_delayed_messages_pushes_back_on_publishers() {
    // One lane holding two messages: with two delayed, the lane takes nothing new and
    // the buffer fills behind it.
    let bus = Arc::new(
        MemoryBus::builder()
            .with_queue_depth(2)
            .with_fail_fast(true)
            .build(),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let sub = bus.subscribe(ReadTask::new("s")).await.unwrap();
    let reader = tokio::spawn(sub.run(delaying(Duration::from_secs(1), tx), cancel.clone()));
    bus.write(vec![Message::new("s", "slow-1")]).await.unwrap();
    bus.write(vec![Message::new("s", "slow-2")]).await.unwrap();
    for _ in 0..2 {
        assert_eq!(rx.recv().await.unwrap().1, Some(1));
    }
    bus.write(vec![Message::new("s", "a"), Message::new("s", "b")])
        .await
        .unwrap();
    let err = bus.write(vec![Message::new("s", "c")]).await.unwrap_err();
    assert!(matches!(err, Error::Full { .. }), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_millis(300), rx.recv())
            .await
            .is_err(),
        "nothing new is handled while the lane is full of delayed messages"
    );
    // Once they are due, everything flows again.
    let mut rest = Vec::new();
    while rest.len() < 4 {
        rest.push(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap()
                .unwrap()
                .0,
        );
    }
    rest.sort();
    assert_eq!(rest, ["a", "b", "slow-1", "slow-2"]);
    cancel.cancel();
    reader.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_lane_does_not_hold_back_the_other_lanes_of_a_batch() {
    // Two lanes of two messages each; "slow" and "fast" hash to different lanes.
    let bus = Arc::new(
        MemoryBus::builder()
            .with_queue_depth(4)
            .with_concurrency(2)
            .build(),
    );
    let gate = Arc::new(Semaphore::new(0));
    let (tx, mut fast) = mpsc::unbounded_channel();
    let g = gate.clone();
    let h = handler(tower::service_fn(move |m: Message| {
        let (g, tx) = (g.clone(), tx.clone());
        async move {
            if m.key.as_deref() == Some("slow") {
                g.acquire().await.unwrap().forget();
            } else {
                tx.send(m.data).unwrap();
            }
            Ok::<_, BoxError>(())
        }
    }));
    let cancel = CancellationToken::new();
    let sub = bus.subscribe(ReadTask::new("s")).await.unwrap();
    let reader = tokio::spawn(sub.run(h, cancel.clone()));
    let batch: Vec<_> = (0..20)
        .map(|i| {
            let key = if i % 2 == 0 { "slow" } else { "fast" };
            Message::new("s", format!("{i}")).with_key(key)
        })
        .collect();
    let writing = {
        let bus = bus.clone();
        tokio::spawn(async move { bus.write(batch).await })
    };
    for _ in 0..10 {
        tokio::time::timeout(Duration::from_secs(5), fast.recv())
            .await
            .expect("the fast lane's messages arrive while the slow lane is stuck")
            .unwrap();
    }
    assert!(
        !writing.is_finished(),
        "the slow lane's messages still wait"
    );
    gate.add_permits(10);
    tokio::time::timeout(Duration::from_secs(5), writing)
        .await
        .expect("the write finishes once the slow lane moves")
        .unwrap()
        .unwrap();
    cancel.cancel();
    reader.await.unwrap().unwrap();
}
