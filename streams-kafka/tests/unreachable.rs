//! Against an address where nothing listens, every first contact fails within the
//! connect time-out (20 s by default) with one line naming the platform, the address
//! and the cause. Needs no broker.

mod common;

use std::time::{Duration, Instant};

use streams_core::{CancellationToken, Error, Message, ReadTask, Reader, Writer};
use streams_kafka::{create_topic, delete_topic, KafkaConfig, KafkaReader, KafkaWriter};

const NOWHERE: &str = "127.0.0.1:1";

fn assert_connect_error(what: &str, e: &Error, within: &str) {
    let text = e.to_string();
    assert!(
        text.starts_with(&format!(
            "kafka: connect failed: no broker answered at {NOWHERE} within {within}"
        )),
        "{what}: {text}"
    );
    assert!(!text.contains('\n'), "{what}: one line: {text}");
    assert!(text.len() <= 350, "{what}: short: {text}");
    assert!(
        e.is_retryable(),
        "{what}: an unreachable broker may come back"
    );
    assert!(!e.is_message_fault(), "{what}: not the messages' fault");
}

async fn read(config: KafkaConfig, task: ReadTask) -> Error {
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    KafkaReader::new(config)
        .read(task, common::forwarding(tx), CancellationToken::new())
        .await
        .expect_err("read fails")
}

/// The default bound: every operation at once, so the test takes about 20 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_fails_within_30s_by_default() {
    let config = KafkaConfig::new(NOWHERE);
    let started = Instant::now();
    let writer = KafkaWriter::new(&config).expect("writer");
    let (write, group_read, direct_read, create, delete) = tokio::join!(
        writer.write(vec![Message::new("t", "x")]),
        read(config.clone(), ReadTask::new("t").with_group("g")),
        read(config.clone(), ReadTask::new("t").with_partition(0)),
        create_topic(&config, "t", 1, 1),
        delete_topic(&config, "t"),
    );
    let took = started.elapsed();
    assert!(took < Duration::from_secs(30), "took {took:?}");
    assert!(
        took >= Duration::from_secs(15),
        "waited the bound: {took:?}"
    );
    assert_connect_error("write", &write.expect_err("write fails"), "20s");
    assert_connect_error("group read", &group_read, "20s");
    assert_connect_error("direct read", &direct_read, "20s");
    assert_connect_error("create_topic", &create.expect_err("create fails"), "20s");
    assert_connect_error("delete_topic", &delete.expect_err("delete fails"), "20s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bound_is_a_setting() {
    let config = KafkaConfig::new(NOWHERE).with_connect_timeout(Duration::from_secs(2));
    let started = Instant::now();
    let writer = KafkaWriter::new(&config).expect("writer");
    let e = writer
        .write(vec![Message::new("t", "x")])
        .await
        .expect_err("write fails");
    assert_connect_error("write", &e, "2s");
    // librdkafka says why: the connection was refused.
    assert!(e.to_string().contains("Connection refused"), "{e}");
    // The next write asks again rather than waiting on librdkafka's own time-out.
    let e = writer
        .write(vec![Message::new("t", "y")])
        .await
        .expect_err("write fails again");
    assert_connect_error("second write", &e, "2s");
    let e = read(config, ReadTask::new("t").with_group("g")).await;
    assert_connect_error("read", &e, "2s");
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
}

/// Task fields Kafka cannot honour together are refused at once, naming the field,
/// before any broker is asked.
#[tokio::test]
async fn contradictory_read_tasks_are_refused_before_contact() {
    let config = || KafkaConfig::new(NOWHERE);
    for (task, field) in [
        (
            ReadTask::new("t").with_group("g").with_partition(0),
            "`group` with `partition`",
        ),
        (
            ReadTask::new("t").with_group("g").with_start_offset(5),
            "`start_offset` needs a `partition`",
        ),
        (
            ReadTask::new("t").with_group("g").with_arg("from", "end"),
            "argument `from`",
        ),
    ] {
        let started = Instant::now();
        let e = read(config(), task).await;
        assert!(matches!(e, Error::Invalid { .. }), "{e}");
        assert!(e.to_string().contains(field), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "no contact attempted"
        );
    }
}
