//! Connections from `connect` are observed: publish and handle are counted.
#![cfg(feature = "chanbuf")]

use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use streams::observe::{MESSAGES_HANDLED, MESSAGES_PUBLISHED};
use streams::{BoxError, Message, ReadTask, Router};

#[tokio::test(flavor = "current_thread")]
async fn connect_counts_published_and_handled_messages() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // A local recorder: the current-thread runtime runs everything on this thread.
    let _recorder = metrics::set_default_local_recorder(&recorder);

    let conn = streams::connect("memory://").await.unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut sub = Router::new(conn.reader().unwrap(), Default::default());
    sub.subscribe(
        ReadTask::new("orders"),
        tower::service_fn(move |m: Message| {
            let _ = tx.send(m.id);
            async { Ok::<_, BoxError>(()) }
        }),
    );
    sub.start().await.unwrap();
    conn.writer()
        .write(vec![
            Message::new("orders", "a"),
            Message::new("orders", "b"),
        ])
        .await
        .unwrap();
    for _ in 0..2 {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .unwrap()
            .unwrap();
    }
    sub.shutdown(Duration::from_secs(5)).await.unwrap();

    // One snapshot: taking one resets the counters it reports.
    let snapshot = snapshotter.snapshot().into_vec();
    let count = |name: &str| {
        snapshot.iter().find_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n)
                if key.key().name() == name
                    && key
                        .key()
                        .labels()
                        .any(|l| l.key() == "stream" && l.value() == "orders") =>
            {
                Some(*n)
            }
            _ => None,
        })
    };
    assert_eq!(count(MESSAGES_PUBLISHED), Some(2));
    assert_eq!(count(MESSAGES_HANDLED), Some(2));
}
