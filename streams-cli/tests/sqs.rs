//! The binary against SQS (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`;
//! `scripts/test.sh` starts moto there).
#![cfg(feature = "sqs")]

mod common;

use common::{unique, Cli};

fn cli() -> Cli {
    let endpoint = std::env::var("STREAMS_AWS_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4566".to_owned());
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
