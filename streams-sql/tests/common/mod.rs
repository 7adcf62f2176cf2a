//! Helpers shared by the integration tests: database handles, unique tables and a
//! recording destination.

#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    unused_macros,
    unused_imports
)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{MySqlPool, PgPool, Pool};
use streams_core::outbox::RelayReport;
use streams_core::Relay;
use streams_core::{async_trait, Message, OutboxStore, Result, StoredBatch, Writer};
use streams_sql::{Dialect, MySqlOutboxStore, Outbox, PgOutboxStore, SqlOutboxStore};
use tokio::sync::Notify;

/// Runs a scenario against both databases, as two tests.
macro_rules! both {
    ($scenario:ident) => {
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$scenario(super::Db::pg().await).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mysql() {
                super::$scenario(super::Db::mysql().await).await;
            }
        }
    };
}
pub(crate) use both;

/// How long a test waits for something that should take milliseconds before failing.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// PostgreSQL: this binary's container, or the native database (see streams-testkit).
pub fn pg_url() -> String {
    streams_testkit::postgres_url()
}

/// MariaDB: this binary's container, or the native database (see streams-testkit).
pub fn mysql_url() -> String {
    streams_testkit::mysql_url()
}

/// One of the two databases; an unreachable database fails the test.
#[derive(Clone, Debug)]
pub enum Db {
    Pg(PgPool),
    My(MySqlPool),
}

impl Db {
    pub async fn pg() -> Db {
        Db::Pg(pool(&pg_url()).await)
    }

    pub async fn mysql() -> Db {
        Db::My(pool(&mysql_url()).await)
    }

    /// The database at `url` (a fault test's own), of `url`'s dialect.
    pub async fn at(url: &str) -> Db {
        if url.starts_with("postgres") {
            Db::Pg(pool(url).await)
        } else {
            Db::My(pool(url).await)
        }
    }

    /// A table exactly as the Go library creates it, holding one row the Go way.
    pub async fn go_table(&self, test: &str) -> Table {
        let name = unique_name(test);
        let (bytes, now) = match self {
            Db::Pg(_) => ("BYTEA", "NOW()"),
            Db::My(_) => ("BLOB", "CURRENT_TIMESTAMP"),
        };
        self.exec(&format!(
            "CREATE TABLE {name}(batch_id VARCHAR(27) PRIMARY KEY, message_count INTEGER, \
             raw_data {bytes} NOT NULL, insert_time TIMESTAMP DEFAULT {now})"
        ))
        .await;
        let table = Table {
            db: self.clone(),
            name,
        };
        table
            .insert_go_row("2Yb9GNQzJ1kQWQHhGyHB7n7lZ3A", 2, &go_encoded_batch())
            .await;
        table
    }

    /// A fresh, migrated outbox table for one test.
    pub async fn table(&self, test: &str) -> Table {
        let t = Table {
            db: self.clone(),
            name: unique_name(test),
        };
        self.migrate(&t.name).await;
        t
    }

    /// Runs the outbox migration of `table`.
    pub async fn migrate(&self, table: &str) {
        async fn migrate<D: Dialect>(pool: &Pool<D>, table: &str) {
            Outbox::<D>::new(table)
                .unwrap()
                .migrate(pool)
                .await
                .unwrap();
        }
        match self {
            Db::Pg(pool) => migrate(pool, table).await,
            Db::My(pool) => migrate(pool, table).await,
        }
    }

    pub async fn exec(&self, sql: &str) {
        match self {
            Db::Pg(pool) => sqlx::query(sql).execute(pool).await.map(drop),
            Db::My(pool) => sqlx::query(sql).execute(pool).await.map(drop),
        }
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// A pool on `url`; an unreachable database fails the test.
async fn pool<D: Dialect>(url: &str) -> Pool<D> {
    let options = PoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(30));
    streams_sql::open_pool(url, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
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
        async fn write<D: Dialect>(
            pool: &Pool<D>,
            table: &str,
            batch: &[Message],
            commit: bool,
            wake: Option<Arc<Notify>>,
        ) -> String {
            let mut outbox = Outbox::<D>::new(table).unwrap();
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
        match &self.db {
            Db::Pg(pool) => write(pool, &self.name, batch, commit, wake).await,
            Db::My(pool) => write(pool, &self.name, batch, commit, wake).await,
        }
    }

    /// Inserts a row the way the Go library does: only its own columns.
    pub async fn insert_go_row(&self, batch_id: &str, count: i32, raw: &[u8]) {
        let hex: String = raw.iter().map(|b| format!("{b:02x}")).collect();
        let bytes = match &self.db {
            Db::Pg(_) => format!("'\\x{hex}'::bytea"),
            Db::My(_) => format!("X'{hex}'"),
        };
        self.db
            .exec(&format!(
                "INSERT INTO {}(batch_id, message_count, raw_data) \
                 VALUES ('{batch_id}', {count}, {bytes})",
                self.name
            ))
            .await;
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
        fn storage<D: Dialect>(
            pool: &Pool<D>,
            table: &str,
            relay_id: Option<&str>,
            lease: Option<Duration>,
            parallel: bool,
        ) -> Arc<SqlOutboxStore<D>> {
            let mut s = SqlOutboxStore::new(pool.clone(), table)
                .unwrap()
                .with_parallel_claims(parallel);
            if let Some(id) = relay_id {
                s = s.with_relay_id(id).unwrap();
            }
            if let Some(l) = lease {
                s = s.with_lease(l);
            }
            Arc::new(s)
        }
        match &self.db {
            Db::Pg(pool) => Storage::Pg(storage(pool, &self.name, relay_id, lease, parallel)),
            Db::My(pool) => Storage::My(storage(pool, &self.name, relay_id, lease, parallel)),
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
    Pg(Arc<PgOutboxStore>),
    My(Arc<MySqlOutboxStore>),
}

impl Storage {
    /// One pass of a relay to `destination`.
    pub async fn relay_once(&self, destination: Arc<dyn Writer>) -> RelayReport {
        Relay::new(self.dyn_storage(), destination)
            .relay_once()
            .await
            .unwrap()
    }

    pub fn dyn_storage(&self) -> Arc<dyn OutboxStore> {
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

/// A batch of two messages as the Go library's encoder lays it out (protobuf wire
/// format: ids `2Yb9GNQzJ1kQWQHhGyHB7n7lZ3R`/`S`, stream `payments.created`, keys
/// `acct-42`/`acct-43`, header `tenant: acme`, JSON payloads `{"amount":100}` and
/// `{"amount":250}`, time 1700000000.123), written down as bytes so that no encoder of
/// ours is involved.
pub fn go_encoded_batch() -> Vec<u8> {
    const HEX: &str = concat!(
        "0a770a1b32596239474e517a4a316b515751486847794842376e376c5a335212107061796d656e74",
        "732e637265617465641a07616363742d3432220e0a0674656e616e74120461636d652a106170706c",
        "69636174696f6e2f6a736f6e320e7b22616d6f756e74223a3130307d3a0b0880e2cfaa0610c0a9d3",
        "3a0a770a1b32596239474e517a4a316b515751486847794842376e376c5a335312107061796d656e",
        "74732e637265617465641a07616363742d3433220e0a0674656e616e74120461636d652a10617070",
        "6c69636174696f6e2f6a736f6e320e7b22616d6f756e74223a3235307d3a0b0880e2cfaa0610c0a9",
        "d33a",
    );
    (0..HEX.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&HEX[i..i + 2], 16).expect("hex"))
        .collect()
}
