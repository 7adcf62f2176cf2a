//! The database fails under a running outbox relay: it is killed and started again (a
//! crash: committed rows survive through its log), or frozen and resumed (a network
//! partition: connections stay open, nothing answers). The relay keeps running through
//! the outage, keeps the rows it has not relayed, and resumes once the database is back:
//! every committed batch reaches the destination and the outbox ends empty.
//!
//! Each test has a database of its own: a container (streams-testkit's `PrivateServer`)
//! with `STREAMS_CONTAINERS=1`. Without containers the tests say so in one line and pass.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Db, Recorder};
use streams_core::{CancellationToken, Message, Relay, Writer};
use streams_testkit::{PrivateServer, Service};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    Restart,
    Partition,
}

async fn relay_through(service: Service, fault: Fault, test: &str) {
    let Some(mut server) = PrivateServer::start(test, service, &[], None).await else {
        return;
    };
    let db = Db::at(&server.address()).await;
    let table = db.table("faults").await;
    let batch = |tag: &str| -> Vec<Message> {
        (0..3)
            .map(|i| Message::new("orders", format!("{tag}-{i}")))
            .collect()
    };
    // Committed before the relay starts: rows the outage must not lose.
    let mut written = Vec::new();
    for b in 0..5 {
        let msgs = batch(&format!("before{b}"));
        table.write(&msgs, true, None).await;
        written.extend(msgs);
    }
    let dest = Recorder::new();
    let cancel = CancellationToken::new();
    let running = Relay::new(
        table.storage().dyn_storage(),
        dest.clone() as Arc<dyn Writer>,
    )
    .with_poll_interval(Duration::from_millis(100))
    .spawn(cancel.clone());

    match fault {
        Fault::Restart => server.kill().await,
        Fault::Partition => server.freeze(true).await,
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !running.is_finished(),
        "the relay keeps running while the database is away"
    );
    match fault {
        Fault::Restart => server.restart().await,
        Fault::Partition => server.freeze(false).await,
    }

    // Written after the outage: the relay takes these too.
    for b in 0..5 {
        let msgs = batch(&format!("after{b}"));
        table.write(&msgs, true, None).await;
        written.extend(msgs);
    }
    let want: std::collections::HashSet<String> = written.iter().map(|m| m.id.clone()).collect();
    dest.wait_until(|got| {
        let got: std::collections::HashSet<&String> = got.iter().map(|m| &m.id).collect();
        want.iter().all(|id| got.contains(id))
    })
    .await;
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while table.pending().await > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "relayed batches are deleted from the outbox"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!running.is_finished(), "the relay kept running");
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the relay stops when cancelled")
        .expect("join")
        .expect("the relay ends cleanly");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_keeps_rows_and_the_relay_resumes() {
    relay_through(
        Service::Postgres,
        Fault::Restart,
        "postgres_restart_keeps_rows_and_the_relay_resumes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_partition_and_the_relay_resumes() {
    relay_through(
        Service::Postgres,
        Fault::Partition,
        "postgres_partition_and_the_relay_resumes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_restart_keeps_rows_and_the_relay_resumes() {
    relay_through(
        Service::MariaDb,
        Fault::Restart,
        "mariadb_restart_keeps_rows_and_the_relay_resumes",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_partition_and_the_relay_resumes() {
    relay_through(
        Service::MariaDb,
        Fault::Partition,
        "mariadb_partition_and_the_relay_resumes",
    )
    .await;
}
