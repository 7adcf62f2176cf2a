//! `connect` against every enabled platform, and its errors.
//!
//! Services: Kafka at `STREAMS_KAFKA_BROKERS` (default `localhost:9092`), the AWS
//! emulator at `STREAMS_AWS_ENDPOINT` (default `http://127.0.0.1:4566`), PostgreSQL at
//! `STREAMS_POSTGRES_URL` and MySQL at `STREAMS_MYSQL_URL`. Each test uses its own
//! topic, queue or table.

#![allow(dead_code, unreachable_pub)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use streams::{
    connect, handler, BoxError, CancellationToken, Connection, Error, Message, ReadTask,
};
use tokio::sync::mpsc;

fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() % 1_000_000_000_000)
        .unwrap_or(0);
    format!(
        "{prefix}-{}-{nanos}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

fn invalid_reason(err: Error) -> String {
    match err {
        Error::Invalid { reason, .. } => reason,
        other => panic!("want Error::Invalid, got {other}"),
    }
}

async fn connect_err(url: &str) -> String {
    invalid_reason(connect(url).await.expect_err(url))
}

/// Writes `count` messages to `stream`, then reads them back through the connection's
/// reader with `task`, and checks that exactly those ids arrived.
async fn write_then_read(conn: &Connection, stream: &str, task: ReadTask, count: usize) {
    let batch: Vec<Message> = (0..count)
        .map(|i| Message::new(stream, format!("payload-{i}")).with_key(format!("k{i}")))
        .collect();
    let mut want: Vec<String> = batch.iter().map(|m| m.id.clone()).collect();
    conn.writer().write(batch).await.expect("write");

    let (tx, mut rx) = mpsc::unbounded_channel();
    let forward = handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).map_err(BoxError::from) }
    }));
    let cancel = CancellationToken::new();
    let reader = conn.reader().expect("reader");
    let c = cancel.clone();
    let running = tokio::spawn(async move { reader.read(task, forward, c).await });

    let mut got = Vec::new();
    while got.len() < count {
        // A bound on a hung platform, not a synchronisation: messages end the wait.
        match tokio::time::timeout(Duration::from_secs(60), rx.recv()).await {
            Ok(Some(m)) => {
                assert_eq!(m.stream, stream);
                got.push(m.id);
            }
            Ok(None) => panic!("reader ended after {} of {count} messages", got.len()),
            Err(_) => panic!("only {} of {count} messages arrived", got.len()),
        }
    }
    cancel.cancel();
    running.await.expect("reader task").expect("reader");
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn unknown_scheme_lists_supported_and_enabled_schemes() {
    let reason = connect_err("mqtt://localhost:1883").await;
    assert!(reason.contains("unknown scheme `mqtt`"), "{reason}");
    for scheme in [
        "memory://",
        "amqp://",
        "kafka://",
        "nats://",
        "redis://",
        "sqs://",
        "sns://",
        "postgres://",
        "mysql://",
    ] {
        assert!(reason.contains(scheme), "{scheme} missing from: {reason}");
    }
    assert!(reason.contains("enabled in this build: "), "{reason}");
    #[cfg(feature = "chanbuf")]
    assert!(
        reason.contains("enabled in this build: memory://"),
        "{reason}"
    );
}

#[tokio::test]
async fn malformed_urls_are_invalid() {
    assert!(connect_err("no scheme at all")
        .await
        .contains("<scheme>://"));
    assert!(connect_err("").await.contains("<scheme>://"));
    #[cfg(feature = "chanbuf")]
    {
        let reason = connect_err("memory://?queue_depth=lots").await;
        assert!(reason.contains("positive integer"), "{reason}");
        let reason = connect_err("memory://?buffer=8").await;
        assert!(reason.contains("unknown parameter `buffer`"), "{reason}");
    }
    #[cfg(feature = "kafka")]
    {
        let reason = connect_err("kafka://broker:port").await;
        assert!(reason.contains("malformed broker"), "{reason}");
    }
    #[cfg(feature = "sqs")]
    {
        let reason = connect_err("sqs://host:70000").await;
        assert!(reason.contains("malformed host `host:70000`"), "{reason}");
    }
}

#[cfg(not(feature = "chanbuf"))]
#[tokio::test]
async fn memory_needs_the_chanbuf_feature() {
    let reason = connect_err("memory://").await;
    assert!(reason.contains("`chanbuf` feature"), "{reason}");
}

#[cfg(not(feature = "kafka"))]
#[tokio::test]
async fn kafka_needs_the_kafka_feature() {
    let reason = connect_err("kafka://localhost:9092").await;
    assert!(reason.contains("`kafka` feature"), "{reason}");
    assert!(!reason.contains("enabled in this build: kafka"), "{reason}");
}

#[cfg(not(feature = "nats"))]
#[tokio::test]
async fn nats_needs_the_nats_feature() {
    let reason = connect_err("nats://localhost:4222").await;
    assert!(reason.contains("`nats` feature"), "{reason}");
}

#[cfg(feature = "nats")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_round_trip_with_the_group_of_the_url() {
    let servers = streams_testkit::nats_servers();
    let stream = unique("facade-nats");
    let conn = connect(&format!("nats://{servers}?group=g"))
        .await
        .expect("connect nats://");
    assert_eq!(conn.platform(), "nats");
    conn.create_stream(&stream, 1).await.expect("create stream");
    // No group on the task: the URL's group applies, a durable consumer that starts at
    // the beginning of the stream, so messages written before it was created arrive.
    write_then_read(&conn, &stream, ReadTask::new(&stream), 5).await;
    conn.delete_stream(&stream).await.expect("delete stream");
    conn.writer().close().await.expect("close");
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_round_trip_with_the_group_of_the_url() {
    let url = streams_testkit::redis_url();
    let stream = unique("facade-redis");
    let conn = connect(&format!("{url}?group=g&block=200ms"))
        .await
        .expect("connect redis://");
    assert_eq!(conn.platform(), "redis");
    // No group on the task: the URL's group applies, created at the start of the
    // stream, so entries written before it arrive.
    write_then_read(&conn, &stream, ReadTask::new(&stream), 5).await;
    conn.delete_stream(&stream).await.expect("delete stream");
}

#[cfg(feature = "amqp")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn amqp_round_trip_with_the_group_of_the_url() {
    let url = streams_testkit::amqp_url();
    let stream = unique("facade-amqp");
    let conn = connect(&format!("{url}?group=g"))
        .await
        .expect("connect amqp://");
    assert_eq!(conn.platform(), "amqp");
    conn.create_stream(&stream, 1).await.expect("create stream");
    // The group's queue is made when its reader attaches: attach first (the round trip
    // reads with the URL's group, so its queue then holds what is written).
    let reader = conn.reader().expect("reader");
    drop(
        reader
            .subscribe(ReadTask::new(&stream))
            .await
            .expect("attach"),
    );
    write_then_read(&conn, &stream, ReadTask::new(&stream), 5).await;
    conn.delete_stream(&stream).await.expect("delete stream");
}

#[cfg(not(feature = "sqs"))]
#[tokio::test]
async fn sqs_needs_the_sqs_feature() {
    let reason = connect_err("sqs://").await;
    assert!(reason.contains("`sqs` feature"), "{reason}");
}

#[cfg(not(feature = "sns"))]
#[tokio::test]
async fn sns_needs_the_sns_feature() {
    let reason = connect_err("sns://").await;
    assert!(reason.contains("`sns` feature"), "{reason}");
}

#[cfg(not(feature = "sql"))]
#[tokio::test]
async fn sql_needs_the_sql_feature() {
    for url in ["postgres://db/app", "mysql://db/app"] {
        let reason = connect_err(url).await;
        assert!(reason.contains("`sql` feature"), "{reason}");
    }
}

#[cfg(feature = "chanbuf")]
#[tokio::test]
async fn memory_connections_are_separate_buses() {
    let a = connect("memory://").await.expect("a");
    let b = connect("memory://").await.expect("b");
    assert!(a.has_reader() && b.has_reader());
    assert!(!Arc::ptr_eq(&a.writer(), &b.writer()));
    let (writer, reader) = a.clone().into_parts();
    assert!(Arc::ptr_eq(&writer, &a.writer()));
    assert!(reader.is_some());
    a.event_bus().expect("bus over a memory connection");
}

#[test]
fn connection_is_send_sync_and_writer_only_parts_refuse_a_reader() {
    fn assert_send_sync<T: Send + Sync + 'static>() {}
    assert_send_sync::<Connection>();
    assert_send_sync::<streams::DefaultGroupReader<Arc<dyn streams::Reader>>>();

    #[derive(Debug)]
    struct Nowhere;
    #[streams::async_trait]
    impl streams::Writer for Nowhere {
        async fn write(&self, _batch: Vec<Message>) -> streams::Result<()> {
            Ok(())
        }
        async fn close(&self) -> streams::Result<()> {
            Ok(())
        }
    }
    let conn = Connection::new("sns", Arc::new(Nowhere), None);
    assert!(!conn.has_reader());
    let reason = invalid_reason(conn.reader().expect_err("write-only"));
    assert!(
        reason.contains("`sns://` connections are write-only"),
        "{reason}"
    );
    assert!(conn.event_bus().is_err());
}

// ---------------------------------------------------------------- Kafka

#[cfg(feature = "kafka")]
fn kafka_brokers() -> String {
    streams_testkit::kafka_brokers()
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_round_trip_with_the_group_of_the_url() {
    use streams::kafka::{create_topic, KafkaConfig};

    let brokers = kafka_brokers();
    let topic = unique("facade-kafka");
    // tansu creates no topics on demand.
    create_topic(&KafkaConfig::new(&brokers), &topic, 2, 1)
        .await
        .expect("create topic");
    let url = format!(
        "kafka://{brokers}?group=g-{topic}&session.timeout.ms=6000&heartbeat.interval.ms=1000"
    );
    let conn = connect(&url).await.expect("connect kafka://");
    assert_eq!(conn.platform(), "kafka");
    // No group on the task: the URL's group applies. The reader starts at the earliest
    // offset, so messages written before it joined arrive.
    write_then_read(&conn, &topic, ReadTask::new(&topic), 5).await;
    conn.writer().close().await.expect("close");
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_without_group_in_url_keeps_tasks_as_they_are() {
    let conn = connect("kafka://127.0.0.1:1?client.id=facade-test")
        .await
        .expect("creating clients needs no broker");
    assert!(conn.has_reader());
    assert!(!format!("{:?}", conn.reader().unwrap()).contains("DefaultGroupReader"));
    let conn = connect("kafka://127.0.0.1:1?group=billing")
        .await
        .expect("group");
    let debug = format!("{:?}", conn.reader().unwrap());
    assert!(
        debug.contains("DefaultGroupReader") && debug.contains("billing"),
        "{debug}"
    );
}

#[cfg(feature = "kafka")]
#[tokio::test]
async fn kafka_settings_reach_librdkafka() {
    let err = connect("kafka://127.0.0.1:1?no.such.property=1")
        .await
        .expect_err("librdkafka rejects unknown properties");
    assert!(err.to_string().contains("no.such.property"), "{err}");
}

// ---------------------------------------------------------------- AWS

#[cfg(any(feature = "sqs", feature = "sns"))]
fn aws_host() -> String {
    let endpoint = streams_testkit::aws_endpoint();
    let url = streams::ConnectUrl::parse("http", &endpoint).expect("STREAMS_AWS_ENDPOINT is a URL");
    url.hosts
}

#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_round_trip() {
    let host = aws_host();
    let stream = unique("facade-sqs");
    let admin = streams::sqs::SqsClient::builder()
        .with_endpoint(format!("http://{host}"))
        .with_region("us-east-1")
        .with_static_credentials("test", "test")
        .connect()
        .await;
    admin.create_queue(&stream).await.expect("create queue");

    let conn = connect(&format!("sqs://test:test@{host}?region=us-east-1"))
        .await
        .expect("connect sqs://");
    assert_eq!(conn.platform(), "sqs");
    write_then_read(&conn, &stream, ReadTask::new(&stream), 5).await;
    admin.delete_queue(&stream).await.expect("delete queue");
}

#[cfg(feature = "sns")]
#[tokio::test]
async fn sns_is_write_only() {
    let host = aws_host();
    let stream = unique("facade-sns");
    let url = format!("sns://test:test@{host}?region=us-east-1&account_id=123456789012");
    let admin = streams::sns::SnsWriter::builder()
        .with_endpoint(format!("http://{host}"))
        .with_region("us-east-1")
        .with_static_credentials("test", "test")
        .with_account_id("123456789012")
        .connect()
        .await
        .expect("admin");
    admin.create_topic(&stream).await.expect("create topic");

    let conn = connect(&url).await.expect("connect sns://");
    assert_eq!(conn.platform(), "sns");
    conn.writer()
        .write(vec![Message::new(&stream, "hello")])
        .await
        .expect("publish through the URL's writer");
    let reason = invalid_reason(conn.reader().expect_err("write-only"));
    assert!(reason.contains("write-only"), "{reason}");
}

// ---------------------------------------------------------------- SQL

#[cfg(feature = "sql")]
#[tokio::test]
async fn postgres_outbox_writer_is_write_only() {
    use streams::sql::sqlx;

    let db = streams_testkit::postgres_url();
    let table = unique("facade_pg").replace('-', "_");
    let conn = connect(&format!("{db}?table={table}&create_table=true"))
        .await
        .expect("connect postgres://");
    assert_eq!(conn.platform(), "postgres");
    conn.writer()
        .write(vec![Message::new("orders", "hello")])
        .await
        .expect("write");
    assert!(conn.reader().is_err());

    let pool = sqlx::PgPool::connect(&db).await.expect("pool");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}, {table}_quarantine"))
        .execute(&pool)
        .await
        .expect("drop");
}

#[cfg(feature = "sql")]
#[tokio::test]
async fn mysql_outbox_writer_is_write_only() {
    use streams::sql::sqlx;

    let db = streams_testkit::mysql_url();
    let table = unique("facade_my").replace('-', "_");
    let conn = connect(&format!("{db}?table={table}&create_table=true"))
        .await
        .expect("connect mysql://");
    assert_eq!(conn.platform(), "mysql");
    conn.writer()
        .write(vec![Message::new("orders", "hello")])
        .await
        .expect("write");
    assert!(conn.reader().is_err());

    let pool = sqlx::MySqlPool::connect(&db).await.expect("pool");
    let rows: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&pool)
        .await
        .expect("count");
    assert_eq!(rows, 1);
    sqlx::query(&format!("DROP TABLE IF EXISTS {table}, {table}_quarantine"))
        .execute(&pool)
        .await
        .expect("drop");
}
