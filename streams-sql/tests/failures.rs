//! Bad days: tables the Go library created, missing tables, unreachable databases,
//! readable errors, cancelled claims and concurrent migrations.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{both, go_encoded_batch, Db, Recorder};
use streams_core::{decode_batch, Message, Writer};
use streams_sql::{MySqlOutbox, MySqlOutboxWriter, PgOutbox, PgOutboxWriter, RelayBuilder};

fn url(db: &Db) -> String {
    match db {
        Db::Pg(_) => common::pg_url(),
        Db::My(_) => common::mysql_url(),
    }
}

fn writer(table: &common::Table) -> Arc<dyn Writer> {
    match &table.db {
        Db::Pg(pool) => Arc::new(PgOutboxWriter::new(
            pool.clone(),
            PgOutbox::new(&table.name).unwrap(),
        )),
        Db::My(pool) => Arc::new(MySqlOutboxWriter::new(
            pool.clone(),
            MySqlOutbox::new(&table.name).unwrap(),
        )),
    }
}

async fn columns(table: &common::Table) -> Vec<String> {
    let sql = "SELECT CAST(column_name AS CHAR(64)) FROM information_schema.columns \
               WHERE table_name = 'NAME' ORDER BY column_name";
    let sql = sql.replace("NAME", &table.name);
    match &table.db {
        Db::Pg(pool) => sqlx::query_scalar(&sql.replace("CHAR(64)", "TEXT"))
            .fetch_all(pool)
            .await
            .unwrap(),
        Db::My(pool) => sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap(),
    }
}

/// What a Go relay reads: `batch_id` and `raw_data`, decoded.
async fn go_relay_reads(table: &common::Table) -> Vec<Message> {
    let sql = format!(
        "SELECT batch_id, raw_data FROM {} ORDER BY insert_time, batch_id",
        table.name
    );
    let rows: Vec<(String, Vec<u8>)> = match &table.db {
        Db::Pg(pool) => sqlx::query_as(&sql).fetch_all(pool).await.unwrap(),
        Db::My(pool) => sqlx::query_as(&sql).fetch_all(pool).await.unwrap(),
    };
    rows.iter()
        .flat_map(|(_, raw)| decode_batch(raw).unwrap())
        .collect()
}

fn assert_one_readable_line(text: &str) {
    assert!(!text.contains('\n'), "one line: {text}");
    assert!(
        text.chars().count() <= 320,
        "{} chars: {text}",
        text.chars().count()
    );
    for debug in ["Database(", "PgDatabaseError", "MySqlDatabaseError", "{ "] {
        assert!(!text.contains(debug), "no Debug dump: {text}");
    }
}

async fn writer_on_go_table_writes_rows_a_go_relay_reads(db: Db) {
    let table = db.go_table("gowriter").await;
    let sent = Message::new("payments.created", r#"{"n":1}"#).with_key("acct-1");
    writer(&table)
        .write(vec![sent.clone()])
        .await
        .expect("the writer works on the Go library's table as it is");
    assert_eq!(
        columns(&table).await,
        ["batch_id", "insert_time", "message_count", "raw_data"],
        "the writer does not change the table"
    );
    let read = go_relay_reads(&table).await;
    assert_eq!(read.len(), 3, "the Go row's two messages and ours");
    assert_eq!(read[2], sent);
    table.drop_tables().await;
}
both!(writer_on_go_table_writes_rows_a_go_relay_reads);

async fn relay_on_go_table_adds_its_columns(db: Db) {
    let table = db.go_table("gorelay").await;
    // A row the Go writer inserted, and one of ours, before any relay ran.
    let ours = Message::new("payments.created", r#"{"n":3}"#);
    writer(&table).write(vec![ours.clone()]).await.unwrap();

    // The relay program's way in, without create_table.
    let received = Recorder::new();
    let relay = RelayBuilder::new(url(&db))
        .with_table(&table.name)
        .with_listen(false)
        .connect(received.clone())
        .await
        .expect("the relay opens a table the Go library created");
    let mut cols = columns(&table).await;
    cols.sort();
    assert_eq!(
        cols,
        [
            "batch_id",
            "claimed_by",
            "claimed_until",
            "insert_time",
            "message_count",
            "raw_data",
            "seq"
        ]
    );
    // A Go writer and a Go relay keep working on the upgraded table.
    table
        .insert_go_row("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3B", 2, &go_encoded_batch())
        .await;
    assert_eq!(go_relay_reads(&table).await.len(), 5);

    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.relayed, report.messages), (3, 5));
    let got = received.messages();
    assert_eq!(got[0].id, "2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R");
    assert_eq!(got[2], ours);
    assert_eq!(got[3].id, "2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R");
    assert_eq!(table.pending().await, 0);
    table.drop_tables().await;
}
both!(relay_on_go_table_adds_its_columns);

async fn library_storage_on_go_table_adds_its_columns(db: Db) {
    let table = db.go_table("golib").await;
    let storage = table.storage().dyn_storage();
    let batches = storage
        .fetch(10)
        .await
        .expect("first fetch upgrades the table");
    assert_eq!(batches.len(), 1);
    storage.delete(&[batches[0].id.clone()]).await.unwrap();
    assert_eq!(table.pending().await, 0);
    table.drop_tables().await;
}
both!(library_storage_on_go_table_adds_its_columns);

async fn concurrent_migrations_of_a_go_table(db: Db) {
    let table = db.go_table("gomigrate").await;
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let table = table.clone();
            tokio::spawn(async move {
                match &table.db {
                    Db::Pg(pool) => PgOutbox::new(&table.name).unwrap().migrate(pool).await,
                    Db::My(pool) => MySqlOutbox::new(&table.name).unwrap().migrate(pool).await,
                }
            })
        })
        .collect();
    for run in runs {
        run.await.unwrap().expect("every migration succeeds");
    }
    assert_eq!(columns(&table).await.len(), 7);
    let received = Recorder::new();
    let report = table.storage().relay_once(received.clone()).await;
    assert_eq!(report.messages, 2);
    table.drop_tables().await;
}
both!(concurrent_migrations_of_a_go_table);

/// A Go relay in the middle of a transaction on its table: the upgrade waits a few
/// seconds for it, then gives up with one line instead of stalling the Go relay and
/// everything queued behind it; once the Go relay is done, the upgrade goes through.
async fn busy_go_table_is_upgraded_once_free(db: Db) {
    let table = db.go_table("gobusy").await;
    let lock = format!("SELECT batch_id FROM {} FOR UPDATE", table.name);
    let go_relay = match &db {
        Db::Pg(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(&lock).fetch_all(&mut *tx).await.unwrap();
            GoTx::Pg(tx)
        }
        Db::My(pool) => {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query(&lock).fetch_all(&mut *tx).await.unwrap();
            GoTx::My(tx)
        }
    };
    let started = Instant::now();
    let err = RelayBuilder::new(url(&db))
        .with_table(&table.name)
        .connect(Recorder::new())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(30), "{err}");
    let text = err.to_string();
    assert!(text.contains("migrate outbox table"), "{text}");
    assert!(text.contains("try again"), "{text}");
    assert_one_readable_line(&text);
    assert!(err.is_retryable(), "{text}");
    match go_relay {
        GoTx::Pg(tx) => tx.commit().await.unwrap(),
        GoTx::My(tx) => tx.commit().await.unwrap(),
    }
    let received = Recorder::new();
    let relay = RelayBuilder::new(url(&db))
        .with_table(&table.name)
        .connect(received.clone())
        .await
        .expect("the upgrade goes through once the table is free");
    let report = relay.relay_once().await.unwrap();
    assert_eq!(report.messages, 2);
    table.drop_tables().await;
}
both!(busy_go_table_is_upgraded_once_free);

/// A relay whose database user may use the Go table but not alter it: one line with
/// the database's refusal and the SQL to run by hand.
async fn go_table_the_relay_may_not_alter(db: Db) {
    let table = db.go_table("gonoalter").await;
    let user = common::unique_name("relay");
    let t = &table.name;
    let (setup, url, teardown) = match &db {
        Db::Pg(_) => (
            vec![
                format!("CREATE ROLE {user} LOGIN"),
                format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO {user}"),
            ],
            common::pg_url().replacen("postgres@", &format!("{user}@"), 1),
            vec![
                format!("REVOKE ALL ON {t} FROM {user}"),
                format!("DROP ROLE {user}"),
            ],
        ),
        Db::My(_) => (
            vec![
                format!("CREATE USER '{user}'@'%'"),
                format!("GRANT SELECT, INSERT, UPDATE, DELETE ON {t} TO '{user}'@'%'"),
            ],
            common::mysql_url().replacen("root@", &format!("{user}@"), 1),
            vec![format!("DROP USER '{user}'@'%'")],
        ),
    };
    for sql in &setup {
        db.exec(sql).await;
    }
    let opened = RelayBuilder::new(url)
        .with_table(t)
        .connect(Recorder::new())
        .await;
    for sql in &teardown {
        db.exec(sql).await;
    }
    let err = opened.unwrap_err();
    let text = err.to_string();
    assert!(!text.contains('\n'), "{text}");
    assert!(text.contains("migrate outbox table"), "{text}");
    assert!(
        text.contains("to do it by hand, run: ALTER TABLE"),
        "{text}"
    );
    assert!(!err.is_retryable(), "{text}");
    table.drop_tables().await;
}
both!(go_table_the_relay_may_not_alter);

enum GoTx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    My(sqlx::Transaction<'static, sqlx::MySql>),
}

async fn missing_table_is_one_line_saying_what_to_do(db: Db) {
    let name = common::unique_name("missing");
    let err = RelayBuilder::new(url(&db))
        .with_table(&name)
        .connect(Recorder::new())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_one_readable_line(&text);
    assert!(text.contains(&format!("`{name}` does not exist")), "{text}");
    assert!(text.contains("--create-table"), "{text}");
    assert!(!err.is_retryable());
}
both!(missing_table_is_one_line_saying_what_to_do);

async fn sql_errors_name_operation_table_and_code(db: Db) {
    let name = common::unique_name("nothere");
    let table = common::Table {
        db: db.clone(),
        name: name.clone(),
    };
    let err = writer(&table)
        .write(vec![Message::new("s", "x")])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert_one_readable_line(&text);
    let code = match db {
        Db::Pg(_) => "42P01",
        Db::My(_) => "42S02",
    };
    assert!(
        text.contains("insert outbox batch") && text.contains(&format!("`{name}`")),
        "{text}"
    );
    assert!(text.contains(code), "the database's code: {text}");
    assert!(text.contains("exist"), "the database's message: {text}");
}
both!(sql_errors_name_operation_table_and_code);

async fn unreachable_database_fails_within_the_bound(db: Db) {
    let url = match db {
        Db::Pg(_) => "postgres://postgres:hunter2@127.0.0.1:1/test",
        Db::My(_) => "mysql://root:hunter2@127.0.0.1:1/test",
    };
    let started = Instant::now();
    let err = RelayBuilder::new(url)
        .connect(Recorder::new())
        .await
        .unwrap_err();
    let took = started.elapsed();
    let text = err.to_string();
    assert!(took < Duration::from_secs(30), "took {took:?}: {text}");
    assert_one_readable_line(&text);
    assert!(text.contains("database `test` at 127.0.0.1:1"), "{text}");
    assert!(text.contains("refused"), "the cause: {text}");
    assert!(!text.contains("hunter2"), "{text}");

    // The bound is a setting, in the URL too.
    let started = Instant::now();
    let err = RelayBuilder::new(format!("{url}?connect_timeout=1"))
        .connect(Recorder::new())
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6), "{err}");
    assert!(err.to_string().contains("within 1s"), "{err}");
}
both!(unreachable_database_fails_within_the_bound);

/// A claim cancelled while its `GET_LOCK` waits must not leave a pooled connection that
/// takes the lock afterwards and keeps it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_claim_leaves_no_mysql_lock() {
    let db = Db::mysql().await;
    let Db::My(pool) = &db else { unreachable!() };
    let table = db.table("cancel").await;
    table.write(&[Message::new("s", "x")], true, None).await;
    let lock = format!("streams_sql.{}", table.name);

    let mut other = pool.acquire().await.unwrap();
    let held: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 5)")
        .bind(&lock)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    assert_eq!(held, Some(1));

    let storage = table.storage().dyn_storage();
    let claim = tokio::time::timeout(Duration::from_millis(500), storage.fetch(10)).await;
    assert!(
        claim.is_err(),
        "the claim waits for the lock and is cancelled"
    );
    let _: Option<i64> = sqlx::query_scalar("SELECT RELEASE_LOCK(?)")
        .bind(&lock)
        .fetch_one(&mut *other)
        .await
        .unwrap();
    drop(other);

    // Give a leaked GET_LOCK time to be granted, then look for a holder.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let holder: Option<i64> = sqlx::query_scalar("SELECT IS_USED_LOCK(?)")
        .bind(&lock)
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(holder, None, "nobody holds the claim lock");
    assert_eq!(storage.fetch(10).await.unwrap().len(), 1);
    table.drop_tables().await;
}
