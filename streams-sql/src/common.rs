use std::future::Future;
use std::sync::OnceLock;
use std::time::Duration;

use streams_core::{CancellationToken, Error, IdFactory, KsuidFactory, Result};

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

/// Wraps a sqlx error as a driver error, deciding whether trying again may help.
pub(crate) fn db_err(driver: &'static str, operation: &'static str, e: sqlx::Error) -> Error {
    let retryable = match &e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => {
            // Serialization failure, deadlock, server shutting down, connection
            // trouble; MySQL reports lock wait time-outs as the catch-all HY000.
            matches!(
                db.code().as_deref(),
                Some("40001" | "40P01" | "57P01" | "57P03" | "08000" | "08003" | "08006")
            ) || db.message().contains("Lock wait timeout")
        }
        _ => false,
    };
    Error::driver(driver, operation, retryable, e)
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
        let io = sqlx::Error::Io(std::io::Error::other("reset"));
        assert!(db_err("postgres", "fetch", io).is_retryable());
        let other = sqlx::Error::RowNotFound;
        assert!(!db_err("postgres", "fetch", other).is_retryable());
    }
}
