//! PostgreSQL: its SQL, its locks (advisory locks that end with the transaction) and
//! `NOTIFY`.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;
use sqlx::{PgConnection, Postgres};

use crate::common::fnv1a;
use crate::dialect::{Endpoint, Fut, Sealed, NOW};
use crate::{Outbox, TableName};

impl Sealed for Postgres {
    const DRIVER: &'static str = "postgres";
    const SCHEMA: &'static str = "current_schema()";
    const TEXT: &'static str = "TEXT";
    const SESSION_LOCKS: bool = false;
    const BLOB: &'static str = "BYTEA";
    const SEQ: &'static str = "BIGSERIAL UNIQUE";
    const TIME: &'static str = "TIMESTAMPTZ";
    const INSERT_IGNORE: (&'static str, &'static str) =
        ("INSERT INTO", " ON CONFLICT (batch_id) DO NOTHING");
    // PostgreSQL's default isolation, READ COMMITTED, is what claims need.
    const BEFORE_CLAIM: Option<&'static str> = None;

    fn lock_name(purpose: &str, table: &TableName) -> String {
        format!("streams_sql.{purpose}.{table}")
    }

    fn ddl_lock_wait(wait: Duration) -> String {
        // For the rest of the transaction.
        format!("SET LOCAL lock_timeout = '{}ms'", wait.as_millis().max(1))
    }

    fn quote(name: &TableName) -> String {
        format!("\"{name}\"")
    }

    fn param(n: usize) -> String {
        format!("${n}")
    }

    fn lease_end(param: &str) -> String {
        format!("{NOW} + {param}::float8 * interval '1 microsecond'")
    }

    fn insert_notify(table: &str) -> Option<String> {
        Some(format!(
            "WITH ins AS (INSERT INTO {table} (batch_id, message_count, raw_data) \
             VALUES ($1, $2, $3) RETURNING batch_id) \
             SELECT pg_notify($4, batch_id) FROM ins"
        ))
    }

    fn lock<'c>(conn: &'c mut PgConnection, name: &'c str, wait: Duration) -> Fut<'c, bool> {
        Box::pin(async move {
            // A transaction-level lock: it ends with the transaction, also when a
            // cancelled future drops the transaction (the rollback frees it).
            let millis = wait.as_millis().max(1);
            sqlx::query(&format!("SET LOCAL lock_timeout = '{millis}ms'"))
                .execute(&mut *conn)
                .await?;
            let locked = sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(fnv1a(name))
                .execute(&mut *conn)
                .await;
            match locked {
                Ok(_) => Ok(true),
                // lock_not_available: the lock_timeout ran out.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("55P03") => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    fn unlock<'c>(_: &'c mut PgConnection, _: &'c str) -> Fut<'c, ()> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn endpoint(o: &PgConnectOptions) -> Endpoint<'_> {
        (o.get_database(), o.get_host(), o.get_port(), o.get_socket())
    }
}

/// `NOTIFY`, which only PostgreSQL has.
impl Outbox<Postgres> {
    /// Notifies `channel` instead of the table name.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](streams_core::Error::Invalid) when `channel` is not a valid
    /// identifier.
    pub fn with_channel(mut self, channel: &str) -> streams_core::Result<Self> {
        self.channel = Some(TableName::new(channel)?);
        Ok(self)
    }

    /// Sends no `NOTIFY`; relays find the batches by polling or in-process wake-ups.
    pub fn without_notify(mut self) -> Self {
        self.channel = None;
        self
    }

    /// The `NOTIFY` channel, if any.
    pub fn channel(&self) -> Option<&TableName> {
        self.channel.as_ref()
    }
}
