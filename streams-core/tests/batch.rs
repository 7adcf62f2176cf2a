//! Batch handlers through the router, typed batches and an observed reader, on the
//! in-process bus.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_chanbuf::MemoryBus;
use streams_core::{
    Batch, BatchOutcome, BatchSize, BoxError, Event, EventRegistry, Message, ObservedReader,
    Publisher, ReadTask, Router, Writer,
};

#[derive(Debug, serde::Serialize, serde::Deserialize, PartialEq)]
struct Paid {
    invoice: u32,
}
impl Event for Paid {}

#[tokio::test]
async fn typed_batches_decode_each_event_and_fail_only_the_undecodable() {
    let bus = Arc::new(MemoryBus::new());
    let registry = Arc::new(EventRegistry::new());
    registry.register::<Paid>("payments");
    let mut router = Router::new(bus.clone(), registry.clone());
    let seen = Arc::new(Mutex::new(Vec::new()));
    let s = seen.clone();
    router
        .subscribe_typed_batch(
            BatchSize::new(10, Duration::from_millis(50)),
            move |events: Vec<(Paid, Message)>| {
                let s = s.clone();
                async move {
                    let mut outcome = BatchOutcome::ok();
                    for (i, (paid, _)) in events.iter().enumerate() {
                        if paid.invoice == 3 {
                            outcome.fail(i, "invoice 3 is disputed");
                        }
                    }
                    s.lock().unwrap().push(
                        events
                            .into_iter()
                            .map(|(p, _)| p.invoice)
                            .collect::<Vec<_>>(),
                    );
                    Ok::<_, BoxError>(outcome)
                }
            },
        )
        .unwrap();
    // An outcome recorder in front, through the untyped path, on the same stream.
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o = outcomes.clone();
    let inner = streams_core::typed_batch(|events: Vec<(Paid, Message)>| async move {
        let _ = events;
        Ok::<_, BoxError>(BatchOutcome::ok())
    });
    let inner = streams_core::batch_handler(inner);
    router.subscribe_batch(
        ReadTask::new("payments"),
        BatchSize::new(10, Duration::from_millis(50)),
        tower::service_fn(move |b: Batch| {
            let o = o.clone();
            let mut inner = inner.clone();
            async move {
                let outcome = streams_core::call_batch_handler(&mut inner, b).await;
                o.lock().unwrap().push(outcome.failed_indices());
                Ok::<_, BoxError>(outcome)
            }
        }),
    );
    router.start().await.unwrap();
    let publisher = Publisher::new(bus.clone(), registry.clone());
    let mut messages = Vec::new();
    for invoice in 0..5 {
        messages.push(publisher.message("payments", &Paid { invoice }).unwrap());
    }
    let mut bad = Message::new("payments", "{not json");
    bad.content_type = streams_core::CONTENT_TYPE_JSON.into();
    messages.insert(2, bad);
    bus.write(messages).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while outcomes.lock().unwrap().is_empty() || seen.lock().unwrap().is_empty() {
        assert!(Instant::now() < deadline, "no batch arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    router.shutdown(Duration::from_secs(5)).await.unwrap();
    assert_eq!(*seen.lock().unwrap(), vec![vec![0, 1, 2, 3, 4]]);
    // The undecodable message (index 2) is a failed message, not a failed batch.
    assert_eq!(*outcomes.lock().unwrap(), vec![vec![2]]);
}

#[tokio::test]
async fn an_observed_reader_forwards_batches_to_the_native_path() {
    let bus = Arc::new(MemoryBus::new());
    let reader = ObservedReader::new(bus.clone());
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s = sizes.clone();
    let mut router = Router::new(Arc::new(reader), Arc::new(EventRegistry::new()));
    router.subscribe_batch(
        ReadTask::new("orders"),
        BatchSize::new(100, Duration::from_millis(50)),
        tower::service_fn(move |b: Batch| {
            s.lock().unwrap().push(b.len());
            async { Ok::<_, BoxError>(BatchOutcome::ok()) }
        }),
    );
    router.start().await.unwrap();
    bus.write(
        (0..50)
            .map(|i| Message::new("orders", i.to_string()))
            .collect(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sizes.lock().unwrap().iter().sum::<usize>() < 50 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    router.shutdown(Duration::from_secs(5)).await.unwrap();
    // One lane: the native path takes what waits as one batch; the generic one could
    // not (concurrency would cap batches at the lane count).
    assert!(
        sizes.lock().unwrap().len() <= 2,
        "{:?}",
        sizes.lock().unwrap()
    );
}

#[tokio::test]
async fn a_default_group_reader_forwards_batches_with_its_group() {
    let bus = Arc::new(MemoryBus::new());
    let reader = streams_core::DefaultGroupReader::new(bus.clone(), "billing");
    let sizes = Arc::new(Mutex::new(Vec::new()));
    let s = sizes.clone();
    let mut router = Router::new(Arc::new(reader), Arc::new(EventRegistry::new()));
    router.subscribe_batch(
        ReadTask::new("orders"),
        BatchSize::new(100, Duration::from_millis(50)),
        tower::service_fn(move |b: Batch| {
            s.lock().unwrap().push(b.len());
            async { Ok::<_, BoxError>(BatchOutcome::ok()) }
        }),
    );
    router.start().await.unwrap();
    assert_eq!(bus.subscribers("orders"), 1);
    bus.write(
        (0..50)
            .map(|i| Message::new("orders", i.to_string()))
            .collect(),
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sizes.lock().unwrap().iter().sum::<usize>() < 50 {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    router.shutdown(Duration::from_secs(5)).await.unwrap();
    assert!(
        sizes.lock().unwrap().len() <= 2,
        "{:?}",
        sizes.lock().unwrap()
    );
}
