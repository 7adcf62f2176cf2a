//! The binary against SQS (`STREAMS_AWS_ENDPOINT`, default `http://127.0.0.1:4566`;
//! `scripts/test.sh` starts moto there).
#![cfg(feature = "sqs")]

mod common;

use std::time::Duration;

use common::{streams, unique};

const LIMIT: Duration = Duration::from_secs(120);

fn url() -> String {
    let endpoint = std::env::var("STREAMS_AWS_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4566".to_owned());
    let host = endpoint
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .trim_end_matches('/');
    format!("sqs://test:test@{host}?region=us-east-1&wait_time_seconds=1")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_and_redrive_on_sqs() {
    let url = url();
    let url = url.as_str();
    let stream = unique("cli-sqs");
    let dlq = format!("{stream}.dlq");
    streams(&["--url", url, "create", &stream], "", LIMIT)
        .await
        .ok();
    streams(&["--url", url, "create", &dlq], "", LIMIT)
        .await
        .ok();

    let run = streams(
        &[
            "--url",
            url,
            "publish",
            &stream,
            "-H",
            "tenant=acme",
            "-t",
            "text",
            "one",
            "two",
            "three",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stderr.contains("published 3 message(s)"), "{run:#?}");
    let run = streams(
        &["--url", url, "consume", &stream, "--count", "3"],
        "",
        LIMIT,
    )
    .await
    .ok();
    let lines = run.json_lines();
    let mut data: Vec<_> = lines
        .iter()
        .map(|l| l["data"].as_str().unwrap().to_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["one", "three", "two"], "{run:#?}");
    for line in &lines {
        assert_eq!(line["headers"]["tenant"], "acme");
        assert_eq!(line["content_type"], "text/plain; charset=utf-8");
        assert!(line["meta"]["sqs-message-id"].is_string(), "{line}");
    }
    let run = streams(
        &["--url", url, "consume", &stream, "--idle", "3s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(
        run.stdout.is_empty(),
        "consumed messages were deleted: {run:#?}"
    );

    streams(
        &[
            "--url",
            url,
            "publish",
            &dlq,
            "-H",
            "streams-dlq-reason=boom",
            "dead-1",
            "dead-2",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let run = streams(
        &[
            "--url",
            url,
            "dlq",
            "redrive",
            &stream,
            "--dry-run",
            "--idle",
            "3s",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert_eq!(run.json_lines().len(), 2, "{run:#?}");
    let run = streams(
        &["--url", url, "consume", &stream, "--idle", "3s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(
        run.stdout.is_empty(),
        "the dry run moved something: {run:#?}"
    );

    // The dry run left them unacknowledged: they come back after the redelivery delay.
    let run = streams(
        &["--url", url, "dlq", "redrive", &stream, "--idle", "8s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stderr.contains("moved 2 message(s)"), "{run:#?}");
    let run = streams(
        &["--url", url, "consume", &stream, "--count", "2"],
        "",
        LIMIT,
    )
    .await
    .ok();
    let mut data: Vec<_> = run
        .json_lines()
        .iter()
        .map(|l| l["data"].as_str().unwrap().to_owned())
        .collect();
    data.sort();
    assert_eq!(data, ["dead-1", "dead-2"], "{run:#?}");
    let run = streams(&["--url", url, "consume", &dlq, "--idle", "3s"], "", LIMIT)
        .await
        .ok();
    assert!(
        run.stdout.is_empty(),
        "the dead-letter queue is empty: {run:#?}"
    );

    streams(&["--url", url, "delete", &stream], "", LIMIT)
        .await
        .ok();
    streams(&["--url", url, "delete", &dlq], "", LIMIT)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_sqs() {
    let run = streams(
        &[
            "--url",
            &url(),
            "bench",
            "-n",
            "300",
            "--json",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["platform"], "sqs");
    assert_eq!(report["received"], 300, "{report}");
}
