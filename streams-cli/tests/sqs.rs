//! The binary against SQS (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`;
//! `scripts/test.sh` starts moto there).
#![cfg(feature = "sqs")]

mod common;

use common::{unique, Cli};

fn cli() -> Cli {
    let endpoint = streams_testkit::aws_endpoint();
    let host = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    // Short long polls, so each command stops within a second of its last message.
    Cli::new(format!(
        "sqs://test:test@{host}?region=us-east-1&wait_time_seconds=1"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_and_redrive_on_sqs() {
    let cli = cli();
    let stream = unique("cli-sqs");
    let dlq = format!("{stream}.dlq");
    cli.ok(&["create", &stream], "").await;
    cli.ok(&["create", &dlq], "").await;

    let args = [
        "publish",
        &stream,
        "-H",
        "tenant=acme",
        "-t",
        "text",
        "one",
        "two",
        "three",
    ];
    let run = cli.ok(&args, "").await;
    assert!(run.stderr.contains("published 3 message(s)"), "{run:#?}");
    let run = cli.ok(&["consume", &stream, "--count", "3"], "").await;
    let lines = run.json_lines();
    let mut data: Vec<_> = lines.iter().map(|l| l["data"].as_str().unwrap()).collect();
    data.sort_unstable();
    assert_eq!(data, ["one", "three", "two"], "{run:#?}");
    for line in &lines {
        assert_eq!(line["headers"]["tenant"], "acme");
        assert_eq!(line["content_type"], "text/plain; charset=utf-8");
        assert!(line["meta"]["sqs-message-id"].is_string(), "{line}");
    }
    let left = cli.consume_data(&stream, &["--idle", "3s"]).await;
    assert!(left.is_empty(), "consumed messages were deleted: {left:?}");

    cli.dead_letters_round_trip(&stream).await;
    let left = cli.consume_data(&dlq, &["--idle", "3s"]).await;
    assert!(left.is_empty(), "the dead-letter queue is empty: {left:?}");

    cli.ok(&["delete", &stream], "").await;
    cli.ok(&["delete", &dlq], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_sqs() {
    let report = cli().bench(300, &[]).await;
    assert_eq!(report["platform"], "sqs");
}

/// Issue "failure paths", item 1: a relay pointed at a queue that does not exist is a
/// fault of the destination. `--once` exits 1 with one line naming the relay and the
/// queue, nothing is quarantined, and once the queue exists every row goes out in
/// order.
#[cfg(feature = "sql")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_to_a_missing_queue_quarantines_nothing() {
    let cli = cli();
    let db = streams_testkit::postgres_url();
    let table = unique("mq").replace('-', "_");
    let stream = unique("cli-sqs-missing");
    let outbox = Cli::new(format!("{db}?table={table}&create_table=true"));
    for n in ["one", "two", "three"] {
        // One row per message, as three separate transactions would write them.
        outbox.ok(&["publish", &stream, n], "").await;
    }
    let relay = ["relay", "--from", &db, "--table", &table, "--once"];
    let mut args = vec!["--url", cli.url.as_str()];
    args.extend_from_slice(&relay);
    let run = common::streams(&args, "", std::time::Duration::from_secs(120)).await;
    assert_eq!(run.code, 1, "{run:#?}");
    let stderr = run.stderr.trim();
    assert_eq!(stderr.lines().count(), 1, "{run:#?}");
    assert!(
        stderr.contains("relay from postgres to sqs stopped"),
        "{run:#?}"
    );
    assert!(
        stderr.contains(&stream.replace('.', "-")),
        "names the queue: {run:#?}"
    );
    assert!(!stderr.contains("quarantined"), "{run:#?}");

    // Fixed: the three rows go out, in order, and nothing was quarantined.
    cli.ok(&["create", &stream], "").await;
    let run = cli.ok(&relay, "").await;
    assert!(
        run.stderr
            .contains("relayed 3 message(s) in 3 batch(es), 0 quarantined"),
        "{run:#?}"
    );
    let got: Vec<String> = cli
        .ok(&["consume", &stream, "--count", "3"], "")
        .await
        .json_lines()
        .iter()
        .map(|l| l["data"].as_str().unwrap().to_owned())
        .collect();
    let mut sorted = got.clone();
    sorted.sort();
    assert_eq!(sorted, ["one", "three", "two"], "{got:?}");
    cli.ok(&["delete", &stream], "").await;
}
