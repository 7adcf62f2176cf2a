//! `streams relay` from PostgreSQL and MariaDB outboxes (`STREAMS_POSTGRES_URL`,
//! `STREAMS_MYSQL_URL`, defaulting to the local test databases).
#![cfg(feature = "sql")]

mod common;

use std::time::Duration;

use common::{streams, unique};

const LIMIT: Duration = Duration::from_secs(120);

async fn publish_then_relay(db: &str) {
    let table = unique("cli_outbox").replace('-', "_");
    let sep = if db.contains('?') { '&' } else { '?' };
    let outbox = format!("{db}{sep}table={table}&create_table=true");
    let run = streams(
        &[
            "--url",
            &outbox,
            "publish",
            "payments",
            "-k",
            "p-1",
            "-t",
            "json",
            "{\"amount\":1}",
            "{\"amount\":2}",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stderr.contains("published 2 message(s)"), "{run:#?}");

    let run = streams(
        &[
            "relay", "--from", db, "--table", &table, "--to", "stdout", "--once",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let lines = run.json_lines();
    assert_eq!(lines.len(), 2, "{run:#?}");
    assert_eq!(lines[0]["data"], "{\"amount\":1}");
    assert_eq!(lines[1]["data"], "{\"amount\":2}");
    assert_eq!(lines[0]["key"], "p-1");
    assert!(
        run.stderr.contains("relayed 2 message(s) in 1 batch(es)"),
        "{run:#?}"
    );

    // Relayed rows are gone.
    let run = streams(
        &[
            "relay", "--from", db, "--table", &table, "--to", "stdout", "--once",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stdout.is_empty(), "{run:#?}");

    let run = streams(
        &[
            "relay",
            "--from",
            "redis://localhost",
            "--to",
            "stdout",
            "--once",
        ],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(
        run.stderr
            .contains("expected a `postgres://`, `postgresql://`, `mysql://` or `mariadb://` URL"),
        "{run:#?}"
    );
}

/// The relay running until stopped, as a service runs it: it relays a batch as it is
/// written and exits cleanly on SIGTERM after the pass in flight.
#[cfg(unix)]
async fn relays_while_running_and_stops_on_sigterm(db: &str) {
    use std::process::Stdio;
    use tokio::io::AsyncBufReadExt as _;

    let table = unique("cli_running").replace('-', "_");
    let sep = if db.contains('?') { '&' } else { '?' };
    let outbox = format!("{db}{sep}table={table}&create_table=true");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_streams"))
        .args(["relay", "--from", db, "--table", &table, "--create-table"])
        .args(["--to", "stdout", "--poll-interval", "50ms"])
        .env_remove("STREAMS_URL")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn streams relay");
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();

    // Written while the relay runs.
    let run = streams(
        &[
            "--url",
            &outbox,
            "publish",
            "payments.created",
            "-k",
            "acct-1",
            "-t",
            "json",
            "{\"n\":1}",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stderr.contains("published 1 message(s)"), "{run:#?}");
    let line = tokio::time::timeout(LIMIT, lines.next_line())
        .await
        .expect("relayed while running")
        .unwrap()
        .expect("a line for the message");
    let json: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(json["stream"], "payments.created", "{line}");
    assert_eq!(json["key"], "acct-1", "{line}");
    assert_eq!(json["data"], "{\"n\":1}", "{line}");

    let pid = child.id().expect("running").to_string();
    let killed = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(killed.success());
    let status = tokio::time::timeout(LIMIT, child.wait())
        .await
        .expect("stops after SIGTERM")
        .unwrap();
    assert!(status.success(), "graceful exit: {status}");

    // Nothing is left to relay.
    let run = streams(
        &[
            "relay", "--from", db, "--table", &table, "--to", "stdout", "--once",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stdout.is_empty(), "{run:#?}");
}

/// Nothing listens: the relay fails within 30 s with one line naming the database and
/// its address.
async fn unreachable_database_fails_fast(db: &str) {
    let started = std::time::Instant::now();
    let run = streams(
        &["relay", "--from", db, "--to", "stdout", "--once"],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(
        run.stderr.contains("database `test` at 127.0.0.1:1"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_unreachable_postgres() {
    unreachable_database_fails_fast("postgres://postgres@127.0.0.1:1/test").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_unreachable_mysql() {
    unreachable_database_fails_fast("mysql://root@127.0.0.1:1/test").await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_postgres_until_sigterm() {
    let db = streams_testkit::postgres_url();
    relays_while_running_and_stops_on_sigterm(&db).await;
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_mysql_until_sigterm() {
    let db = streams_testkit::mysql_url();
    relays_while_running_and_stops_on_sigterm(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_postgres() {
    let db = streams_testkit::postgres_url();
    publish_then_relay(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_mysql() {
    let db = streams_testkit::mysql_url();
    publish_then_relay(&db).await;
}

/// `bench --relay-to`: every row written to the outbox reaches the handler through the
/// relay, with commit-to-handler percentiles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_the_relay_from_postgres() {
    let db = streams_testkit::postgres_url();
    let run = streams(
        &[
            "--url",
            &db,
            "bench",
            "--relay-to",
            "memory://",
            "--rate",
            "500",
            "-n",
            "500",
            "--json",
            "--no-progress",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let report = &run.json_lines()[0];
    assert_eq!(report["platform"], "outbox-relay", "{report}");
    assert_eq!(report["received"], 500, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");
    assert!(
        report["latency"]["p99_us"].as_u64().unwrap() > 0,
        "{report}"
    );
}

/// The relay bench against a database that is not there: one line, quickly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_the_relay_from_unreachable_postgres() {
    let started = std::time::Instant::now();
    let run = streams(
        &[
            "--url",
            "postgres://postgres@127.0.0.1:1/test",
            "bench",
            "--relay-to",
            "memory://",
            "-n",
            "10",
        ],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(started.elapsed() < Duration::from_secs(30), "{run:#?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
    assert!(run.stderr.contains("127.0.0.1:1"), "{run:#?}");
}
