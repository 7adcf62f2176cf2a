//! The `streams-sql-relay` program end to end: started as a process, it relays a
//! committed batch to standard output and stops cleanly on SIGTERM.

#![cfg(all(feature = "cli", unix))]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Db, PATIENCE};
use streams_core::Message;

async fn relays_to_stdout_and_stops_on_sigterm(db: Db) {
    let table = db.table("program").await;
    let message = Message::new("payments.created", r#"{"n":1}"#).with_key("acct-1");
    table
        .write(std::slice::from_ref(&message), true, None)
        .await;
    let url = match db {
        Db::Pg(_) => common::pg_url(),
        Db::My(_) => common::mysql_url(),
    };

    let mut child = Command::new(env!("CARGO_BIN_EXE_streams-sql-relay"))
        .args(["--database-url", &url, "--table", &table.name])
        .args(["--destination", "stdout", "--poll-interval-ms", "50"])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("relay program starts");
    let stdout = child.stdout.take().unwrap();
    let id = message.id.clone();
    let line = tokio::time::timeout(
        PATIENCE,
        tokio::task::spawn_blocking(move || {
            BufReader::new(stdout)
                .lines()
                .map(Result::unwrap)
                .find(|l| l.contains(&id))
        }),
    )
    .await
    .expect("relayed within the patience")
    .unwrap()
    .expect("a line for the message");
    assert!(line.contains(r#""stream":"payments.created""#), "{line}");
    assert!(line.contains(r#""key":"acct-1""#), "{line}");
    assert!(line.contains(r#""data":"{\"n\":1}""#), "{line}");

    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful exit: {status}");
    assert_eq!(table.pending().await, 0);
    table.drop_tables().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres() {
    relays_to_stdout_and_stops_on_sigterm(Db::pg().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql() {
    relays_to_stdout_and_stops_on_sigterm(Db::mysql().await).await;
}
