//! Opening a relay from a database URL, for the `streams relay` command.

use std::sync::Arc;
use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::Pool;
use streams_core::{OutboxStore, Relay, Result, Writer};

use crate::{
    open_pool, Dialect, PgNotifications, SqlOutboxStore, DEFAULT_CONNECT_TIMEOUT, DEFAULT_TABLE,
};

/// Builds the outbox [`Relay`] of a database from its URL and the store's settings, so
/// a program (such as `streams relay`) can build a relay from its flags.
///
/// ```no_run
/// # async fn demo(dest: std::sync::Arc<dyn streams_core::Writer>) -> streams_core::Result<()> {
/// use std::time::Duration;
/// use streams_core::CancellationToken;
/// use streams_sql::RelayBuilder;
///
/// let relay = RelayBuilder::new("postgres://postgres@127.0.0.1:5432/test")
///     .with_table("streams_egress")
///     .with_lease(Duration::from_secs(30))
///     .connect(dest)
///     .await?;
/// relay.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct RelayBuilder {
    database_url: String,
    table: String,
    lease: Duration,
    relay_id: Option<String>,
    parallel: bool,
    create_table: bool,
    listen: bool,
    fetch_limit: usize,
    poll_interval: Duration,
    connect_timeout: Duration,
    max_connections: u32,
}

impl std::fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RelayBuilder")
            .field("table", &self.table)
            .field("lease", &self.lease)
            .field("relay_id", &self.relay_id)
            .field("parallel", &self.parallel)
            .field("create_table", &self.create_table)
            .field("listen", &self.listen)
            .field("fetch_limit", &self.fetch_limit)
            .field("poll_interval", &self.poll_interval)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// A source for `database_url` (`postgres://`, `postgresql://`, `mysql://` or
    /// `mariadb://`), table [`DEFAULT_TABLE`], a 60 s lease, ordered claims,
    /// LISTEN/NOTIFY on PostgreSQL, 100 batches per pass, a 1 s poll interval and
    /// [`DEFAULT_CONNECT_TIMEOUT`] to open the database.
    pub fn new(database_url: impl Into<String>) -> Self {
        RelayBuilder {
            database_url: database_url.into(),
            table: DEFAULT_TABLE.to_owned(),
            lease: Duration::from_secs(60),
            relay_id: None,
            parallel: false,
            create_table: false,
            listen: true,
            fetch_limit: 100,
            poll_interval: Duration::from_secs(1),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_connections: 4,
        }
    }

    /// The outbox table.
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// How long a claim lasts before another relay may take the rows over (at least
    /// one second).
    pub fn with_lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_secs(1));
        self
    }

    /// A fixed relay id; a restarted relay with the same id resumes its claims at once.
    pub fn with_relay_id(mut self, id: impl Into<String>) -> Self {
        self.relay_id = Some(id.into());
        self
    }

    /// Claim disjoint sets alongside other relays (no order across relays).
    pub fn with_parallel(mut self, parallel: bool) -> Self {
        self.parallel = parallel;
        self
    }

    /// Create the outbox and quarantine tables if missing. Without it the outbox table
    /// must exist; one the Go library created gets the relay's columns either way.
    pub fn with_create_table(mut self, create: bool) -> Self {
        self.create_table = create;
        self
    }

    /// Wake on PostgreSQL `NOTIFY` (default true; MySQL always polls).
    pub fn with_listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Batches claimed per pass (at least 1).
    pub fn with_fetch_limit(mut self, limit: usize) -> Self {
        self.fetch_limit = limit.max(1);
        self
    }

    /// Sleep between polls when nothing wakes the relay (at least 1 ms).
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval.max(Duration::from_millis(1));
        self
    }

    /// How long opening the database may take before [`connect`](Self::connect) fails
    /// (default [`DEFAULT_CONNECT_TIMEOUT`]; `connect_timeout=<seconds>` in the URL
    /// overrides it).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects, checks or creates the outbox table and returns a relay to
    /// `destination`, woken by PostgreSQL notifications where the database has them.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](streams_core::Error::Invalid) for a URL of another scheme or an invalid table or relay id;
    /// a driver error when the database cannot be reached or the migration fails.
    pub async fn connect(&self, destination: Arc<dyn Writer>) -> Result<Relay> {
        let url = self.database_url.trim();
        let relay = if crate::connect::platform_of(url)? == "postgres" {
            let (pool, storage) = self.storage::<sqlx::Postgres>(url).await?;
            let relay = Relay::new(storage, destination);
            if self.listen {
                relay.with_wake_source(PgNotifications::new(pool, &self.table)?)
            } else {
                relay
            }
        } else {
            let url = match url.split_once("://") {
                Some((_, rest)) => format!("mysql://{rest}"),
                None => url.to_owned(),
            };
            Relay::new(self.storage::<sqlx::MySql>(&url).await?.1, destination)
        };
        Ok(relay
            .with_fetch_limit(self.fetch_limit)
            .with_poll_interval(self.poll_interval))
    }

    async fn storage<D: Dialect>(&self, url: &str) -> Result<(Pool<D>, Arc<dyn OutboxStore>)> {
        let options = PoolOptions::new()
            .max_connections(self.max_connections)
            .acquire_timeout(self.connect_timeout);
        let pool = open_pool::<D>(url, options).await?;
        let mut storage = SqlOutboxStore::new(pool.clone(), &self.table)?
            .with_lease(self.lease)
            .with_parallel_claims(self.parallel);
        if let Some(id) = &self.relay_id {
            storage = storage.with_relay_id(id)?;
        }
        if self.create_table {
            storage.migrate().await?;
        } else {
            storage.check_schema().await?;
        }
        tracing::info!(
            table = %self.table,
            relay_id = storage.relay_id(),
            database = D::DRIVER,
            "relaying from the outbox"
        );
        Ok((pool, Arc::new(storage)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use streams_core::Error;

    #[tokio::test]
    async fn other_schemes_are_rejected_without_echoing_the_url() {
        #[derive(Debug)]
        struct Nowhere;
        #[streams_core::async_trait]
        impl Writer for Nowhere {
            async fn write(&self, _: Vec<streams_core::Message>) -> Result<()> {
                Ok(())
            }
            async fn close(&self) -> Result<()> {
                Ok(())
            }
        }
        let err = RelayBuilder::new("redis://user:hunter2@localhost")
            .connect(Arc::new(Nowhere))
            .await
            .unwrap_err();
        assert!(matches!(err, Error::Invalid { .. }), "{err:?}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let dbg = format!("{:?}", RelayBuilder::new("postgres://u:hunter2@h/db"));
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
