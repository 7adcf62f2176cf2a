//! The outbox against real PostgreSQL and MariaDB/MySQL (see `common` for the URLs).
//! Every test uses tables of its own; an unreachable database fails the test.

// Duplicate counts are reported on stderr (`--nocapture`).
#![allow(clippy::print_stderr)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use common::{both, go_encoded_batch, Db, HangAfterPublish, Recorder, PATIENCE};
use streams_core::Relay;
use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_sql::{MySqlOutbox, MySqlOutboxStore, PgNotifications, PgOutbox, PgOutboxStore};

fn payment(i: usize, key: &str) -> Message {
    Message::new("payments.created", format!(r#"{{"n":{i}}}"#))
        .with_key(key)
        .with_header("tenant", "acme")
        .with_content_type(streams_core::CONTENT_TYPE_JSON)
}

/// The `n` of a `{"n":123}` payload.
fn seq_of(m: &Message) -> usize {
    let text = std::str::from_utf8(&m.data).unwrap();
    let digits: String = text.chars().filter(char::is_ascii_digit).collect();
    digits.parse().unwrap()
}

/// A relay woken by NOTIFY on PostgreSQL and by the outbox's in-process notifier on
/// MySQL, with a poll interval so long that only wake-ups can deliver in time.
fn relay_for(table: &common::Table, storage: &common::Storage, dest: Arc<dyn Writer>) -> Relay {
    let relay = Relay::new(storage.dyn_storage(), dest)
        .with_poll_interval(Duration::from_secs(3600))
        .with_fetch_limit(50);
    match &table.db {
        Db::Pg(pool) => {
            relay.with_wake_source(PgNotifications::new(pool.clone(), &table.name).unwrap())
        }
        Db::My(_) => relay,
    }
}

async fn rollback_leaves_nothing_commit_is_relayed(db: Db) {
    let table = db.table("commit").await;
    let storage = table.storage();

    // A rolled-back business transaction leaves no outbox row.
    table.write(&[payment(0, "acct-1")], false, None).await;
    assert_eq!(storage.pending().await, 0);

    // The destination is the in-process bus, with a subscriber recording what it gets.
    let bus = Arc::new(streams_chanbuf::MemoryBus::new());
    let received = Recorder::new();
    let cancel = CancellationToken::new();
    let subscriber = {
        let (bus, received, cancel) = (bus.clone(), received.clone(), cancel.clone());
        let h = handler(tower::service_fn(move |m: Message| {
            received.record(&[m]);
            std::future::ready(Ok::<_, BoxError>(()))
        }));
        tokio::spawn(async move { bus.read(ReadTask::new("payments.created"), h, cancel).await })
    };
    tokio::time::timeout(PATIENCE, async {
        while bus.subscribers("payments.created") == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("subscriber registered");

    let relay = relay_for(&table, &storage, bus.clone());
    let wake = relay.wake();
    let running = relay.spawn(cancel.clone());

    let sent = vec![
        payment(1, "acct-1"),
        payment(2, "acct-2").with_header("x", "y"),
    ];
    let wake = matches!(db, Db::My(_)).then_some(wake);
    table.write(&sent, true, wake.clone()).await;
    let mut got = received.wait_for(2).await;
    // The bus says which delivery each is; the rest is what was written.
    for m in &mut got {
        assert_eq!(m.delivery_attempt(), Some(1), "{m:?}");
        m.metadata = Default::default();
    }
    assert_eq!(
        got, sent,
        "relayed messages equal the written ones, in order"
    );

    // The first batch may have been found by the catch-up pass after the listener
    // connected; by now the relay listens, so this one can only come by a wake-up.
    let again = payment(3, "acct-1");
    table.write(std::slice::from_ref(&again), true, wake).await;
    let mut got = received.wait_for(3).await;
    got[2].metadata = Default::default();
    assert_eq!(got[2], again);

    cancel.cancel();
    running.await.unwrap().unwrap();
    subscriber.await.unwrap().unwrap();
    assert_eq!(storage.pending().await, 0, "relayed batch deleted");
    assert_eq!(
        received.messages().len(),
        3,
        "rolled-back batch never relayed"
    );
    table.drop_tables().await;
}
both!(rollback_leaves_nothing_commit_is_relayed);

async fn relay_killed_after_publish_delivers_again(db: Db) {
    let table = db.table("killed").await;
    let id = table.write(&[payment(1, "acct-1")], true, None).await;
    let delivered = Recorder::new();

    // Relay "a" publishes the batch and is killed before it deletes it.
    let a = table.storage_with(Some("relay-a"), Some(Duration::from_secs(3600)), false);
    let running = Relay::new(
        a.dyn_storage(),
        Arc::new(HangAfterPublish(delivered.clone())),
    )
    .with_poll_interval(Duration::from_millis(20))
    .spawn(CancellationToken::new());
    delivered.wait_for(1).await;
    running.abort();
    assert!(running.await.unwrap_err().is_cancelled());
    assert_eq!(table.pending().await, 1, "batch kept after the crash");

    // Another relay cannot take it while relay a's lease is live...
    let b = table
        .storage_with(Some("relay-b"), None, false)
        .dyn_storage();
    assert!(b.fetch(10).await.unwrap().is_empty());

    // ...but relay a, restarted with its id, relays it again at once.
    let restarted = table.storage_with(Some("relay-a"), None, false);
    let report = restarted.relay_once(delivered.clone()).await;
    assert_eq!(report.relayed, 1);
    let got = delivered.messages();
    assert_eq!(got.len(), 2, "delivered twice: at least once, never lost");
    assert_eq!(got[0], got[1]);
    assert_eq!(table.pending().await, 0);

    // A relay that dies for good: its lease runs out and any other relay takes over.
    let id2 = table.write(&[payment(2, "acct-1")], true, None).await;
    assert_ne!(id, id2);
    let dying = table.storage_with(Some("relay-c"), Some(Duration::from_millis(50)), false);
    assert_eq!(dying.dyn_storage().fetch(10).await.unwrap().len(), 1);
    drop(dying);
    let taken = tokio::time::timeout(PATIENCE, async {
        loop {
            let batches = b.fetch(10).await.unwrap();
            if !batches.is_empty() {
                return batches;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("lease of the dead relay expires");
    assert_eq!(taken[0].id, id2);
    b.delete(&[id2]).await.unwrap();
    assert_eq!(table.pending().await, 0);
    table.drop_tables().await;
}
both!(relay_killed_after_publish_delivers_again);

async fn two_relays(db: Db, parallel: bool) {
    const BATCHES: usize = 300;
    let table = db
        .table(if parallel { "parallel" } else { "ordered" })
        .await;
    let received = Recorder::new();
    let cancel = CancellationToken::new();
    let relays: Vec<_> = (0..2)
        .map(|_| {
            let storage = table.storage_with(None, None, parallel);
            Relay::new(storage.dyn_storage(), received.clone())
                .with_poll_interval(Duration::from_millis(10))
                .with_fetch_limit(7)
                .spawn(cancel.clone())
        })
        .collect();

    // Written while both relays run; keys interleave so order per key is tested.
    let keys = ["acct-1", "acct-2", "acct-3"];
    for i in 0..BATCHES {
        let batch = [payment(i, keys[i % keys.len()])];
        table.write(&batch, true, None).await;
    }
    let got = received
        .wait_until(|m| {
            let distinct: std::collections::HashSet<_> = m.iter().map(|m| &m.id).collect();
            distinct.len() >= BATCHES
        })
        .await;
    cancel.cancel();
    for r in relays {
        r.await.unwrap().unwrap();
    }

    let mut seen: HashMap<&str, usize> = HashMap::new();
    for m in &got {
        *seen.entry(m.id.as_str()).or_default() += 1;
    }
    let duplicates: usize = seen.values().map(|n| n - 1).sum();
    assert_eq!(seen.len(), BATCHES, "none lost");
    eprintln!(
        "two relays (parallel claims: {parallel}): {BATCHES} batches, {duplicates} duplicates"
    );
    assert_eq!(table.pending().await, 0);

    if !parallel {
        // One relay holds claims at a time: order per key holds across relays.
        let mut last: BTreeMap<String, usize> = BTreeMap::new();
        let mut first_seen = std::collections::HashSet::new();
        for m in &got {
            if !first_seen.insert(m.id.clone()) {
                continue;
            }
            let n = seq_of(m);
            let key = m.key.clone().unwrap();
            if let Some(prev) = last.insert(key.clone(), n) {
                assert!(n > prev, "key {key}: {n} after {prev}");
            }
        }
    }
    table.drop_tables().await;
}

async fn two_relays_ordered(db: Db) {
    two_relays(db, false).await;
}
both!(two_relays_ordered);

async fn two_relays_parallel_claims(db: Db) {
    two_relays(db, true).await;
}
both!(two_relays_parallel_claims);

async fn poison_row_is_quarantined(db: Db) {
    let table = db.table("poison").await;
    let before = table.write(&[payment(1, "acct-1")], true, None).await;
    table
        .insert_go_row("poisonpoisonpoisonpoison123", 1, b"\x0a\xff\xff\xff")
        .await;
    let after = table.write(&[payment(2, "acct-1")], true, None).await;
    assert_ne!(before, after);

    let storage = table.storage();
    let received = Recorder::new();
    let report = storage.relay_once(received.clone()).await;
    assert_eq!((report.relayed, report.quarantined), (2, 1));
    let got = received.messages();
    assert_eq!(got.iter().map(seq_of).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(storage.pending().await, 0);
    let q = storage.quarantined().await;
    assert_eq!(q.len(), 1);
    assert_eq!(q[0].0.id, "poisonpoisonpoisonpoison123");
    assert_eq!(&q[0].0.raw[..], b"\x0a\xff\xff\xff", "kept byte for byte");
    assert!(q[0].1.contains("decode"), "reason: {}", q[0].1);
    table.drop_tables().await;
}
both!(poison_row_is_quarantined);

async fn go_library_row_is_relayed(db: Db) {
    // The table as the Go library creates it, before this crate's migration.
    let table = db.go_table("go").await;
    db.migrate(&table.name).await;
    // Migrating again changes nothing.
    db.migrate(&table.name).await;
    // The Go writer keeps working on the migrated table.
    table
        .insert_go_row("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3B", 2, &go_encoded_batch())
        .await;

    let received = Recorder::new();
    let storage = table.storage();
    let report = storage.relay_once(received.clone()).await;
    assert_eq!(report.relayed, 2);
    let got = received.messages();
    assert_eq!(got.len(), 4);
    let m = &got[0];
    assert_eq!(m.id, "2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R");
    assert_eq!(m.stream, "payments.created");
    assert_eq!(m.key.as_deref(), Some("acct-42"));
    assert_eq!(m.header("tenant"), Some("acme"));
    assert_eq!(m.content_type, "application/json");
    assert_eq!(&m.data[..], br#"{"amount":100}"#);
    assert_eq!(m.time.timestamp(), 1_700_000_000);
    assert_eq!(m.time.timestamp_subsec_nanos(), 123_000_000);
    assert_eq!(got[1].key.as_deref(), Some("acct-43"));
    assert_eq!(&got[1].data[..], br#"{"amount":250}"#);
    assert_eq!(got[2], got[0]);
    // And this crate writes the same bytes the Go library does.
    assert_eq!(
        streams_core::encode_batch(&got[..2]).to_vec(),
        go_encoded_batch()
    );
    assert_eq!(storage.pending().await, 0);
    table.drop_tables().await;
}
both!(go_library_row_is_relayed);

async fn hostile_table_name_is_rejected(db: Db) {
    let canary = db.table("canary").await;
    let hostile = [
        format!("{}; DROP TABLE {}", canary.name, canary.name),
        format!("{}\"; DROP TABLE {}; --", canary.name, canary.name),
        format!("{}`; DROP TABLE {}; --", canary.name, canary.name),
        "Robert'); DROP TABLE students;--".to_owned(),
    ];
    for name in &hostile {
        match &db {
            Db::Pg(pool) => {
                assert!(PgOutbox::new(name).is_err());
                assert!(PgOutbox::new("ok").unwrap().with_channel(name).is_err());
                assert!(PgOutboxStore::new(pool.clone(), name).is_err());
                assert!(PgNotifications::new(pool.clone(), name).is_err());
            }
            Db::My(pool) => {
                assert!(MySqlOutbox::new(name).is_err());
                assert!(MySqlOutboxStore::new(pool.clone(), name).is_err());
            }
        }
    }
    // The canary table is untouched.
    assert_eq!(canary.pending().await, 0);
    canary.write(&[payment(1, "k")], true, None).await;
    assert_eq!(canary.pending().await, 1);
    canary.drop_tables().await;
}
both!(hostile_table_name_is_rejected);

#[test]
fn public_types_are_send_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<PgOutbox>();
    assert_send_sync::<MySqlOutbox>();
    assert_send_sync::<PgOutboxStore>();
    assert_send_sync::<MySqlOutboxStore>();
    assert_send_sync::<streams_sql::PgOutboxWriter>();
    assert_send_sync::<Relay>();
}

async fn outbox_writer_uses_its_own_transaction(db: Db) {
    let table = db.table("writer").await;
    let writer: Arc<dyn Writer> = match &db {
        Db::Pg(pool) => Arc::new(streams_sql::PgOutboxWriter::new(
            pool.clone(),
            PgOutbox::new(&table.name).unwrap(),
        )),
        Db::My(pool) => Arc::new(streams_sql::MySqlOutboxWriter::new(
            pool.clone(),
            MySqlOutbox::new(&table.name).unwrap(),
        )),
    };
    writer
        .write(vec![payment(1, "k"), payment(2, "k")])
        .await
        .unwrap();
    writer.write(Vec::new()).await.unwrap();
    assert_eq!(
        table.pending().await,
        1,
        "one row per batch, none for an empty one"
    );
    writer.close().await.unwrap();
    assert!(matches!(
        writer.write(vec![payment(3, "k")]).await,
        Err(streams_core::Error::Closed(_))
    ));

    let received = Recorder::new();
    let report = table.storage().relay_once(received.clone()).await;
    assert_eq!((report.relayed, report.messages), (1, 2));
    assert_eq!(
        received.messages().iter().map(seq_of).collect::<Vec<_>>(),
        [1, 2]
    );
    table.drop_tables().await;
}
both!(outbox_writer_uses_its_own_transaction);

async fn live_relay_renews_its_claims(db: Db) {
    let table = db.table("renew").await;
    table.write(&[payment(1, "k")], true, None).await;
    let storage = table
        .storage_with(Some("relay-r"), Some(Duration::from_millis(600)), false)
        .dyn_storage();
    assert_eq!(storage.fetch(10).await.unwrap().len(), 1);
    let sql = format!("SELECT CAST(claimed_until AS CHAR(40)) FROM {}", table.name);
    let claimed_until = || async {
        match &db {
            Db::Pg(pool) => sqlx::query_scalar::<_, String>(&sql.replace("CHAR(40)", "TEXT"))
                .fetch_one(pool)
                .await
                .unwrap(),
            Db::My(pool) => sqlx::query_scalar::<_, String>(&sql)
                .fetch_one(pool)
                .await
                .unwrap(),
        }
    };
    let first = claimed_until().await;
    tokio::time::timeout(PATIENCE, async {
        while claimed_until().await == first {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the lease is renewed while the storage lives");
    storage.release(&[]).await.unwrap();
    table.drop_tables().await;
}
both!(live_relay_renews_its_claims);
