//! The binary's argument handling and the in-process bus, end to end.

mod common;

use std::time::Duration;

use common::streams;

const LIMIT: Duration = Duration::from_secs(60);

#[tokio::test]
async fn bad_arguments_are_one_line_and_exit_2() {
    for args in [
        &["publish"][..],
        &["consume", "orders", "--count", "0"],
        &["consume", "orders", "--idle", "soon"],
        &["publish", "orders", "-H", "novalue", "x"],
        &["publish", "orders", "-t", "yaml", "x"],
        &["frobnicate"],
        &["consume", "orders", "--offset", "3"],
        &["consume", "orders", "--group", "g", "--offset", "5"],
        &["consume", "orders", "--group", "g", "--partition", "0"],
    ] {
        let run = streams(args, "", LIMIT).await;
        assert_eq!(run.code, 2, "{args:?}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:#?}");
        assert!(
            run.stderr.starts_with("streams: error: "),
            "{args:?}: {run:#?}"
        );
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
}

#[tokio::test]
async fn platform_errors_are_one_line_and_exit_1() {
    let run = streams(&["--url", "mqtt://localhost", "consume", "x"], "", LIMIT).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(run.stderr.contains("unknown scheme `mqtt`"), "{run:#?}");
    assert!(
        run.stderr.contains("kafka://"),
        "lists what is supported: {run:#?}"
    );

    // A password in a bad URL is never repeated.
    let run = streams(
        &["--url", "kafka://u:hunter2@h:1?group=", "consume", "x"],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(!run.stderr.contains("hunter2"), "{run:#?}");
}

#[tokio::test]
async fn help_and_version_succeed() {
    let run = streams(&["--help"], "", LIMIT).await.ok();
    for command in [
        "publish", "consume", "relay", "bench", "dlq", "asyncapi", "schema",
    ] {
        assert!(
            run.stdout.contains(command),
            "{command} missing from help: {run:#?}"
        );
    }
    let run = streams(&["dlq", "redrive", "--help"], "", LIMIT).await.ok();
    assert!(run.stdout.contains("--dry-run"), "{run:#?}");
    streams(&["--version"], "", LIMIT).await.ok();
}

#[tokio::test]
async fn publish_from_stdin_on_memory_reports_and_warns() {
    let run = streams(&["publish", "orders"], "a\n\nb\nc\n", LIMIT)
        .await
        .ok();
    assert!(
        run.stderr
            .contains("published 3 message(s) to `orders` (memory)"),
        "{run:#?}"
    );
    assert!(run.stderr.contains("in-process"), "{run:#?}");

    let run = streams(
        &["publish", "orders", "--format", "json"],
        "{\"data\":\"x\"}\nnope\n",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("input line 2"), "{run:#?}");
    assert!(
        run.stderr.contains("0 message(s) published before this"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_memory_reports_every_message() {
    let run = streams(
        &[
            "bench",
            "-n",
            "5000",
            "--size",
            "64",
            "--json",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["platform"], "memory");
    assert_eq!(report["published"], 5000);
    assert_eq!(report["received"], 5000);
    assert_eq!(report["duplicates"], 0);
    assert!(
        report["latency"]["p99_us"].as_u64().unwrap()
            >= report["latency"]["p50_us"].as_u64().unwrap()
    );

    let run = streams(&["bench", "-n", "300"], "", LIMIT).await.ok();
    assert!(run.stdout.contains("msg/s"), "{run:#?}");
    assert!(run.stdout.contains("p99"), "{run:#?}");
}

/// On memory:// the bench runs the bare bus and the raw channel beside the connection,
/// counts allocations per message and draws the plot; what it cannot do is one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_on_memory_runs_its_baselines_and_plots() {
    let plot = std::env::temp_dir().join(format!("{}.svg", common::unique("bench-plot")));
    let plot = plot.to_str().unwrap();
    let run = streams(
        &[
            "bench",
            "-n",
            "3000",
            "--json",
            "--no-progress",
            "--plot",
            plot,
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["case"], "streams", "{report}");
    assert_eq!(report["received"], 3000);
    let baselines = report["baselines"].as_array().unwrap();
    let names: Vec<_> = baselines
        .iter()
        .map(|b| b["case"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["bare", "raw"]);
    for case in std::iter::once(report).chain(baselines) {
        assert_eq!(case["received"], 3000, "{case}");
        // At least the message, its id, stream, key and header allocate.
        let allocs = case["allocations_per_message"].as_f64().unwrap();
        assert!((4.0..100.0).contains(&allocs), "{case}");
    }
    let svg = std::fs::read_to_string(plot).unwrap();
    std::fs::remove_file(plot).unwrap();
    assert!(svg.contains("raw") && svg.contains("bare"), "{svg}");

    let run = streams(&["bench", "-n", "300", "--cases", "raw"], "", LIMIT)
        .await
        .ok();
    assert!(run.stdout.contains("raw"), "{run:#?}");

    let run = streams(&["bench", "-n", "10", "--plot", "x.gif"], "", LIMIT).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("only .svg"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_with_a_batch_handler_reports_both_runs_and_their_ratio() {
    let run = streams(
        &[
            "bench",
            "-n",
            "3000",
            "--cases",
            "streams,batch",
            "--batch-handler",
            "50",
            "--json",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["case"], "streams", "{report}");
    let batch = &report["baselines"][0];
    assert_eq!(batch["case"], "batch", "{report}");
    for case in [report, batch] {
        assert_eq!(case["received"], 3000, "{report}");
        assert_eq!(case["duplicates"], 0, "{report}");
    }

    // Without --cases, the batch case follows the default ones.
    let run = streams(
        &[
            "bench",
            "-n",
            "2000",
            "--batch-handler",
            "20",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stdout.contains("batch"), "{run:#?}");

    let run = streams(&["bench", "-n", "300", "--batch-handler", "0"], "", LIMIT).await;
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("--batch-handler"), "{run:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_at_a_steady_rate_paces_the_writes() {
    let run = streams(
        &[
            "bench",
            "-n",
            "2000",
            "--rate",
            "10000",
            "--json",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["rate"], 10000);
    assert_eq!(report["received"], 2000);
    assert_eq!(report["duplicates"], 0);

    let run = streams(&["bench", "-n", "10", "--rate", "0"], "", LIMIT).await;
    assert_ne!(run.code, 0, "{run:#?}");
    assert!(run.stderr.contains("--rate"), "{run:#?}");
}

#[tokio::test]
async fn publish_from_a_file_and_a_missing_file() {
    let path = std::env::temp_dir().join(format!("{}.txt", common::unique("cli-input")));
    std::fs::write(&path, "first\nsecond\n").unwrap();
    let file = path.to_str().unwrap();
    let run = streams(&["publish", "orders", "--file", file], "", LIMIT)
        .await
        .ok();
    assert!(run.stderr.contains("published 2 message(s)"), "{run:#?}");
    std::fs::remove_file(&path).unwrap();

    let run = streams(&["publish", "orders", "--file", file], "", LIMIT).await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(run.stderr.contains("cannot open"), "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
}

#[tokio::test]
async fn consume_stops_on_sigint() {
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streams"))
        .args(["consume", "quiet"])
        .env_remove("STREAMS_URL")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let pid = child.id().unwrap().to_string();
    let kill = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(kill.success());
    let out = tokio::time::timeout(LIMIT, child.wait_with_output())
        .await
        .expect("consume stops on Ctrl-C")
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("consumed 0 message(s)"), "{stderr}");
}

/// Issue "failure paths": against an address where nothing listens, every command
/// fails within 30 s by default with one line naming the platform and the address.
#[cfg(all(feature = "kafka", feature = "sqs", feature = "sql"))]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_listening_is_one_line_within_30s() {
    const KAFKA: &str = "kafka://127.0.0.1:1";
    const SQS: &str = "sqs://test:test@127.0.0.1:1?region=us-east-1";
    const PG: &str = "postgres://postgres@127.0.0.1:1/test";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["--url", KAFKA, "publish", "orders", "x"],
            "127.0.0.1:1",
        ),
        (
            vec!["--url", KAFKA, "consume", "orders", "--group", "g"],
            "127.0.0.1:1",
        ),
        (vec!["--url", KAFKA, "create", "orders"], "127.0.0.1:1"),
        (
            vec!["--url", KAFKA, "bench", "-n", "10", "--no-progress"],
            "127.0.0.1:1",
        ),
        (
            vec!["--url", SQS, "publish", "orders", "x"],
            "http://127.0.0.1:1",
        ),
        (
            vec!["--url", SQS, "consume", "orders"],
            "http://127.0.0.1:1",
        ),
        (vec!["--url", SQS, "create", "orders"], "http://127.0.0.1:1"),
        (vec!["--url", PG, "publish", "orders", "x"], "127.0.0.1:1"),
        (
            vec!["--url", KAFKA, "relay", "--from", PG, "--once"],
            "127.0.0.1:1",
        ),
    ];
    let started = std::time::Instant::now();
    let runs = futures_join(cases.iter().map(|(args, _)| {
        let args = args.clone();
        async move { common::streams_as_user(&args, Duration::from_secs(60)).await }
    }))
    .await;
    for ((args, address), run) in cases.iter().zip(runs) {
        assert_eq!(run.code, 1, "{args:?}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:#?}");
        let platform = args[1].split("://").next().unwrap();
        assert!(
            run.stderr.contains(platform),
            "names {platform}: {args:?}: {run:#?}"
        );
        assert!(
            run.stderr.contains(address),
            "names {address}: {args:?}: {run:#?}"
        );
    }
    // All ran at once: the slowest bounds them all.
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}",
        started.elapsed()
    );
}

/// Runs the futures concurrently and returns their outputs in order.
#[cfg(all(feature = "kafka", feature = "sqs", feature = "sql"))]
async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.expect("run"));
    }
    out
}
