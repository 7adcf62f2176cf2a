//! Writing outbox rows: inside the caller's transaction, or in one of the writer's own.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use sqlx::{Pool, Transaction};
use streams_core::{
    async_trait, encode_batch, Error, IdFactory, KsuidFactory, Message, Result, Writer,
};
use tokio::sync::Notify;

use crate::common::db_err;
use crate::dialect::{Arg, Dialect};
use crate::{schema, TableName};

/// Writes outbox batches into a table inside the caller's transaction: [`PgOutbox`]
/// on PostgreSQL, [`MySqlOutbox`] on MySQL and MariaDB.
///
/// One row per batch: a KSUID batch id, the message count and the Protocol Buffers
/// encoding of the batch, the format of the Go library's `streams_egress` table; only
/// those columns are written, so a Go relay reads the rows too. On PostgreSQL the same
/// statement sends `pg_notify(channel, batch_id)`, so a listening relay wakes up as
/// soon as the transaction commits (the channel defaults to the table name, see
/// [`with_channel`](Outbox::with_channel)); MySQL has no `NOTIFY`, so relays find
/// batches by polling, or are woken in-process by [`commit`](Self::commit) in the
/// agentless mode.
///
/// Writing needs a `&mut Transaction`: there is no way to write outside one.
///
/// ```compile_fail
/// # async fn demo(pool: sqlx::PgPool, outbox: streams_sql::PgOutbox) {
/// // A pool is not a transaction: this does not compile.
/// outbox.write(&pool, &[]).await;
/// # }
/// ```
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool) -> Result<(), Box<dyn std::error::Error>> {
/// use streams_core::Message;
/// use streams_sql::PgOutbox;
///
/// let outbox = PgOutbox::new("streams_egress")?;
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// sqlx::query("UPDATE accounts SET balance = balance - 100 WHERE id = 7")
///     .execute(&mut *tx)
///     .await?;
/// outbox
///     .write(&mut tx, &[Message::new("payments.debited", r#"{"account":7}"#)])
///     .await?;
/// outbox.commit(tx).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Outbox<D: Dialect> {
    sql: Arc<OutboxSql<D>>,
    /// The `NOTIFY` channel; PostgreSQL only.
    pub(crate) channel: Option<TableName>,
    wake: Option<Arc<Notify>>,
}

/// The outbox on PostgreSQL.
pub type PgOutbox = Outbox<sqlx::Postgres>;

/// The outbox on MySQL and MariaDB.
pub type MySqlOutbox = Outbox<sqlx::MySql>;

#[derive(Debug)]
struct OutboxSql<D> {
    table: TableName,
    insert: String,
    /// The insert that also notifies, where the database can.
    insert_notify: Option<String>,
    db: PhantomData<fn() -> D>,
}

impl<D: Dialect> Clone for Outbox<D> {
    fn clone(&self) -> Self {
        Outbox {
            sql: self.sql.clone(),
            channel: self.channel.clone(),
            wake: self.wake.clone(),
        }
    }
}

impl<D: Dialect> Outbox<D> {
    /// An outbox writing to `table`; on PostgreSQL it notifies the channel of the same
    /// name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `table` is not a valid [`TableName`].
    pub fn new(table: &str) -> Result<Self> {
        let table = TableName::new(table)?;
        let t = D::quote(&table);
        let (p1, p2, p3) = (D::param(1), D::param(2), D::param(3));
        let insert_notify = D::insert_notify(&t);
        Ok(Outbox {
            channel: insert_notify.is_some().then(|| table.clone()),
            sql: Arc::new(OutboxSql {
                insert: format!(
                    "INSERT INTO {t} (batch_id, message_count, raw_data) \
                     VALUES ({p1}, {p2}, {p3})"
                ),
                insert_notify,
                table,
                db: PhantomData,
            }),
            wake: None,
        })
    }

    /// Wakes an in-process relay after [`commit`](Self::commit) (the agentless mode).
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = Some(wake);
        self
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.sql.table
    }

    /// Creates the outbox table and its quarantine table if they do not exist, and adds
    /// this crate's columns to a table the Go library created; under a lock, so
    /// several processes may do it at once.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn migrate(&self, pool: &Pool<D>) -> Result<()> {
        schema::migrate(pool, &self.sql.table, true).await
    }

    /// Writes `batch` as one outbox row in `tx` and returns the batch id; an empty
    /// batch writes nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// A database failure; the caller's transaction should then be rolled back.
    pub async fn write(
        &self,
        tx: &mut Transaction<'_, D>,
        batch: &[Message],
    ) -> Result<Option<String>> {
        if batch.is_empty() {
            return Ok(None);
        }
        let id = KsuidFactory.new_id();
        let raw = encode_batch(batch);
        let count = i32::try_from(batch.len())
            .map_err(|_| Error::invalid("batch", "more than 2^31 messages"))?;
        let mut args = vec![Arg::Text(&id), Arg::Count(count), Arg::Bytes(&raw)];
        let sql = match (&self.channel, &self.sql.insert_notify) {
            (Some(channel), Some(sql)) => {
                args.push(Arg::Text(channel.as_str()));
                sql
            }
            _ => &self.sql.insert,
        };
        D::execute(&mut **tx, sql, args)
            .await
            .map_err(|e| db_err::<D>("insert outbox batch", self.table(), e))?;
        Ok(Some(id))
    }

    /// Commits `tx` and then wakes the in-process relay, if one was given.
    ///
    /// # Errors
    ///
    /// The commit failed; nothing was written.
    pub async fn commit(&self, tx: Transaction<'_, D>) -> Result<()> {
        tx.commit()
            .await
            .map_err(|e| db_err::<D>("commit outbox batch", self.table(), e))?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }
}

/// A [`Writer`] that owns a pool and writes each batch in a transaction of its own:
/// [`PgOutboxWriter`] and [`MySqlOutboxWriter`].
///
/// For services that have no business transaction to join (and for benchmarks). Use
/// [`Outbox::write`] to write atomically with your own changes. It writes the Go
/// library's columns only, so it works on a table the Go library created as it is.
#[derive(Debug)]
pub struct OutboxWriter<D: Dialect> {
    pool: Pool<D>,
    outbox: Outbox<D>,
    closed: Arc<AtomicBool>,
}

/// The outbox writer on PostgreSQL.
pub type PgOutboxWriter = OutboxWriter<sqlx::Postgres>;

/// The outbox writer on MySQL and MariaDB.
pub type MySqlOutboxWriter = OutboxWriter<sqlx::MySql>;

impl<D: Dialect> Clone for OutboxWriter<D> {
    fn clone(&self) -> Self {
        // Clones share whether the writer is closed.
        let closed = self.closed.clone();
        OutboxWriter {
            closed,
            ..OutboxWriter::new(self.pool.clone(), self.outbox.clone())
        }
    }
}

impl<D: Dialect> OutboxWriter<D> {
    /// A writer using `pool` and `outbox`.
    pub fn new(pool: Pool<D>, outbox: Outbox<D>) -> Self {
        OutboxWriter {
            pool,
            outbox,
            closed: Arc::default(),
        }
    }

    /// The outbox it writes with.
    pub fn outbox(&self) -> &Outbox<D> {
        &self.outbox
    }
}

#[async_trait]
impl<D: Dialect> Writer for OutboxWriter<D> {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("outbox writer"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db_err::<D>("begin outbox transaction", self.outbox.table(), e))?;
        self.outbox.write(&mut tx, &batch).await?;
        self.outbox.commit(tx).await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
