use std::fmt;
use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use streams_core::{CancellationToken, Error, IdFactory, KsuidFactory, Result};

use sqlx::pool::PoolConnection;

use crate::dialect::Sealed;
use crate::TableName;

/// Default lease on claimed batches.
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(60);

/// How a storage claims batches; shared by both databases.
#[derive(Debug, Clone)]
pub(crate) struct Claims {
    pub(crate) relay_id: String,
    pub(crate) lease: Duration,
    pub(crate) parallel: bool,
}

impl Default for Claims {
    fn default() -> Self {
        Claims {
            relay_id: format!("relay-{}", KsuidFactory.new_id()),
            lease: DEFAULT_LEASE,
            parallel: false,
        }
    }
}

impl Claims {
    pub(crate) fn set_relay_id(&mut self, id: &str) -> Result<()> {
        if id.is_empty() || id.len() > 64 {
            return Err(Error::invalid(
                "relay id",
                format!("{id:?} must have 1 to 64 bytes"),
            ));
        }
        self.relay_id = id.to_owned();
        Ok(())
    }

    pub(crate) fn lease_millis(&self) -> i64 {
        i64::try_from(self.lease.as_millis())
            .unwrap_or(i64::MAX)
            .max(1)
    }
}

/// Renews a storage's claims every third of the lease while the storage lives, so
/// only a relay that died (or hangs without its runtime) loses its claims.
#[derive(Debug, Default)]
pub(crate) struct Heartbeat {
    started: OnceLock<()>,
    stop: CancellationToken,
}

impl Heartbeat {
    /// Starts renewing on the first call; later calls do nothing.
    pub(crate) fn ensure<F, Fut>(&self, lease: Duration, renew: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = Result<()>> + Send + 'static,
    {
        if self.started.set(()).is_err() {
            return;
        }
        let stop = self.stop.clone();
        let every = (lease / 3).max(Duration::from_millis(1));
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                if let Err(e) = renew().await {
                    tracing::warn!(error = %e, "cannot renew outbox claims");
                }
            }
        });
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Wraps a sqlx error on `table` as a driver error of `D`, deciding whether trying
/// again may help.
pub(crate) fn db_err<D: Sealed>(
    operation: &'static str,
    table: &TableName,
    e: sqlx::Error,
) -> Error {
    sql_err::<D>(operation, format!("table `{table}`"), e)
}

/// A driver error of `D` whose message says what `about` (a table, a database) and the
/// database's own code and message, in one line.
pub(crate) fn sql_err<D: Sealed>(operation: &'static str, about: String, e: sqlx::Error) -> Error {
    Error::driver(D::DRIVER, operation, retryable(&e), SqlError::new(about, e))
}

/// Whether trying again may help.
pub(crate) fn retryable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // Serialization failure, deadlock, lock time-out, server shutting down,
            // connection trouble; MySQL reports lock wait time-outs as the catch-all HY000.
            matches!(
                db.code().as_deref(),
                Some("40001" | "40P01" | "55P03" | "57P01" | "57P03" | "08000" | "08003" | "08006")
            ) || db.message().contains("Lock wait timeout")
        }
        _ => false,
    }
}

/// A database failure in one line: what it was about, the database's code and message.
#[derive(Debug)]
pub(crate) struct SqlError {
    about: String,
    source: sqlx::Error,
}

impl SqlError {
    pub(crate) fn new(about: String, source: sqlx::Error) -> Self {
        SqlError { about, source }
    }
}

impl fmt::Display for SqlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.about, one_line(&self.source))
    }
}

impl std::error::Error for SqlError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// Longest database message kept in an error, in characters.
const MAX_MESSAGE: usize = 200;

/// The database's code and message (sqlx's text for other failures), on one line of at
/// most [`MAX_MESSAGE`] characters.
pub(crate) fn one_line(e: &sqlx::Error) -> String {
    let text = match e {
        sqlx::Error::Database(db) => match db.code() {
            Some(code) => format!("{code} {}", db.message()),
            None => db.message().to_owned(),
        },
        other => other.to_string(),
    };
    let mut text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if let Some((cut, _)) = text.char_indices().nth(MAX_MESSAGE) {
        text.truncate(cut);
        text.push_str("...");
    }
    text
}

/// A pooled connection that may hold a session-level lock or setting (MySQL's
/// `GET_LOCK`, `lock_wait_timeout`).
///
/// Unless [`keep`](Self::keep) is called once the lock is released, dropping it closes
/// the connection instead of returning it to the pool, and closing the session is what
/// frees its locks for sure. That includes a future dropped half-way (a cancelled
/// claim) and a lock whose `GET_LOCK` was still waiting: the pool would otherwise
/// finish that call and hand out a connection that holds the lock for good. On
/// PostgreSQL, whose locks end with the transaction, the connection goes back to the
/// pool as usual.
pub(crate) struct Session<D: Sealed> {
    conn: Option<PoolConnection<D>>,
    keep: bool,
}

impl<D: Sealed> Session<D> {
    pub(crate) fn new(conn: PoolConnection<D>) -> Self {
        Session {
            conn: Some(conn),
            keep: !D::SESSION_LOCKS,
        }
    }

    pub(crate) fn conn(&mut self) -> &mut D::Connection {
        self.conn
            .as_mut()
            .expect("a session has its connection until dropped")
    }

    /// Returns the connection to the pool: it holds no session lock any more.
    pub(crate) fn keep(mut self) {
        self.keep = true;
    }
}

impl<D: Sealed> Drop for Session<D> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            if !self.keep {
                drop(conn.detach());
            }
        }
    }
}

/// Stable 64-bit FNV-1a hash, used for advisory lock keys.
pub(crate) fn fnv1a(text: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relay_id_is_bounded() {
        let mut c = Claims::default();
        assert!(c.relay_id.starts_with("relay-"));
        assert!(c.set_relay_id("").is_err());
        assert!(c.set_relay_id(&"r".repeat(65)).is_err());
        c.set_relay_id("relay-a").unwrap();
        assert_eq!(c.relay_id, "relay-a");
    }

    #[test]
    fn lock_key_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_ne!(fnv1a("streams_sql.a"), fnv1a("streams_sql.b"));
    }

    #[test]
    fn io_errors_are_retryable_decode_errors_not() {
        let t = TableName::new("outbox").unwrap();
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert!(db_err::<sqlx::Postgres>("fetch", &t, io).is_retryable());
        let other = sqlx::Error::RowNotFound;
        assert!(!db_err::<sqlx::MySql>("fetch", &t, other).is_retryable());
    }

    #[test]
    fn errors_are_one_bounded_line() {
        let t = TableName::new("outbox").unwrap();
        let io = sqlx::Error::Io(std::io::Error::other(format!("reset\n{}", "x".repeat(500))));
        let text = db_err::<sqlx::Postgres>("claim outbox batches", &t, io).to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(text.len() < 300, "{} characters: {text}", text.len());
        assert!(
            text.starts_with("postgres: claim outbox batches failed: table `outbox`: "),
            "{text}"
        );
    }
}
