use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::{Acquire, MySql, MySqlConnection, MySqlPool, Transaction};
use streams_core::{
    encode_batch, EgressStorage, Error, IdFactory, KsuidFactory, Message, Result, StoredBatch,
    Writer,
};
use tokio::sync::Notify;

use crate::common::{db_err, Claims, Heartbeat};
use crate::TableName;

const DRIVER: &str = "mysql";

/// Ids per `IN (...)` list, well below MySQL's placeholder limit.
const IDS_PER_STATEMENT: usize = 1000;

/// Writes outbox batches into a MySQL or MariaDB table inside the caller's transaction.
///
/// The row format is the one of [`PgOutbox`](crate::PgOutbox) (and of the Go library);
/// MySQL has no `NOTIFY`, so relays find batches by polling, or are woken in-process
/// by [`commit`](Self::commit) in the agentless mode.
///
/// ```no_run
/// # async fn demo(pool: sqlx::MySqlPool) -> Result<(), Box<dyn std::error::Error>> {
/// use streams_core::Message;
/// use streams_sql::MySqlOutbox;
///
/// let outbox = MySqlOutbox::new("streams_egress")?;
/// outbox.migrate(&pool).await?;
/// let mut tx = pool.begin().await?;
/// outbox.write(&mut tx, &[Message::new("payments.debited", "{}")]).await?;
/// outbox.commit(tx).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct MySqlOutbox {
    table: TableName,
    wake: Option<Arc<Notify>>,
    insert_sql: Arc<str>,
}

impl fmt::Debug for MySqlOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlOutbox")
            .field("table", &self.table.as_str())
            .field("wake", &self.wake.is_some())
            .finish()
    }
}

impl MySqlOutbox {
    /// An outbox writing to `table`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `table` is not a valid [`TableName`].
    pub fn new(table: &str) -> Result<Self> {
        let table = TableName::new(table)?;
        Ok(MySqlOutbox {
            insert_sql: format!(
                "INSERT INTO {} (batch_id, message_count, raw_data) VALUES (?, ?, ?)",
                table.mysql()
            )
            .into(),
            table,
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
        &self.table
    }

    /// Creates the outbox table and its quarantine table if they do not exist, and adds
    /// this crate's columns to an existing table that lacks them.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn migrate(&self, pool: &MySqlPool) -> Result<()> {
        migrate(pool, &self.table).await
    }

    /// Writes `batch` as one outbox row in `tx` and returns the batch id; an empty
    /// batch writes nothing and returns `None`.
    ///
    /// # Errors
    ///
    /// A database failure; the caller's transaction should then be rolled back.
    pub async fn write(
        &self,
        tx: &mut Transaction<'_, MySql>,
        batch: &[Message],
    ) -> Result<Option<String>> {
        if batch.is_empty() {
            return Ok(None);
        }
        let id = KsuidFactory.new_id();
        let raw = encode_batch(batch);
        let count = i32::try_from(batch.len())
            .map_err(|_| Error::invalid("batch", "more than 2^31 messages"))?;
        sqlx::query(&self.insert_sql)
            .bind(&id)
            .bind(count)
            .bind(raw.as_ref())
            .execute(&mut **tx)
            .await
            .map_err(|e| db_err(DRIVER, "insert outbox batch", e))?;
        Ok(Some(id))
    }

    /// Commits `tx` and then wakes the in-process relay, if one was given.
    ///
    /// # Errors
    ///
    /// The commit failed; nothing was written.
    pub async fn commit(&self, tx: Transaction<'_, MySql>) -> Result<()> {
        tx.commit().await.map_err(|e| db_err(DRIVER, "commit", e))?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }
}

pub(crate) async fn migrate(pool: &MySqlPool, table: &TableName) -> Result<()> {
    let t = table.mysql();
    let q = table.derived("_quarantine").mysql();
    let claim_idx = table.derived("_claim_idx").mysql();
    let err = |e| db_err(DRIVER, "migrate outbox table", e);
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {t} (batch_id VARCHAR(27) NOT NULL PRIMARY KEY, \
         message_count INTEGER, raw_data LONGBLOB NOT NULL, \
         insert_time TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP, \
         seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE, \
         claimed_by VARCHAR(64) NULL, claimed_until DATETIME(6) NULL, \
         KEY {claim_idx} (claimed_until))"
    ))
    .execute(pool)
    .await
    .map_err(err)?;
    // A table created by another program may lack this crate's columns.
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT CAST(column_name AS CHAR) FROM information_schema.columns \
         WHERE table_schema = DATABASE() AND table_name = ?",
    )
    .bind(table.as_str())
    .fetch_all(pool)
    .await
    .map_err(err)?;
    let has = |c: &str| columns.iter().any(|x| x.eq_ignore_ascii_case(c));
    let mut alter = Vec::new();
    if !has("seq") {
        alter.push("ADD COLUMN seq BIGINT NOT NULL AUTO_INCREMENT UNIQUE".to_owned());
    }
    if !has("claimed_by") {
        alter.push("ADD COLUMN claimed_by VARCHAR(64) NULL".to_owned());
    }
    if !has("claimed_until") {
        alter.push("ADD COLUMN claimed_until DATETIME(6) NULL".to_owned());
        alter.push(format!("ADD KEY {claim_idx} (claimed_until)"));
    }
    if !alter.is_empty() {
        sqlx::query(&format!("ALTER TABLE {t} {}", alter.join(", ")))
            .execute(pool)
            .await
            .map_err(err)?;
    }
    sqlx::query(&format!(
        "CREATE TABLE IF NOT EXISTS {q} (batch_id VARCHAR(27) NOT NULL PRIMARY KEY, \
         message_count INTEGER, raw_data LONGBLOB NOT NULL, insert_time TIMESTAMP NULL, \
         quarantine_time TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6), \
         reason TEXT NOT NULL)"
    ))
    .execute(pool)
    .await
    .map_err(err)?;
    Ok(())
}

/// A [`Writer`] that owns a pool and writes each batch in a transaction of its own.
///
/// For services that have no business transaction to join. Use
/// [`MySqlOutbox::write`] to write atomically with your own changes.
#[derive(Debug, Clone)]
pub struct MySqlOutboxWriter {
    pool: MySqlPool,
    outbox: MySqlOutbox,
    closed: Arc<AtomicBool>,
}

impl MySqlOutboxWriter {
    /// A writer using `pool` and `outbox`.
    pub fn new(pool: MySqlPool, outbox: MySqlOutbox) -> Self {
        MySqlOutboxWriter {
            pool,
            outbox,
            closed: Arc::default(),
        }
    }

    /// The outbox it writes with.
    pub fn outbox(&self) -> &MySqlOutbox {
        &self.outbox
    }
}

#[async_trait]
impl Writer for MySqlOutboxWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("mysql outbox writer"));
        }
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self
            .pool
            .begin()
            .await
            .map_err(|e| db_err(DRIVER, "begin", e))?;
        self.outbox.write(&mut tx, &batch).await?;
        self.outbox.commit(tx).await
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}

/// [`EgressStorage`] on a MySQL or MariaDB outbox table (MySQL 8 or MariaDB 10.6 and
/// later, for `SKIP LOCKED`).
///
/// Claims work as for [`PgEgressStorage`](crate::PgEgressStorage): a lease per batch
/// (`claimed_by`, `claimed_until`), one relay at a time by default (serialized with
/// `GET_LOCK`), disjoint sets at once with
/// [`with_parallel_claims`](Self::with_parallel_claims), quarantine into
/// `<table>_quarantine`.
#[derive(Clone)]
pub struct MySqlEgressStorage {
    pool: MySqlPool,
    table: TableName,
    claims: Claims,
    sql: Arc<MySqlSql>,
    heartbeat: Arc<Heartbeat>,
}

struct MySqlSql {
    renew: String,
    live_foreign_lease: String,
    select_claimable: String,
    claim_prefix: String,
    delete_prefix: String,
    release_prefix: String,
    quarantine_copy: String,
    quarantine_delete: String,
    list_quarantine: String,
    pending: String,
    lock_name: String,
}

impl fmt::Debug for MySqlEgressStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlEgressStorage")
            .field("table", &self.table.as_str())
            .field("relay_id", &self.claims.relay_id)
            .field("lease", &self.claims.lease)
            .field("parallel", &self.claims.parallel)
            .finish()
    }
}

fn placeholders(n: usize) -> String {
    let mut s = String::with_capacity(n * 3 + 2);
    s.push('(');
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s.push(')');
    s
}

impl MySqlEgressStorage {
    /// Storage on `table` through `pool`, with a random relay id and a 60 s lease.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `table` is not a valid [`TableName`].
    pub fn new(pool: MySqlPool, table: &str) -> Result<Self> {
        let table = TableName::new(table)?;
        let t = table.mysql();
        let q = table.derived("_quarantine").mysql();
        let sql = MySqlSql {
            renew: format!(
                "UPDATE {t} SET claimed_until = NOW(6) + INTERVAL ? MICROSECOND \
                 WHERE claimed_until IS NOT NULL AND claimed_by = ?"
            ),
            live_foreign_lease: format!(
                "SELECT EXISTS(SELECT 1 FROM {t} WHERE claimed_by <> ? AND claimed_until >= NOW(6))"
            ),
            select_claimable: format!(
                "SELECT seq, batch_id, raw_data FROM {t} \
                 WHERE (claimed_until IS NULL OR claimed_until < NOW(6) OR claimed_by = ?) \
                 ORDER BY seq LIMIT ? FOR UPDATE SKIP LOCKED"
            ),
            claim_prefix: format!(
                "UPDATE {t} SET claimed_by = ?, \
                 claimed_until = NOW(6) + INTERVAL ? MICROSECOND WHERE batch_id IN "
            ),
            delete_prefix: format!("DELETE FROM {t} WHERE batch_id IN "),
            release_prefix: format!(
                "UPDATE {t} SET claimed_by = NULL, claimed_until = NULL \
                 WHERE claimed_by = ? AND batch_id IN "
            ),
            quarantine_copy: format!(
                "INSERT IGNORE INTO {q} (batch_id, message_count, raw_data, insert_time, reason) \
                 SELECT batch_id, message_count, raw_data, insert_time, ? FROM {t} WHERE batch_id = ?"
            ),
            quarantine_delete: format!("DELETE FROM {t} WHERE batch_id = ?"),
            list_quarantine: format!(
                "SELECT batch_id, raw_data, reason FROM {q} ORDER BY quarantine_time, batch_id"
            ),
            pending: format!("SELECT COUNT(*) FROM {t}"),
            lock_name: format!("streams_sql.{table}"),
        };
        Ok(MySqlEgressStorage {
            pool,
            table,
            claims: Claims::default(),
            sql: Arc::new(sql),
            heartbeat: Arc::default(),
        })
    }

    /// Names this relay in `claimed_by` (1 to 64 bytes). A relay restarted with the
    /// same id takes its unfinished claims back at once.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty or too long id.
    pub fn with_relay_id(mut self, relay_id: &str) -> Result<Self> {
        self.claims.set_relay_id(relay_id)?;
        Ok(self)
    }

    /// How long claimed batches stay reserved for this relay (default 60 s). While the
    /// storage is alive its claims are renewed every third of the lease.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.claims.lease = lease;
        self
    }

    /// Lets relays claim disjoint sets at the same time instead of one at a time.
    /// Order per stream key then holds within one relay only.
    pub fn with_parallel_claims(mut self, parallel: bool) -> Self {
        self.claims.parallel = parallel;
        self
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.table
    }

    /// This relay's id.
    pub fn relay_id(&self) -> &str {
        &self.claims.relay_id
    }

    /// Creates the tables if they do not exist (as [`MySqlOutbox::migrate`]).
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn migrate(&self) -> Result<()> {
        migrate(&self.pool, &self.table).await
    }

    /// Batches waiting or claimed.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn pending(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar(&self.sql.pending)
            .fetch_one(&self.pool)
            .await
            .map_err(|e| db_err(DRIVER, "count outbox", e))?;
        Ok(n.max(0) as u64)
    }

    /// Quarantined batches with their reasons, oldest first.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn quarantined(&self) -> Result<Vec<(StoredBatch, String)>> {
        let rows: Vec<(String, Vec<u8>, String)> = sqlx::query_as(&self.sql.list_quarantine)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| db_err(DRIVER, "list quarantine", e))?;
        Ok(rows
            .into_iter()
            .map(|(id, raw, reason)| {
                (
                    StoredBatch {
                        id,
                        raw: Bytes::from(raw),
                    },
                    reason,
                )
            })
            .collect())
    }

    async fn claim(
        &self,
        conn: &mut MySqlConnection,
        limit: i64,
    ) -> sqlx::Result<Vec<StoredBatch>> {
        // Under REPEATABLE READ the locking scan takes gap locks that block (and
        // deadlock with) the service's outbox inserts; READ COMMITTED locks rows only.
        sqlx::Executor::execute(&mut *conn, "SET TRANSACTION ISOLATION LEVEL READ COMMITTED")
            .await?;
        let mut tx = conn.begin().await?;
        if !self.claims.parallel {
            let busy: bool = sqlx::query_scalar(&self.sql.live_foreign_lease)
                .bind(&self.claims.relay_id)
                .fetch_one(&mut *tx)
                .await?;
            if busy {
                tx.commit().await?;
                return Ok(Vec::new());
            }
        }
        let mut rows: Vec<(i64, String, Vec<u8>)> = sqlx::query_as(&self.sql.select_claimable)
            .bind(&self.claims.relay_id)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
        if !rows.is_empty() {
            let sql = format!("{}{}", self.sql.claim_prefix, placeholders(rows.len()));
            let mut q = sqlx::query(&sql)
                .bind(&self.claims.relay_id)
                .bind(self.claims.lease_millis().saturating_mul(1000));
            for (_, id, _) in &rows {
                q = q.bind(id);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        rows.sort_unstable_by_key(|r| r.0);
        Ok(rows
            .into_iter()
            .map(|(_, id, raw)| StoredBatch {
                id,
                raw: Bytes::from(raw),
            })
            .collect())
    }

    async fn by_ids(&self, prefix: &str, with_relay: bool, ids: &[String]) -> sqlx::Result<()> {
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let sql = format!("{prefix}{}", placeholders(chunk.len()));
            let mut q = sqlx::query(&sql);
            if with_relay {
                q = q.bind(&self.claims.relay_id);
            }
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl EgressStorage for MySqlEgressStorage {
    async fn fetch(&self, limit: usize) -> Result<Vec<StoredBatch>> {
        let claimed = self.fetch_claims(limit).await?;
        if !claimed.is_empty() {
            let (pool, sql, relay_id) = (
                self.pool.clone(),
                self.sql.clone(),
                self.claims.relay_id.clone(),
            );
            let micros = self.claims.lease_millis().saturating_mul(1000);
            self.heartbeat.ensure(self.claims.lease, move || {
                let (pool, sql, relay_id) = (pool.clone(), sql.clone(), relay_id.clone());
                async move {
                    sqlx::query(&sql.renew)
                        .bind(micros)
                        .bind(&relay_id)
                        .execute(&pool)
                        .await
                        .map(drop)
                        .map_err(|e| db_err(DRIVER, "renew outbox claims", e))
                }
            });
        }
        Ok(claimed)
    }

    async fn delete(&self, batch_ids: &[String]) -> Result<()> {
        self.by_ids(&self.sql.delete_prefix, false, batch_ids)
            .await
            .map_err(|e| db_err(DRIVER, "delete outbox batches", e))
    }

    async fn quarantine(&self, batch_id: &str, reason: &str) -> Result<()> {
        self.quarantine_one(batch_id, reason).await
    }

    async fn release(&self, batch_ids: &[String]) -> Result<()> {
        self.by_ids(&self.sql.release_prefix, true, batch_ids)
            .await
            .map_err(|e| db_err(DRIVER, "release outbox batches", e))
    }
}

impl MySqlEgressStorage {
    async fn fetch_claims(&self, limit: usize) -> Result<Vec<StoredBatch>> {
        let err = |e| db_err(DRIVER, "claim outbox batches", e);
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let mut conn = self.pool.acquire().await.map_err(err)?;
        if self.claims.parallel {
            return self.claim(&mut conn, limit).await.map_err(err);
        }
        // Claims are serialized so that two relays never both see "no live lease".
        let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 10)")
            .bind(&self.sql.lock_name)
            .fetch_one(&mut *conn)
            .await
            .map_err(err)?;
        if locked != Some(1) {
            return Err(Error::Timeout {
                operation: "outbox claim lock",
                after: Duration::from_secs(10),
            });
        }
        let claimed = self.claim(&mut conn, limit).await;
        let released = sqlx::query("SELECT RELEASE_LOCK(?)")
            .bind(&self.sql.lock_name)
            .execute(&mut *conn)
            .await;
        if released.is_err() {
            // Closing the session is what frees the lock for sure.
            drop(conn.detach());
        }
        claimed.map_err(err)
    }

    async fn quarantine_one(&self, batch_id: &str, reason: &str) -> Result<()> {
        let err = |e| db_err(DRIVER, "quarantine outbox batch", e);
        let mut tx = self.pool.begin().await.map_err(err)?;
        sqlx::query(&self.sql.quarantine_copy)
            .bind(reason)
            .bind(batch_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        sqlx::query(&self.sql.quarantine_delete)
            .bind(batch_id)
            .execute(&mut *tx)
            .await
            .map_err(err)?;
        tx.commit().await.map_err(err)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholder_lists() {
        assert_eq!(super::placeholders(1), "(?)");
        assert_eq!(super::placeholders(3), "(?, ?, ?)");
    }
}
