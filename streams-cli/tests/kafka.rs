//! The binary against a Kafka broker (`STREAMS_KAFKA_BROKERS`, default
//! `localhost:9092`; `scripts/test.sh` starts one).
#![cfg(feature = "kafka")]

mod common;

use common::{unique, Cli};

fn cli(group: &str) -> Cli {
    let brokers = streams_testkit::kafka_brokers();
    Cli::new(format!(
        "kafka://{brokers}?group={group}&session.timeout.ms=6000&heartbeat.interval.ms=1000"
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_and_redrive_on_kafka() {
    let topic = unique("cli-kafka");
    let dlq = format!("{topic}.dlq");
    let cli = cli(&unique("cli-group"));
    cli.ok(&["create", &topic, "--partitions", "2"], "").await;
    cli.ok(&["create", &dlq], "").await;

    // Five lines from stdin, one key: one partition, in order. One message per write,
    // so each is a record batch of its own: tansu returns nothing to a fetch that
    // starts inside a batch, which reading from offset 3 below would be.
    let args = [
        "publish",
        &topic,
        "-k",
        "customer-7",
        "-H",
        "tenant=acme",
        "-t",
        "json",
        "--batch",
        "1",
    ];
    let run = cli
        .ok(
            &args,
            "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n{\"n\":4}\n{\"n\":5}\n",
        )
        .await;
    assert!(run.stderr.contains("published 5 message(s)"), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");

    let run = cli.ok(&["consume", &topic, "--count", "5"], "").await;
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
        let group = line["group"].as_str().unwrap_or_default();
        assert!(group.starts_with("cli-group"), "{line}");
    }
    // The group committed: nothing is left for it.
    let left = cli.consume_data(&topic, &["--idle", "4s"]).await;
    assert!(left.is_empty(), "{left:?}");
    // Reading a partition from an offset needs no group and commits nothing.
    let run = cli
        .ok(
            &[
                "consume",
                &topic,
                "-p",
                &partition.to_string(),
                "-o",
                "3",
                "-n",
                "2",
            ],
            "",
        )
        .await;
    let offsets: Vec<_> = run
        .json_lines()
        .iter()
        .map(|l| l["offset"].as_i64())
        .collect();
    assert_eq!(offsets, [Some(3), Some(4)], "{run:#?}");

    cli.dead_letters_round_trip(&topic).await;

    cli.ok(&["delete", &topic], "").await;
    cli.ok(&["delete", &dlq], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_kafka() {
    let report = cli("unused").bench(2000, &["--partitions", "2"]).await;
    assert_eq!(report["platform"], "kafka");
}
