//! Helpers shared by the integration tests: database handles, unique tables and a
//! recording destination.

#![allow(dead_code, unreachable_pub, missing_docs)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::mysql::MySqlPoolOptions;
use sqlx::postgres::PgPoolOptions;
use sqlx::{MySqlPool, PgPool};
use streams_core::{async_trait, EgressStorage, Message, Result, StoredBatch, Writer};
use streams_sql::{MySqlEgressStorage, MySqlOutbox, PgEgressStorage, PgOutbox};
use tokio::sync::Notify;

/// How long a test waits for something that should take milliseconds before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

pub fn pg_url() -> String {
    std::env::var("STREAMS_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

pub fn mysql_url() -> String {
    std::env::var("STREAMS_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".into())
}

/// One of the two databases; an unreachable database fails the test.
#[derive(Clone, Debug)]
pub enum Db {
    Pg(PgPool),
    My(MySqlPool),
}

impl Db {
    pub async fn pg() -> Db {
        let url = pg_url();
        let pool = PgPoolOptions::new()
            .max_connections(6)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("PostgreSQL at {url} is unreachable: {e}"));
        Db::Pg(pool)
    }

    pub async fn mysql() -> Db {
        let url = mysql_url();
        let pool = MySqlPoolOptions::new()
            .max_connections(6)
            .acquire_timeout(Duration::from_secs(30))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("MySQL/MariaDB at {url} is unreachable: {e}"));
        Db::My(pool)
    }

    /// A fresh, migrated outbox table for one test.
    pub async fn table(&self, test: &str) -> Table {
        let name = unique_name(test);
        let t = Table {
            db: self.clone(),
            name,
        };
        match &t.db {
            Db::Pg(pool) => PgOutbox::new(&t.name).unwrap().migrate(pool).await.unwrap(),
            Db::My(pool) => MySqlOutbox::new(&t.name)
                .unwrap()
                .migrate(pool)
                .await
                .unwrap(),
        }
        t
    }

    pub async fn exec(&self, sql: &str) {
        match self {
            Db::Pg(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            Db::My(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

pub fn unique_name(test: &str) -> String {
    format!("t_{test}_{:08x}", fastrand::u32(..))
}

#[derive(Clone, Debug)]
pub struct Table {
    pub db: Db,
    pub name: String,
}

impl Table {
    /// Writes `batch` in a transaction that is committed or rolled back; returns the
    /// batch id.
    pub async fn write(
        &self,
        batch: &[Message],
        commit: bool,
        wake: Option<Arc<Notify>>,
    ) -> String {
        match &self.db {
            Db::Pg(pool) => {
                let mut outbox = PgOutbox::new(&self.name).unwrap();
                if let Some(w) = wake {
                    outbox = outbox.with_wake(w);
                }
                let mut tx = pool.begin().await.unwrap();
                let id = outbox.write(&mut tx, batch).await.unwrap().unwrap();
                if commit {
                    outbox.commit(tx).await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                id
            }
            Db::My(pool) => {
                let mut outbox = MySqlOutbox::new(&self.name).unwrap();
                if let Some(w) = wake {
                    outbox = outbox.with_wake(w);
                }
                let mut tx = pool.begin().await.unwrap();
                let id = outbox.write(&mut tx, batch).await.unwrap().unwrap();
                if commit {
                    outbox.commit(tx).await.unwrap();
                } else {
                    tx.rollback().await.unwrap();
                }
                id
            }
        }
    }

    /// Inserts a row the way the Go library does: only its own columns.
    pub async fn insert_go_row(&self, batch_id: &str, count: i32, raw: &[u8]) {
        let sql = match &self.db {
            Db::Pg(_) => format!(
                "INSERT INTO {}(batch_id, message_count, raw_data) VALUES ($1, $2, $3)",
                self.name
            ),
            Db::My(_) => format!(
                "INSERT INTO {}(batch_id, message_count, raw_data) VALUES (?, ?, ?)",
                self.name
            ),
        };
        match &self.db {
            Db::Pg(pool) => sqlx::query(&sql)
                .bind(batch_id)
                .bind(count)
                .bind(raw)
                .execute(pool)
                .await
                .map(drop),
            Db::My(pool) => sqlx::query(&sql)
                .bind(batch_id)
                .bind(count)
                .bind(raw)
                .execute(pool)
                .await
                .map(drop),
        }
        .unwrap();
    }

    pub fn storage(&self) -> Storage {
        self.storage_with(None, None, false)
    }

    pub fn storage_with(
        &self,
        relay_id: Option<&str>,
        lease: Option<Duration>,
        parallel: bool,
    ) -> Storage {
        match &self.db {
            Db::Pg(pool) => {
                let mut s = PgEgressStorage::new(pool.clone(), &self.name)
                    .unwrap()
                    .with_parallel_claims(parallel);
                if let Some(id) = relay_id {
                    s = s.with_relay_id(id).unwrap();
                }
                if let Some(l) = lease {
                    s = s.with_lease(l);
                }
                Storage::Pg(Arc::new(s))
            }
            Db::My(pool) => {
                let mut s = MySqlEgressStorage::new(pool.clone(), &self.name)
                    .unwrap()
                    .with_parallel_claims(parallel);
                if let Some(id) = relay_id {
                    s = s.with_relay_id(id).unwrap();
                }
                if let Some(l) = lease {
                    s = s.with_lease(l);
                }
                Storage::My(Arc::new(s))
            }
        }
    }

    pub async fn pending(&self) -> u64 {
        self.storage().pending().await
    }

    pub async fn drop_tables(&self) {
        for suffix in ["", "_quarantine"] {
            self.db
                .exec(&format!("DROP TABLE IF EXISTS {}{suffix}", self.name))
                .await;
        }
    }
}

#[derive(Clone, Debug)]
pub enum Storage {
    Pg(Arc<PgEgressStorage>),
    My(Arc<MySqlEgressStorage>),
}

impl Storage {
    pub fn dyn_storage(&self) -> Arc<dyn EgressStorage> {
        match self {
            Storage::Pg(s) => s.clone(),
            Storage::My(s) => s.clone(),
        }
    }

    pub async fn pending(&self) -> u64 {
        match self {
            Storage::Pg(s) => s.pending().await,
            Storage::My(s) => s.pending().await,
        }
        .unwrap()
    }

    pub async fn quarantined(&self) -> Vec<(StoredBatch, String)> {
        match self {
            Storage::Pg(s) => s.quarantined().await,
            Storage::My(s) => s.quarantined().await,
        }
        .unwrap()
    }
}

/// A destination that records every message it accepts.
#[derive(Debug, Default)]
pub struct Recorder {
    messages: Mutex<Vec<Message>>,
    changed: Notify,
}

impl Recorder {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    pub fn record(&self, batch: &[Message]) {
        self.messages.lock().unwrap().extend_from_slice(batch);
        self.changed.notify_waiters();
    }

    pub fn messages(&self) -> Vec<Message> {
        self.messages.lock().unwrap().clone()
    }

    /// Waits until at least `n` messages were recorded; fails the test after
    /// [`PATIENCE`].
    pub async fn wait_for(&self, n: usize) -> Vec<Message> {
        self.wait_until(|m| m.len() >= n).await
    }

    /// Waits until `done` holds for the recorded messages.
    pub async fn wait_until(&self, done: impl Fn(&[Message]) -> bool) -> Vec<Message> {
        let wait = async {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                {
                    let m = self.messages.lock().unwrap();
                    if done(&m) {
                        return m.clone();
                    }
                }
                changed.await;
            }
        };
        match tokio::time::timeout(PATIENCE, wait).await {
            Ok(m) => m,
            Err(_) => panic!(
                "destination did not receive the expected messages within {PATIENCE:?}; got {}",
                self.messages.lock().unwrap().len()
            ),
        }
    }
}

#[async_trait]
impl Writer for Recorder {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        self.record(&batch);
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// A destination that accepts one batch and then never returns, like a relay killed
/// after publishing and before deleting.
#[derive(Debug)]
pub struct HangAfterPublish(pub Arc<Recorder>);

#[async_trait]
impl Writer for HangAfterPublish {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        self.0.record(&batch);
        std::future::pending().await
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// A batch as the Go library's encoder lays it out, built byte by byte from the
/// protobuf wire format (no prost involved).
pub fn go_encoded_batch() -> Vec<u8> {
    fn varint(mut v: u64, out: &mut Vec<u8>) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    fn field(tag: u32, payload: &[u8], out: &mut Vec<u8>) {
        varint(u64::from(tag << 3 | 2), out);
        varint(payload.len() as u64, out);
        out.extend_from_slice(payload);
    }
    let mut batch = Vec::new();
    for (id, key, amount) in [
        ("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R", "acct-42", "100"),
        ("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3S", "acct-43", "250"),
    ] {
        let mut entry = Vec::new();
        field(1, b"tenant", &mut entry);
        field(2, b"acme", &mut entry);
        let mut ts = Vec::new();
        varint(1 << 3, &mut ts);
        varint(1_700_000_000, &mut ts);
        varint(2 << 3, &mut ts);
        varint(123_000_000, &mut ts);
        let mut msg = Vec::new();
        field(1, id.as_bytes(), &mut msg);
        field(2, b"payments.created", &mut msg);
        field(3, key.as_bytes(), &mut msg);
        field(4, &entry, &mut msg);
        field(5, b"application/json", &mut msg);
        field(6, format!(r#"{{"amount":{amount}}}"#).as_bytes(), &mut msg);
        field(7, &ts, &mut msg);
        field(1, &msg, &mut batch);
    }
    batch
}
