//! The binary against NATS with JetStream, found through streams-testkit (its variable, a container
//! of this test binary with `STREAMS_CONTAINERS=1`, or the native service).
#![cfg(feature = "nats")]

mod common;

use common::{unique, Cli};

fn cli(group: &str) -> Cli {
    let servers = streams_testkit::nats_servers();
    Cli::new(format!("nats://{servers}?group={group}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_consume_and_redrive_on_nats() {
    let stream = unique("cli-nats");
    let dlq = format!("{stream}.dlq");
    let cli = cli(&unique("cli-group"));
    cli.ok(&["create", &stream], "").await;
    cli.ok(&["create", &dlq], "").await;

    let args = [
        "publish",
        &stream,
        "-k",
        "customer-7",
        "-H",
        "tenant=acme",
        "-t",
        "json",
    ];
    let run = cli.ok(&args, "{\"n\":1}\n{\"n\":2}\n{\"n\":3}\n").await;
    assert!(run.stderr.contains("published 3 message(s)"), "{run:#?}");

    let run = cli.ok(&["consume", &stream, "--count", "3"], "").await;
    let lines = run.json_lines();
    assert_eq!(lines.len(), 3, "{run:#?}");
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["data"], format!("{{\"n\":{}}}", i + 1));
        assert_eq!(line["key"], "customer-7");
        assert_eq!(line["headers"]["tenant"], "acme");
        assert_eq!(line["content_type"], "application/json");
        assert_eq!(line["meta"]["streams-nats-delivered"], "1", "{line}");
    }
    // The group acknowledged: nothing is left for it.
    let left = cli.consume_data(&stream, &["--idle", "3s"]).await;
    assert!(left.is_empty(), "{left:?}");

    cli.dead_letters_round_trip(&stream).await;

    cli.ok(&["delete", &stream], "").await;
    cli.ok(&["delete", &dlq], "").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_to_a_missing_stream_says_so_in_one_line() {
    let stream = unique("cli-nats-missing");
    let url = cli("g").url;
    let run = common::streams(
        &["--url", &url, "publish", &stream, "x"],
        "",
        std::time::Duration::from_secs(60),
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    let line = run.stderr.trim();
    assert!(
        !line.contains('\n') && line.contains(&stream) && line.contains("streams create"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_nats() {
    let report = cli("unused").bench(2000, &[]).await;
    assert_eq!(report["platform"], "nats");
}
