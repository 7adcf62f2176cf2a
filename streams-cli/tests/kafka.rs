//! The binary against a Kafka broker (`STREAMS_KAFKA_BROKERS`, default
//! `localhost:9092`; `scripts/test.sh` starts one).
#![cfg(feature = "kafka")]

mod common;

use std::time::Duration;

use common::{streams, unique};

const LIMIT: Duration = Duration::from_secs(120);

fn url(group: &str) -> String {
    let brokers = std::env::var("STREAMS_KAFKA_BROKERS")
        .ok()
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| "localhost:9092".to_owned());
    format!("kafka://{brokers}?group={group}&session.timeout.ms=6000&heartbeat.interval.ms=1000")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_and_redrive_on_kafka() {
    let topic = unique("cli-kafka");
    let dlq = format!("{topic}.dlq");
    let url = url(&unique("cli-group"));
    let url = url.as_str();
    streams(
        &["--url", url, "create", &topic, "--partitions", "2"],
        "",
        LIMIT,
    )
    .await
    .ok();
    streams(&["--url", url, "create", &dlq], "", LIMIT)
        .await
        .ok();

    // Five lines from stdin, one key: one partition, in order.
    let run = streams(
        &[
            "--url",
            url,
            "publish",
            &topic,
            "-k",
            "customer-7",
            "-H",
            "tenant=acme",
            "-t",
            "json",
        ],
        "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stderr.contains("published 5 message(s)"), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");

    let run = streams(
        &["--url", url, "consume", &topic, "--count", "5"],
        "",
        LIMIT,
    )
    .await
    .ok();
    let lines = run.json_lines();
    assert_eq!(lines.len(), 5, "{run:#?}");
    let partition = lines[0]["partition"].as_i64().expect("partition printed");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["data"], format!("{{\"n\":{}}}", i + 1));
        assert_eq!(line["key"], "customer-7");
        assert_eq!(line["headers"]["tenant"], "acme");
        assert_eq!(line["content_type"], "application/json");
        assert_eq!(line["partition"].as_i64(), Some(partition));
        assert_eq!(line["offset"].as_i64(), Some(i as i64));
        assert!(
            line["group"]
                .as_str()
                .is_some_and(|g| g.starts_with("cli-group")),
            "{line}"
        );
    }
    // The group committed: nothing is left for it.
    let run = streams(
        &["--url", url, "consume", &topic, "--idle", "4s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stdout.is_empty(), "{run:#?}");

    // Dead letters: a dry run shows them and moves nothing; the redrive moves them once.
    streams(
        &[
            "--url",
            url,
            "publish",
            &dlq,
            "-k",
            "customer-7",
            "-H",
            "streams-dlq-reason=boom",
            "-H",
            "tenant=acme",
            "late-1",
            "late-2",
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
            &topic,
            "--dry-run",
            "--idle",
            "4s",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert_eq!(run.json_lines().len(), 2, "{run:#?}");
    assert!(run.stderr.contains("dry run: 2 message(s)"), "{run:#?}");
    let run = streams(
        &["--url", url, "consume", &topic, "--idle", "4s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(
        run.stdout.is_empty(),
        "the dry run moved something: {run:#?}"
    );

    let run = streams(
        &["--url", url, "dlq", "redrive", &topic, "--idle", "4s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stderr.contains("moved 2 message(s)"), "{run:#?}");
    let run = streams(
        &["--url", url, "dlq", "redrive", &topic, "--idle", "4s"],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(
        run.stderr.contains("moved 0 message(s)"),
        "redrive is not repeated: {run:#?}"
    );

    let run = streams(
        &["--url", url, "consume", &topic, "--count", "2"],
        "",
        LIMIT,
    )
    .await
    .ok();
    let lines = run.json_lines();
    let data: Vec<_> = lines
        .iter()
        .map(|l| l["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(data, ["late-1", "late-2"], "{run:#?}");
    for line in &lines {
        assert!(
            line["headers"].get("streams-dlq-reason").is_none(),
            "{line}"
        );
        assert_eq!(line["headers"]["tenant"], "acme");
    }

    streams(&["--url", url, "delete", &topic], "", LIMIT)
        .await
        .ok();
    streams(&["--url", url, "delete", &dlq], "", LIMIT)
        .await
        .ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_kafka() {
    let url = url("unused");
    let run = streams(
        &[
            "--url",
            &url,
            "bench",
            "-n",
            "2000",
            "--partitions",
            "2",
            "--json",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["platform"], "kafka");
    assert_eq!(report["received"], 2000, "{report}");
}
