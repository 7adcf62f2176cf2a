//! The commands run in-process on the in-process bus, where publisher and consumer
//! share one connection.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams::{CancellationToken, Connection, Message, ReadTask, Router};
use streams_cli::{consume, publish, redrive, ConsumeArgs, Output, PublishArgs, RedriveArgs};

/// Publishes `warm` messages on `stream` until `printed` shows one, so the consumer
/// started in the background is subscribed.
async fn until_subscribed(conn: &Connection, stream: &str, printed: impl Fn() -> usize) {
    for _ in 0..500 {
        if printed() > 0 {
            return;
        }
        conn.writer()
            .write(vec![Message::new(stream, "warm").with_header("warm", "1")])
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the consumer never subscribed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_prints_what_publish_sends_in_order() {
    let conn = streams::connect("memory://").await.unwrap();
    let (out, captured) = Output::buffer();
    let consumer = tokio::spawn({
        let conn = conn.clone();
        async move {
            let args = ConsumeArgs {
                stream: "orders".into(),
                idle: Some(Duration::from_millis(700)),
                concurrency: 1,
                ..Default::default()
            };
            consume(&conn, args, out, CancellationToken::new()).await
        }
    });
    until_subscribed(&conn, "orders", || captured.lines().len()).await;
    let args = PublishArgs {
        stream: "orders".into(),
        key: Some("customer-7".into()),
        headers: vec![("tenant".into(), "acme".into())],
        content_type: Some("application/json".into()),
        batch: 2,
        ..Default::default()
    };
    let stdin = tokio::io::BufReader::new(&b"{\"n\":1}\n{\"n\":2}\n\n{\"n\":3}\n"[..]);
    let published = publish(&conn, args, stdin).await.expect("publish");
    assert_eq!(published, 3);
    let printed = consumer.await.unwrap().expect("consume");
    let lines: Vec<serde_json::Value> = captured
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(printed as usize, lines.len());
    let ours: Vec<_> = lines
        .iter()
        .filter(|l| l["headers"]["warm"].is_null())
        .collect();
    assert_eq!(ours.len(), 3, "{lines:#?}");
    for (i, line) in ours.iter().enumerate() {
        assert_eq!(line["data"], format!("{{\"n\":{}}}", i + 1));
        assert_eq!(line["stream"], "orders");
        assert_eq!(line["key"], "customer-7");
        assert_eq!(line["headers"]["tenant"], "acme");
        assert_eq!(line["content_type"], "application/json");
        assert!(line["id"].as_str().is_some_and(|id| !id.is_empty()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_stops_after_count() {
    let conn = streams::connect("memory://").await.unwrap();
    let (out, captured) = Output::buffer();
    let consumer = tokio::spawn({
        let conn = conn.clone();
        async move {
            let args = ConsumeArgs {
                stream: "s".into(),
                count: Some(5),
                concurrency: 3,
                ..Default::default()
            };
            consume(&conn, args, out, CancellationToken::new()).await
        }
    });
    // Keep publishing: the consumer must stop by itself at five.
    let writer = conn.writer();
    let feeding = tokio::spawn(async move {
        for i in 0..10_000 {
            if writer
                .write(vec![Message::new("s", format!("m{i}"))])
                .await
                .is_err()
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let printed = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("consume stops at --count")
        .unwrap()
        .expect("consume");
    feeding.abort();
    assert_eq!(printed, 5);
    assert_eq!(captured.lines().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_stops_on_signal() {
    let conn = streams::connect("memory://").await.unwrap();
    let stop = CancellationToken::new();
    let (out, _) = Output::buffer();
    let consumer = tokio::spawn({
        let (conn, stop) = (conn.clone(), stop.clone());
        async move {
            consume(
                &conn,
                ConsumeArgs {
                    stream: "quiet".into(),
                    concurrency: 1,
                    ..Default::default()
                },
                out,
                stop,
            )
            .await
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let printed = tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("stop ends consume")
        .unwrap()
        .expect("a stop is no error");
    assert_eq!(printed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_output_is_an_error() {
    struct Broken;
    impl std::io::Write for Broken {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "pipe closed",
            ))
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let conn = streams::connect("memory://").await.unwrap();
    let consumer = tokio::spawn({
        let conn = conn.clone();
        async move {
            let args = ConsumeArgs {
                stream: "p".into(),
                concurrency: 1,
                ..Default::default()
            };
            consume(&conn, args, Output::new(Broken), CancellationToken::new()).await
        }
    });
    let writer = conn.writer();
    let feeding = tokio::spawn(async move {
        loop {
            let _ = writer.write(vec![Message::new("p", "x")]).await;
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let err = tokio::time::timeout(Duration::from_secs(30), consumer)
        .await
        .expect("consume stops")
        .unwrap()
        .expect_err("printing failed");
    feeding.abort();
    assert!(err.to_string().contains("pipe closed"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_moves_dead_letters_back_without_their_dlq_headers() {
    let conn = streams::connect("memory://").await.unwrap();
    // A subscriber on the original stream collects what comes back.
    let back = Arc::new(Mutex::new(Vec::<Message>::new()));
    let mut sub = Router::new(conn.reader().unwrap(), Default::default());
    sub.subscribe(
        ReadTask::new("orders"),
        tower::service_fn({
            let back = back.clone();
            move |m: Message| {
                back.lock().unwrap().push(m);
                async { Ok::<_, streams::BoxError>(()) }
            }
        }),
    );
    sub.start().await.unwrap();

    for dry_run in [true, false] {
        let (out, captured) = Output::buffer();
        let redriving = tokio::spawn({
            let conn = conn.clone();
            async move {
                let args = RedriveArgs {
                    stream: "orders".into(),
                    to: None,
                    dry_run,
                    count: Some(2),
                    idle: Duration::from_secs(20),
                    group: None,
                };
                redrive(&conn, args, out, CancellationToken::new()).await
            }
        });
        // The bus keeps nothing: write dead letters until the redrive has taken two.
        let writer = conn.writer();
        let mut i = 0;
        while !redriving.is_finished() {
            let dead = Message::new("orders.dlq", format!("order {i}"))
                .with_key("k")
                .with_header("tenant", "acme")
                .with_header("streams-dlq-reason", "handler failed")
                .with_header("streams-dlq-source-stream", "orders");
            writer.write(vec![dead]).await.unwrap();
            i += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let report = redriving.await.unwrap().expect("redrive");
        assert_eq!(report.moved, 2);
        assert_eq!(report.dry_run, dry_run);
        let lines = captured.lines();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        for line in &lines {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            assert_eq!(v["stream"], "orders", "printed as it goes back");
            assert!(v["headers"].get("streams-dlq-reason").is_none(), "{v}");
            assert_eq!(v["headers"]["tenant"], "acme");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        let got = back.lock().unwrap().clone();
        if dry_run {
            assert!(got.is_empty(), "a dry run moves nothing: {got:#?}");
        } else {
            assert_eq!(got.len(), 2, "{got:#?}");
            for m in &got {
                assert_eq!(m.key.as_deref(), Some("k"));
                assert_eq!(
                    m.headers.len(),
                    1,
                    "only the publisher's header: {:?}",
                    m.headers
                );
            }
        }
    }
    sub.shutdown(Duration::from_secs(5)).await.unwrap();
}

#[tokio::test]
async fn redrive_refuses_a_loop() {
    let conn = streams::connect("memory://").await.unwrap();
    let args = RedriveArgs {
        stream: "orders".into(),
        to: Some("orders.dlq".into()),
        dry_run: false,
        count: None,
        idle: Duration::from_secs(1),
        group: None,
    };
    let (out, _) = Output::buffer();
    let err = redrive(&conn, args, out, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("into itself"), "{err}");
}
