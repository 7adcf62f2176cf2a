//! Claiming, deleting, releasing and quarantining outbox rows for a relay.

use std::sync::Arc;
use std::time::Duration;

use sqlx::Pool;
use streams_core::{async_trait, Error, OutboxStore, Result, StoredBatch};
use tokio::sync::OnceCell;

use crate::common::{db_err, Claims, Heartbeat, Session};
use crate::dialect::{param_list, Arg, Dialect, Kind, Value, NOW};
use crate::{schema, TableName};

/// Ids per `IN (...)` list, well below every database's placeholder limit.
const IDS_PER_STATEMENT: usize = 1000;

/// How long an ordered claim waits for the lock that serializes claims.
const CLAIM_LOCK_WAIT: Duration = Duration::from_secs(10);

/// [`OutboxStore`] on an outbox table, for the outbox [`Relay`](streams_core::Relay):
/// [`PgOutboxStore`] on PostgreSQL, [`MySqlOutboxStore`] on MySQL 8 and MariaDB
/// 10.6 and later (for `SKIP LOCKED`).
///
/// Batches are claimed in insert order with a lease (`claimed_by`, `claimed_until`), so
/// the separate fetch and delete calls of a relay stay safe when relays run side by
/// side, crash or lose their connection: a batch whose lease ran out is claimed again
/// (at least once). By default one relay at a time holds claims and the others stand
/// by, which keeps the order of every stream key across relays (claims are serialized
/// by a lock that ends with the claim, also a cancelled one); with
/// [`with_parallel_claims`](Self::with_parallel_claims) relays claim disjoint sets at
/// once (more throughput, no order across relays). Undecodable batches move to
/// `<table>_quarantine` with the reason.
///
/// On its first fetch the storage checks the table once: a table the Go library
/// created gets the relay's columns (see [`migrate`](Self::migrate)); a missing table is
/// an error saying so.
///
/// Give each relay its own store: a store reclaims its own unfinished claims on
/// the next fetch, which is how a restarted relay with a fixed
/// [`relay id`](Self::with_relay_id) picks up at once where it stopped.
#[derive(Debug)]
pub struct SqlOutboxStore<D: Dialect> {
    shared: Arc<Shared<D>>,
    claims: Claims,
}

/// What the clones of a storage share.
#[derive(Debug)]
struct Shared<D: Dialect> {
    pool: Pool<D>,
    table: TableName,
    sql: StorageSql,
    heartbeat: Heartbeat,
    schema_checked: OnceCell<()>,
}

/// The relay's storage on PostgreSQL.
pub type PgOutboxStore = SqlOutboxStore<sqlx::Postgres>;

/// The relay's storage on MySQL and MariaDB.
pub type MySqlOutboxStore = SqlOutboxStore<sqlx::MySql>;

/// The storage's SQL, built once per table; `*_in` statements end where an `IN` list
/// of ids is appended.
#[derive(Debug)]
struct StorageSql {
    renew: Arc<str>,
    live_foreign_lease: String,
    select_claimable: String,
    claim_in: String,
    delete_in: String,
    release_in: String,
    quarantine_copy: String,
    quarantine_delete: String,
    list_quarantine: String,
    pending: String,
    claim_lock: String,
}

impl StorageSql {
    fn new<D: Dialect>(table: &TableName) -> Self {
        let t = D::quote(table);
        let q = D::quote(&table.derived("_quarantine"));
        let (p1, p2) = (D::param(1), D::param(2));
        let (insert_ignore, on_conflict) = D::INSERT_IGNORE;
        StorageSql {
            renew: format!(
                "UPDATE {t} SET claimed_until = {} \
                 WHERE claimed_until IS NOT NULL AND claimed_by = {p2}",
                D::lease_end(&p1)
            )
            .into(),
            live_foreign_lease: format!(
                "SELECT COUNT(*) FROM (SELECT 1 AS live FROM {t} \
                 WHERE claimed_by <> {p1} AND claimed_until >= {NOW} LIMIT 1) AS busy"
            ),
            select_claimable: format!(
                "SELECT seq, batch_id, raw_data FROM {t} \
                 WHERE (claimed_until IS NULL OR claimed_until < {NOW} OR claimed_by = {p1}) \
                 ORDER BY seq LIMIT {p2} FOR UPDATE SKIP LOCKED"
            ),
            claim_in: format!(
                "UPDATE {t} SET claimed_by = {p1}, claimed_until = {} WHERE batch_id IN ",
                D::lease_end(&p2)
            ),
            delete_in: format!("DELETE FROM {t} WHERE batch_id IN "),
            release_in: format!(
                "UPDATE {t} SET claimed_by = NULL, claimed_until = NULL \
                 WHERE claimed_by = {p1} AND batch_id IN "
            ),
            quarantine_copy: format!(
                "{insert_ignore} {q} (batch_id, message_count, raw_data, insert_time, reason) \
                 SELECT batch_id, message_count, raw_data, insert_time, {p1} FROM {t} \
                 WHERE batch_id = {p2}{on_conflict}"
            ),
            quarantine_delete: format!("DELETE FROM {t} WHERE batch_id = {p1}"),
            list_quarantine: format!(
                "SELECT batch_id, raw_data, reason FROM {q} ORDER BY quarantine_time, batch_id"
            ),
            pending: format!("SELECT COUNT(*) FROM {t}"),
            claim_lock: D::lock_name("claim", table),
        }
    }
}

impl<D: Dialect> Clone for SqlOutboxStore<D> {
    fn clone(&self) -> Self {
        SqlOutboxStore {
            shared: self.shared.clone(),
            claims: self.claims.clone(),
        }
    }
}

impl<D: Dialect> SqlOutboxStore<D> {
    /// Storage on `table` through `pool`, with a random relay id and a 60 s lease.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] when `table` is not a valid [`TableName`].
    pub fn new(pool: Pool<D>, table: &str) -> Result<Self> {
        let table = TableName::new(table)?;
        let shared = Shared {
            sql: StorageSql::new::<D>(&table),
            pool,
            table,
            heartbeat: Heartbeat::default(),
            schema_checked: OnceCell::new(),
        };
        Ok(SqlOutboxStore {
            shared: Arc::new(shared),
            claims: Claims::default(),
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
        self
    }

    /// The outbox table.
    pub fn table(&self) -> &TableName {
        &self.shared.table
    }

    /// This relay's id.
    pub fn relay_id(&self) -> &str {
        &self.claims.relay_id
    }

    /// Creates the tables if they do not exist and adds the relay's columns to a table
    /// the Go library created (as [`Outbox::migrate`](crate::Outbox::migrate)).
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn migrate(&self) -> Result<()> {
        schema::migrate(&self.shared.pool, &self.shared.table, true).await
    }

    /// Checks the table once per storage: adds the relay's columns to a table the Go
    /// library created; a missing table is an error.
    pub(crate) async fn check_schema(&self) -> Result<()> {
        self.shared
            .schema_checked
            .get_or_try_init(|| schema::migrate(&self.shared.pool, &self.shared.table, false))
            .await
            .map(drop)
    }

    /// Batches waiting or claimed.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn pending(&self) -> Result<u64> {
        let rows = self
            .fetch_rows(
                "count outbox",
                &self.shared.sql.pending,
                Vec::new(),
                &[Kind::Int],
            )
            .await?;
        Ok(rows.first().map_or(0, |r| r[0].int()).max(0) as u64)
    }

    /// Quarantined batches with their reasons, oldest first.
    ///
    /// # Errors
    ///
    /// A database failure.
    pub async fn quarantined(&self) -> Result<Vec<(StoredBatch, String)>> {
        let kinds = &[Kind::Text, Kind::Bytes, Kind::Text];
        let rows = self
            .fetch_rows(
                "list quarantine",
                &self.shared.sql.list_quarantine,
                Vec::new(),
                kinds,
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|mut r| {
                let batch = StoredBatch {
                    id: r[0].text(),
                    raw: r[1].bytes().into(),
                };
                (batch, r[2].text())
            })
            .collect())
    }

    async fn fetch_rows(
        &self,
        operation: &'static str,
        sql: &str,
        args: Vec<Arg<'_>>,
        kinds: &'static [Kind],
    ) -> Result<Vec<Vec<Value>>> {
        let err = |e| db_err::<D>(operation, &self.shared.table, e);
        let mut conn = self.shared.pool.acquire().await.map_err(err)?;
        D::fetch(&mut conn, sql, args, kinds).await.map_err(err)
    }

    /// Runs `<statement> IN (...)` over `ids`, a chunk at a time, after `first` values.
    async fn by_ids(
        &self,
        operation: &'static str,
        statement: &str,
        first: &[Arg<'_>],
        ids: &[String],
    ) -> Result<()> {
        let err = |e| db_err::<D>(operation, &self.shared.table, e);
        let mut conn = self.shared.pool.acquire().await.map_err(err)?;
        for chunk in ids.chunks(IDS_PER_STATEMENT) {
            let sql = format!(
                "{statement}{}",
                param_list::<D>(first.len() + 1, chunk.len())
            );
            let mut args = first.to_vec();
            args.extend(chunk.iter().map(|id| Arg::Text(id)));
            D::execute(&mut conn, &sql, args).await.map_err(err)?;
        }
        Ok(())
    }

    async fn claim(&self, limit: usize) -> Result<Vec<StoredBatch>> {
        let err = |e| db_err::<D>("claim outbox batches", &self.shared.table, e);
        let limit = i64::try_from(limit.max(1)).unwrap_or(i64::MAX);
        let relay = Arg::Text(&self.claims.relay_id);
        let ordered = !self.claims.parallel;
        let mut session = Session::new(self.shared.pool.acquire().await.map_err(err)?);
        if let Some(sql) = D::BEFORE_CLAIM {
            D::execute(session.conn(), sql, Vec::new())
                .await
                .map_err(err)?;
        }
        let mut tx = sqlx::Connection::begin(session.conn()).await.map_err(err)?;
        // Ordered claims are serialized so that two relays never both see "no live
        // lease"; then nothing is claimed while another relay holds one.
        let mut busy = false;
        if ordered {
            if !D::lock(&mut *tx, &self.shared.sql.claim_lock, CLAIM_LOCK_WAIT)
                .await
                .map_err(err)?
            {
                return Err(Error::Timeout {
                    operation: "outbox claim lock",
                    after: CLAIM_LOCK_WAIT,
                });
            }
            let live = D::fetch(
                &mut *tx,
                &self.shared.sql.live_foreign_lease,
                vec![relay],
                &[Kind::Int],
            )
            .await
            .map_err(err)?;
            busy = live.first().is_some_and(|r| r[0].int() > 0);
        }
        let mut rows = Vec::new();
        if !busy {
            let kinds = &[Kind::Int, Kind::Text, Kind::Bytes];
            let args = vec![relay, Arg::Int(limit)];
            rows = D::fetch(&mut *tx, &self.shared.sql.select_claimable, args, kinds)
                .await
                .map_err(err)?;
        }
        if !rows.is_empty() {
            let sql = format!(
                "{}{}",
                self.shared.sql.claim_in,
                param_list::<D>(3, rows.len())
            );
            let mut args = vec![relay, Arg::Int(self.lease_micros())];
            args.extend(rows.iter().map(|r| Arg::Text(r[1].as_text())));
            D::execute(&mut *tx, &sql, args).await.map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        if ordered {
            D::unlock(session.conn(), &self.shared.sql.claim_lock)
                .await
                .map_err(err)?;
        }
        session.keep();
        rows.sort_unstable_by_key(|r| r[0].int());
        Ok(rows
            .into_iter()
            .map(|mut r| StoredBatch {
                id: r[1].text(),
                raw: r[2].bytes().into(),
            })
            .collect())
    }

    fn lease_micros(&self) -> i64 {
        self.claims.lease_millis().saturating_mul(1000)
    }
}

#[async_trait]
impl<D: Dialect> OutboxStore for SqlOutboxStore<D> {
    async fn fetch(&self, limit: usize) -> Result<Vec<StoredBatch>> {
        self.check_schema().await?;
        let claimed = self.claim(limit).await?;
        if !claimed.is_empty() {
            // The renewal holds what it needs, not the storage, so that dropping the
            // storage stops it.
            let shared = &self.shared;
            let (pool, sql, table) = (
                shared.pool.clone(),
                shared.sql.renew.clone(),
                shared.table.clone(),
            );
            let (relay_id, micros) = (self.claims.relay_id.clone(), self.lease_micros());
            shared.heartbeat.ensure(self.claims.lease, move || {
                let (pool, sql, relay_id, table) =
                    (pool.clone(), sql.clone(), relay_id.clone(), table.clone());
                async move {
                    let err = |e| db_err::<D>("renew outbox claims", &table, e);
                    let mut conn = pool.acquire().await.map_err(err)?;
                    let args = vec![Arg::Int(micros), Arg::Text(&relay_id)];
                    D::execute(&mut conn, &sql, args).await.map_err(err)
                }
            });
        }
        Ok(claimed)
    }

    async fn delete(&self, batch_ids: &[String]) -> Result<()> {
        self.by_ids(
            "delete outbox batches",
            &self.shared.sql.delete_in,
            &[],
            batch_ids,
        )
        .await
    }

    async fn quarantine(&self, batch_id: &str, reason: &str) -> Result<()> {
        let err = |e| db_err::<D>("quarantine outbox batch", &self.shared.table, e);
        // PostgreSQL text cannot hold NUL.
        let reason = reason.replace('\0', "");
        let mut tx = self.shared.pool.begin().await.map_err(err)?;
        let copy = vec![Arg::Text(&reason), Arg::Text(batch_id)];
        D::execute(&mut *tx, &self.shared.sql.quarantine_copy, copy)
            .await
            .map_err(err)?;
        D::execute(
            &mut *tx,
            &self.shared.sql.quarantine_delete,
            vec![Arg::Text(batch_id)],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)
    }

    async fn release(&self, batch_ids: &[String]) -> Result<()> {
        let relay = [Arg::Text(&self.claims.relay_id)];
        self.by_ids(
            "release outbox batches",
            &self.shared.sql.release_in,
            &relay,
            batch_ids,
        )
        .await
    }
}
