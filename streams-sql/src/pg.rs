use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use sqlx::{PgPool, Postgres, Transaction};
use streams_core::{
    encode_batch, EgressStorage, Error, IdFactory, KsuidFactory, Message, Result, StoredBatch,
    Writer,
};
use tokio::sync::Notify;

use crate::common::{db_err, fnv1a, Claims, Heartbeat};
use crate::TableName;

const DRIVER: &str = "postgres";

/// Writes outbox batches into a PostgreSQL table inside the caller's transaction.
///
/// One row per batch: a KSUID batch id, the message count and the Protocol Buffers
/// encoding of the batch, the format of the Go library's `streams_egress` table. In the
/// same transaction it sends `pg_notify(channel, batch_id)` so a listening relay wakes
/// up as soon as the transaction commits (the channel defaults to the table name).
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
#[derive(Clone)]
pub struct PgOutbox {
    table: TableName,
    channel: Option<TableName>,
    wake: Option<Arc<Notify>>,
    insert_sql: Arc<str>,
    insert_notify_sql: Arc<str>,
}

impl fmt::Debug for PgOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgOutbox")
            .field("table", &self.table.as_str())
            .field("channel", &self.channel.as_ref().map(TableName::as_str))
            .field("wake", &self.wake.is_some())
            .finish()
    }
}

impl PgOutbox {
    /// An outbox writing to `table`, notifying the channel of the same name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `table` is not a valid [`TableName`].
    pub fn new(table: &str) -> Result<Self> {
        let table = TableName::new(table)?;
        let t = table.pg();
        Ok(PgOutbox {
            insert_sql: format!(
                "INSERT INTO {t} (batch_id, message_count, raw_data) VALUES ($1, $2, $3)"
            )
            .into(),
            insert_notify_sql: format!(
                "WITH ins AS (INSERT INTO {t} (batch_id, message_count, raw_data) \
                 VALUES ($1, $2, $3) RETURNING batch_id) \
                 SELECT pg_notify($4, batch_id) FROM ins"
            )
            .into(),
            channel: Some(table.clone()),
            table,
            wake: None,
        })
    }

    /// Notifies `channel` instead of the table name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `channel` is not a valid identifier.
    pub fn with_channel(mut self, channel: &str) -> Result<Self> {
        self.channel = Some(TableName::new(channel)?);
        Ok(self)
    }

    /// Sends no `NOTIFY`; relays find the batches by polling or in-process wake-ups.
    pub fn without_notify(mut self) -> Self {
        self.channel = None;
        self
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

    /// The `NOTIFY` channel, if any.
    pub fn channel(&self) -> Option<&TableName> {
        self.channel.as_ref()
    }

    /// Creates the outbox table and its quarantine table if they do not exist, and adds
    /// this crate's columns to a table the Go library created.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn migrate(&self, pool: &PgPool) -> Result<()> {
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
        tx: &mut Transaction<'_, Postgres>,
        batch: &[Message],
    ) -> Result<Option<String>> {
        if batch.is_empty() {
            return Ok(None);
        }
        let id = KsuidFactory.new_id();
        let raw = encode_batch(batch);
        let count = i32::try_from(batch.len())
            .map_err(|_| Error::invalid("batch", "more than 2^31 messages"))?;
        let query = match &self.channel {
            Some(channel) => sqlx::query(&self.insert_notify_sql)
                .bind(&id)
                .bind(count)
                .bind(raw.as_ref())
                .bind(channel.as_str()),
            None => sqlx::query(&self.insert_sql)
                .bind(&id)
                .bind(count)
                .bind(raw.as_ref()),
        };
        query
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
    pub async fn commit(&self, tx: Transaction<'_, Postgres>) -> Result<()> {
        tx.commit().await.map_err(|e| db_err(DRIVER, "commit", e))?;
        if let Some(wake) = &self.wake {
            wake.notify_one();
        }
        Ok(())
    }
}

pub(crate) async fn migrate(pool: &PgPool, table: &TableName) -> Result<()> {
    let t = table.pg();
    let q = table.derived("_quarantine").pg();
    let seq_idx = table.derived("_seq_idx").pg();
    let claim_idx = table.derived("_claim_idx").pg();
    let statements = [
        // The Go library's table, unchanged.
        format!(
            "CREATE TABLE IF NOT EXISTS {t} (batch_id VARCHAR(27) PRIMARY KEY, \
             message_count INTEGER, raw_data BYTEA NOT NULL, insert_time TIMESTAMP DEFAULT NOW())"
        ),
        // Insert order and claims; defaults keep the Go writer's INSERT working.
        format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS seq BIGSERIAL"),
        format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS claimed_by VARCHAR(64)"),
        format!("ALTER TABLE {t} ADD COLUMN IF NOT EXISTS claimed_until TIMESTAMPTZ"),
        format!("CREATE INDEX IF NOT EXISTS {seq_idx} ON {t} (seq)"),
        format!("CREATE INDEX IF NOT EXISTS {claim_idx} ON {t} (claimed_until)"),
        format!(
            "CREATE TABLE IF NOT EXISTS {q} (batch_id VARCHAR(27) PRIMARY KEY, \
             message_count INTEGER, raw_data BYTEA NOT NULL, insert_time TIMESTAMP, \
             quarantine_time TIMESTAMPTZ NOT NULL DEFAULT NOW(), reason TEXT NOT NULL)"
        ),
    ];
    // DDL takes strong locks even when it changes nothing: skip it when all is there.
    let ready: bool = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM information_schema.columns \
         WHERE table_schema = current_schema() AND table_name = $1 \
         AND column_name IN ('seq', 'claimed_by', 'claimed_until')) = 3 \
         AND to_regclass($2) IS NOT NULL AND to_regclass($3) IS NOT NULL \
         AND to_regclass($4) IS NOT NULL",
    )
    .bind(table.as_str())
    .bind(&seq_idx)
    .bind(&claim_idx)
    .bind(&q)
    .fetch_one(pool)
    .await
    .map_err(|e| db_err(DRIVER, "inspect outbox table", e))?;
    if ready {
        return Ok(());
    }
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| db_err(DRIVER, "begin migration", e))?;
    // Serializes migrations of the same table by several processes.
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(fnv1a(&format!("streams_sql.migrate.{table}")))
        .execute(&mut *tx)
        .await
        .map_err(|e| db_err(DRIVER, "lock migration", e))?;
    for sql in statements {
        sqlx::query(&sql)
            .execute(&mut *tx)
            .await
            .map_err(|e| db_err(DRIVER, "migrate outbox table", e))?;
    }
    tx.commit()
        .await
        .map_err(|e| db_err(DRIVER, "commit migration", e))
}

/// A [`Writer`] that owns a pool and writes each batch in a transaction of its own.
///
/// For services that have no business transaction to join (and for benchmarks). Use
/// [`PgOutbox::write`] to write atomically with your own changes.
#[derive(Debug, Clone)]
pub struct PgOutboxWriter {
    pool: PgPool,
    outbox: PgOutbox,
    closed: Arc<AtomicBool>,
}

impl PgOutboxWriter {
    /// A writer using `pool` and `outbox`.
    pub fn new(pool: PgPool, outbox: PgOutbox) -> Self {
        PgOutboxWriter {
            pool,
            outbox,
            closed: Arc::default(),
        }
    }

    /// The outbox it writes with.
    pub fn outbox(&self) -> &PgOutbox {
        &self.outbox
    }
}

#[async_trait]
impl Writer for PgOutboxWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("postgres outbox writer"));
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

/// [`EgressStorage`] on a PostgreSQL outbox table, for a [`Forwarder`](streams_core::Forwarder).
///
/// Batches are claimed in insert order with a lease (`claimed_by`, `claimed_until`), so
/// the separate fetch and delete calls of a relay stay safe when relays run side by
/// side, crash or lose their connection: a batch whose lease ran out is claimed again
/// (at least once). By default one relay at a time holds claims and the others stand
/// by, which keeps the order of every stream key across relays; with
/// [`with_parallel_claims`](Self::with_parallel_claims) relays claim disjoint sets at
/// once (more throughput, no order across relays). Undecodable batches move to
/// `<table>_quarantine` with the reason.
///
/// Give each forwarder its own storage: a storage reclaims its own unfinished claims on
/// the next fetch, which is how a restarted relay with a fixed
/// [`relay id`](Self::with_relay_id) picks up at once where it stopped.
#[derive(Clone)]
pub struct PgEgressStorage {
    pool: PgPool,
    table: TableName,
    claims: Claims,
    sql: Arc<PgSql>,
    heartbeat: Arc<Heartbeat>,
}

struct PgSql {
    claim: String,
    renew: String,
    delete: String,
    release: String,
    quarantine: String,
    list_quarantine: String,
    pending: String,
    lock_key: i64,
}

impl fmt::Debug for PgEgressStorage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgEgressStorage")
            .field("table", &self.table.as_str())
            .field("relay_id", &self.claims.relay_id)
            .field("lease", &self.claims.lease)
            .field("parallel", &self.claims.parallel)
            .finish()
    }
}

impl PgEgressStorage {
    /// Storage on `table` through `pool`, with a random relay id and a 60 s lease.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `table` is not a valid [`TableName`].
    pub fn new(pool: PgPool, table: &str) -> Result<Self> {
        let table = TableName::new(table)?;
        let claims = Claims::default();
        Ok(PgEgressStorage {
            sql: Arc::new(PgSql::new(&table, &claims)),
            pool,
            table,
            claims,
            heartbeat: Arc::default(),
        })
    }

    /// Names this relay in `claimed_by` (1 to 64 bytes). A relay restarted with the
    /// same id takes its unfinished claims back at once instead of waiting for the
    /// lease to run out.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty or too long id.
    pub fn with_relay_id(mut self, relay_id: &str) -> Result<Self> {
        self.claims.set_relay_id(relay_id)?;
        Ok(self)
    }

    /// How long claimed batches stay reserved for this relay (default 60 s). While the
    /// storage is alive its claims are renewed every third of the lease, so the lease
    /// is how long a relay that died keeps others waiting.
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.claims.lease = lease;
        self
    }

    /// Lets relays claim disjoint sets at the same time instead of one at a time.
    /// Order per stream key then holds within one relay only.
    pub fn with_parallel_claims(mut self, parallel: bool) -> Self {
        self.claims.parallel = parallel;
        self.sql = Arc::new(PgSql::new(&self.table, &self.claims));
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

    /// Creates the tables if they do not exist (as [`PgOutbox::migrate`]).
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
}

impl PgSql {
    fn new(table: &TableName, claims: &Claims) -> Self {
        let t = table.pg();
        let q = table.derived("_quarantine").pg();
        // In ordered mode nothing is claimed while another relay holds a live lease.
        let exclusive = if claims.parallel {
            ""
        } else {
            "AND NOT EXISTS (SELECT 1 FROM {t} o WHERE o.claimed_by <> $1 AND o.claimed_until >= now()) "
        }
        .replace("{t}", &t);
        PgSql {
            claim: format!(
                "WITH c AS (SELECT batch_id FROM {t} \
                 WHERE (claimed_until IS NULL OR claimed_until < now() OR claimed_by = $1) \
                 {exclusive}ORDER BY seq LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 UPDATE {t} AS b SET claimed_by = $1, \
                 claimed_until = now() + $3::float8 * interval '1 millisecond' \
                 FROM c WHERE b.batch_id = c.batch_id \
                 RETURNING b.seq, b.batch_id, b.raw_data"
            ),
            renew: format!(
                "UPDATE {t} SET claimed_until = now() + $2::float8 * interval '1 millisecond' \
                 WHERE claimed_until IS NOT NULL AND claimed_by = $1"
            ),
            delete: format!("DELETE FROM {t} WHERE batch_id = ANY($1)"),
            release: format!(
                "UPDATE {t} SET claimed_by = NULL, claimed_until = NULL \
                 WHERE batch_id = ANY($1) AND claimed_by = $2"
            ),
            quarantine: format!(
                "WITH moved AS (DELETE FROM {t} WHERE batch_id = $1 \
                 RETURNING batch_id, message_count, raw_data, insert_time) \
                 INSERT INTO {q} (batch_id, message_count, raw_data, insert_time, reason) \
                 SELECT batch_id, message_count, raw_data, insert_time, $2 FROM moved \
                 ON CONFLICT (batch_id) DO NOTHING"
            ),
            list_quarantine: format!(
                "SELECT batch_id, raw_data, reason FROM {q} ORDER BY quarantine_time, batch_id"
            ),
            pending: format!("SELECT count(*) FROM {t}"),
            lock_key: fnv1a(&format!("streams_sql.claim.{table}")),
        }
    }
}

#[async_trait]
impl EgressStorage for PgEgressStorage {
    async fn fetch(&self, limit: usize) -> Result<Vec<StoredBatch>> {
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let lease = self.claims.lease_millis() as f64;
        let claim = sqlx::query_as::<_, (i64, String, Vec<u8>)>(&self.sql.claim)
            .bind(&self.claims.relay_id)
            .bind(limit)
            .bind(lease);
        let mut rows = if self.claims.parallel {
            claim.fetch_all(&self.pool).await
        } else {
            // Claims are serialized so that two relays never both see "no live lease".
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| db_err(DRIVER, "begin claim", e))?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(self.sql.lock_key)
                .execute(&mut *tx)
                .await
                .map_err(|e| db_err(DRIVER, "lock claim", e))?;
            let rows = claim.fetch_all(&mut *tx).await;
            if rows.is_ok() {
                tx.commit()
                    .await
                    .map_err(|e| db_err(DRIVER, "commit claim", e))?;
            }
            rows
        }
        .map_err(|e| db_err(DRIVER, "claim outbox batches", e))?;
        rows.sort_unstable_by_key(|r| r.0);
        if !rows.is_empty() {
            let (pool, sql, relay_id) = (
                self.pool.clone(),
                self.sql.clone(),
                self.claims.relay_id.clone(),
            );
            self.heartbeat.ensure(self.claims.lease, move || {
                let (pool, sql, relay_id) = (pool.clone(), sql.clone(), relay_id.clone());
                async move {
                    sqlx::query(&sql.renew)
                        .bind(&relay_id)
                        .bind(lease)
                        .execute(&pool)
                        .await
                        .map(drop)
                        .map_err(|e| db_err(DRIVER, "renew outbox claims", e))
                }
            });
        }
        Ok(rows
            .into_iter()
            .map(|(_, id, raw)| StoredBatch {
                id,
                raw: Bytes::from(raw),
            })
            .collect())
    }

    async fn delete(&self, batch_ids: &[String]) -> Result<()> {
        if batch_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(&self.sql.delete)
            .bind(batch_ids)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(DRIVER, "delete outbox batches", e))?;
        Ok(())
    }

    async fn quarantine(&self, batch_id: &str, reason: &str) -> Result<()> {
        sqlx::query(&self.sql.quarantine)
            .bind(batch_id)
            .bind(reason.replace('\0', ""))
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(DRIVER, "quarantine outbox batch", e))?;
        Ok(())
    }

    async fn release(&self, batch_ids: &[String]) -> Result<()> {
        if batch_ids.is_empty() {
            return Ok(());
        }
        sqlx::query(&self.sql.release)
            .bind(batch_ids)
            .bind(&self.claims.relay_id)
            .execute(&self.pool)
            .await
            .map_err(|e| db_err(DRIVER, "release outbox batches", e))?;
        Ok(())
    }
}
