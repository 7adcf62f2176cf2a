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
        run.stderr.contains("must start with postgres://"),
        "{run:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_postgres() {
    let db = std::env::var("STREAMS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    publish_then_relay(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_from_mysql() {
    let db = std::env::var("STREAMS_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned());
    publish_then_relay(&db).await;
}
