//! Behaviour specific to the in-process bus: backpressure, bounds, shutdown.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams_chanbuf::ChanBus;
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

async fn until_subscribed(bus: &ChanBus, stream: &str, groups: usize) {
    for _ in 0..200 {
        if bus.subscribers(stream) == groups {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("subscription to {stream} not registered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_subscriber_gets_every_message_and_groups_share() {
    let bus = Arc::new(ChanBus::new());
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
        readers.spawn(async move { bus.read(task, collecting(tx), cancel).await });
    }
    until_subscribed(&bus, "s", 2).await;
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
    let bus = Arc::new(ChanBus::builder().capacity(2).build());
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
        tokio::spawn(async move { bus.read(ReadTask::new("s"), slow, cancel).await })
    };
    until_subscribed(&bus, "s", 1).await;
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
    let bus = Arc::new(ChanBus::new());
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
        tokio::spawn(async move {
            bus.read(ReadTask::new("s").with_concurrency(3), h, cancel)
                .await
        })
    };
    until_subscribed(&bus, "s", 1).await;
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
async fn handler_timeout_and_failures_do_not_stop_the_reader() {
    let bus = Arc::new(
        ChanBus::builder()
            .handler_timeout(Duration::from_millis(50))
            .build(),
    );
    let ok = Arc::new(AtomicUsize::new(0));
    let o = ok.clone();
    let h = handler(tower::service_fn(move |m: Message| {
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
    }));
    let cancel = CancellationToken::new();
    let reader = {
        let (bus, cancel) = (bus.clone(), cancel.clone());
        tokio::spawn(async move { bus.read(ReadTask::new("s"), h, cancel).await })
    };
    until_subscribed(&bus, "s", 1).await;
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
    let bus = Arc::new(ChanBus::new());
    let (tx, mut rx) = mpsc::unbounded_channel();
    let reader = {
        let bus = bus.clone();
        tokio::spawn(async move {
            bus.read(ReadTask::new("s"), collecting(tx), CancellationToken::new())
                .await
        })
    };
    until_subscribed(&bus, "s", 1).await;
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
    let bus = ChanBus::new();
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
