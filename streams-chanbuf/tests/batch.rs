//! Batch handlers on the in-process bus: native batches per lane.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_chanbuf::MemoryBus;
use streams_core::{
    batch_handler, Batch, BatchHandler, BatchOutcome, BatchSize, BoxError, CancellationToken,
    Error, Message, ReadTask, Reader, Writer,
};

type Seen = Arc<Mutex<Vec<Vec<Message>>>>;

/// Records every batch; fails the messages whose payload is in `fail`.
fn recording(seen: Seen, fail: &'static [&'static str]) -> BatchHandler {
    batch_handler(tower::service_fn(move |b: Batch| {
        let seen = seen.clone();
        async move {
            let outcome = BatchOutcome::from_results(b.messages().iter().map(|m| {
                if fail.iter().any(|f| m.data == f.as_bytes()) {
                    Err("refused")
                } else {
                    Ok(())
                }
            }));
            seen.lock().unwrap().push(b.into_messages());
            Ok::<_, BoxError>(outcome)
        }
    }))
}

fn keyed(key: &str, n: usize) -> Message {
    Message::new("orders", format!("{key}-{n}")).with_key(key)
}

async fn wait_for(seen: &Seen, messages: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while seen.lock().unwrap().iter().map(Vec::len).sum::<usize>() < messages {
        assert!(Instant::now() < deadline, "batches did not arrive");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_fill_per_lane_and_keep_order_per_key() {
    let bus = MemoryBus::new();
    let seen = Seen::default();
    let sub = bus
        .subscribe_batch(
            ReadTask::new("orders").with_concurrency(4),
            BatchSize::new(50, Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(recording(seen.clone(), &[]), cancel.clone()));
    let messages: Vec<_> = (0..200)
        .flat_map(|n| ["a", "b", "c", "d", "e"].map(|k| keyed(k, n)))
        .collect();
    bus.write(messages).await.unwrap();
    wait_for(&seen, 1000).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    assert!(seen.iter().all(|b| b.len() <= 50));
    assert!(
        seen.len() < 1000 / 2,
        "messages waiting are taken together: {} batches",
        seen.len()
    );
    let mut per_key: HashMap<String, Vec<String>> = HashMap::new();
    for b in seen.iter() {
        for m in b {
            per_key
                .entry(m.key.clone().unwrap())
                .or_default()
                .push(String::from_utf8(m.data.to_vec()).unwrap());
        }
    }
    for (key, got) in per_key {
        let want: Vec<_> = (0..200).map(|n| format!("{key}-{n}")).collect();
        assert_eq!(got, want, "order of key {key}");
    }
}

#[tokio::test]
async fn a_failed_message_in_the_middle_fails_alone_and_the_bus_goes_on() {
    let bus = MemoryBus::new();
    let seen = Seen::default();
    let sub = bus
        .subscribe_batch(
            ReadTask::new("orders"),
            BatchSize::new(10, Duration::from_millis(20)),
        )
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(recording(seen.clone(), &["a-2"]), cancel.clone()));
    bus.write((0..5).map(|n| keyed("a", n)).collect())
        .await
        .unwrap();
    wait_for(&seen, 5).await;
    bus.write(vec![keyed("a", 5)]).await.unwrap();
    wait_for(&seen, 6).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap();
    // At most once: the failed message is not handed over again.
    let all: Vec<_> = seen.iter().flatten().map(|m| m.data.clone()).collect();
    assert_eq!(all.len(), 6, "{all:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lone_message_is_handed_over_after_max_wait() {
    let bus = MemoryBus::new();
    let seen = Seen::default();
    let sub = bus
        .subscribe_batch(
            ReadTask::new("orders"),
            BatchSize::new(10, Duration::from_millis(500)),
        )
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(recording(seen.clone(), &[]), cancel.clone()));
    let started = tokio::time::Instant::now();
    bus.write(vec![keyed("a", 0)]).await.unwrap();
    while seen.lock().unwrap().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(started.elapsed() >= Duration::from_millis(500));
    assert!(started.elapsed() < Duration::from_millis(600));
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn cancel_while_collecting_hands_over_what_was_taken() {
    let bus = MemoryBus::new();
    let seen = Seen::default();
    let sub = bus
        .subscribe_batch(
            ReadTask::new("orders"),
            BatchSize::new(100, Duration::from_secs(120)),
        )
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(recording(seen.clone(), &[]), cancel.clone()));
    bus.write((0..3).map(|n| keyed("a", n)).collect())
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(seen.lock().unwrap().is_empty(), "still collecting");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("cancel cuts the wait short")
        .unwrap()
        .unwrap();
    let seen = seen.lock().unwrap();
    assert_eq!(seen.iter().map(Vec::len).sum::<usize>(), 3);
}

#[tokio::test]
async fn a_panicking_batch_handler_does_not_stop_the_reader() {
    let bus = MemoryBus::new();
    let calls = Arc::new(Mutex::new(Vec::new()));
    let c = calls.clone();
    let h = batch_handler(tower::service_fn(move |b: Batch| {
        let c = c.clone();
        async move {
            c.lock().unwrap().push(b.len());
            if b.messages()[0].data == "boom" {
                panic!("bad batch");
            }
            Ok::<_, BoxError>(BatchOutcome::ok())
        }
    }));
    let sub = bus
        .subscribe_batch(ReadTask::new("orders"), BatchSize::new(10, Duration::ZERO))
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let run = tokio::spawn(sub.run(h, cancel.clone()));
    bus.write(vec![Message::new("orders", "boom")])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while calls.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    bus.write(vec![Message::new("orders", "fine")])
        .await
        .unwrap();
    while calls.lock().unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "reader survived the panic");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    cancel.cancel();
    run.await.unwrap().unwrap();
}

#[tokio::test]
async fn bad_sizes_are_refused_naming_the_field() {
    let bus = MemoryBus::new();
    for (size, field) in [
        (BatchSize::new(0, Duration::ZERO), "`max_messages`"),
        (BatchSize::new(1_000_000, Duration::ZERO), "`max_messages`"),
        (BatchSize::new(1, Duration::from_secs(86_400)), "`max_wait`"),
    ] {
        let e = bus
            .subscribe_batch(ReadTask::new("orders"), size)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains(field), "{e}");
    }
    assert_eq!(bus.subscribers("orders"), 0, "a refused task joins nothing");
}
