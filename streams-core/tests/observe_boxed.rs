//! An observed reader given a handler already boxed, in a test binary of its own: a test
//! without a `tracing` subscriber, run beside `observe.rs`'s scoped one in the same
//! process, can leave the `streams.handle` callsite's cached interest at "never" for it.

use std::sync::Arc;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use streams_chanbuf::MemoryBus;
use streams_core::observe::{ObservedReader, MESSAGES_HANDLED};
use streams_core::{BoxError, Message, ReadTask, Writer};

/// A handler given to `Subscription::run` already boxed (not through a router) is observed
/// too, and an observed reader inside another counts each message once.
#[tokio::test]
async fn a_boxed_handler_and_nested_observed_readers_count_once() {
    use streams_core::{handler, CancellationToken, Reader};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(&recorder);

    let bus = Arc::new(MemoryBus::new());
    let reader = ObservedReader::new(ObservedReader::new(bus.clone()));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let subscription = reader.subscribe(ReadTask::new("orders")).await.unwrap();
    let cancel = CancellationToken::new();
    let reading = tokio::spawn(subscription.run(
        handler(tower::service_fn(move |msg: Message| {
            let _ = tx.send(msg.id.clone());
            std::future::ready(Ok::<_, BoxError>(()))
        })),
        cancel.clone(),
    ));
    bus.write(vec![
        Message::new("orders", "a").with_id("m-1"),
        Message::new("orders", "b").with_id("m-2"),
    ])
    .await
    .unwrap();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    cancel.cancel();
    reading.await.unwrap().unwrap();

    let handled: u64 = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == MESSAGES_HANDLED)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum();
    assert_eq!(handled, 2);
}
