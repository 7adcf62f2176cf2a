use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use streams_core::egress::Forwarder;
use streams_core::middleware::RetryPolicy;
use streams_core::{CancellationToken, EgressStorage, Result, Writer};
use tokio::sync::Notify;

use crate::TableName;

/// Moves outbox batches to a destination: a [`Forwarder`] plus its wake-ups.
///
/// The forwarder relays while the outbox has full sets, then sleeps until one of these
/// wakes it: a PostgreSQL `NOTIFY` on the outbox channel
/// ([`with_pg_listen`](Self::with_pg_listen)), an in-process notification from the
/// outbox after a commit ([`wake`](Self::wake), the agentless mode), or the poll
/// interval as a fallback for everything else (MySQL, missed notifications).
///
/// Batches go out in insert order, each deleted only after the destination accepted
/// it (at least once); undecodable ones are quarantined. [`run`](Self::run) returns
/// after `cancel` fires, once the pass in flight has finished.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, dest: std::sync::Arc<dyn streams_core::Writer>) -> streams_core::Result<()> {
/// use std::sync::Arc;
/// use streams_core::CancellationToken;
/// use streams_sql::{PgEgressStorage, Relay};
///
/// let storage = PgEgressStorage::new(pool.clone(), "streams_egress")?;
/// let relay = Relay::new(Arc::new(storage), dest).with_pg_listen(pool, "streams_egress")?;
/// relay.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Relay {
    forwarder: Forwarder,
    wake: Arc<Notify>,
    listen: Option<(PgPool, TableName)>,
}

impl Relay {
    /// A relay from `storage` to `destination`, fetching 100 batches per pass and
    /// polling every second when idle.
    pub fn new(storage: Arc<dyn EgressStorage>, destination: Arc<dyn Writer>) -> Self {
        Relay {
            forwarder: Forwarder::new(storage, destination),
            wake: Arc::new(Notify::new()),
            listen: None,
        }
    }

    /// Batches fetched per pass (at least 1).
    pub fn with_fetch_limit(self, limit: usize) -> Self {
        self.forwarding(|f| f.with_fetch_limit(limit))
    }

    /// Wakes on `wake` instead of the relay's own notifier.
    pub fn with_wake(mut self, wake: Arc<Notify>) -> Self {
        self.wake = wake;
        self
    }

    /// Messages per destination write; see [`Forwarder::with_max_write_messages`]
    /// (default 500).
    pub fn with_max_write_messages(self, messages: usize) -> Self {
        self.forwarding(|f| f.with_max_write_messages(messages))
    }

    /// Wakes on PostgreSQL notifications on `channel` (see
    /// [`PgOutbox::with_channel`](crate::PgOutbox::with_channel); the table name by
    /// default). The listener holds one connection of `pool` and reconnects when it
    /// loses it, waking the relay to catch up.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](streams_core::Error::Invalid) for an invalid channel name.
    pub fn with_pg_listen(mut self, pool: PgPool, channel: &str) -> Result<Self> {
        self.listen = Some((pool, TableName::new(channel)?));
        Ok(self)
    }

    /// How long the relay sleeps when the outbox is empty and nothing wakes it.
    pub fn with_poll_interval(self, interval: Duration) -> Self {
        self.forwarding(|f| f.with_poll_interval(interval))
    }

    /// The notifier that wakes this relay; give it to
    /// [`PgOutbox::with_wake`](crate::PgOutbox::with_wake) or
    /// [`MySqlOutbox::with_wake`](crate::MySqlOutbox::with_wake) in the agentless mode.
    pub fn wake(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// How destination failures are retried within a pass.
    pub fn with_retry(self, retry: RetryPolicy) -> Self {
        self.forwarding(|f| f.with_retry(retry))
    }

    fn forwarding(mut self, configure: impl FnOnce(Forwarder) -> Forwarder) -> Self {
        self.forwarder = configure(self.forwarder);
        self
    }

    /// The forwarder, for one-off passes ([`Forwarder::forward_once`]).
    pub fn forwarder(&self) -> &Forwarder {
        &self.forwarder
    }

    /// Relays until `cancel` fires. Failed passes are logged at error level and tried
    /// again with capped backoff, every outbox row kept in order; see
    /// [`Forwarder::run`].
    ///
    /// # Errors
    ///
    /// What no waiting can mend, as [`Forwarder::run`] returns it: the destination
    /// writer is closed, or the outbox storage fails with an error that is not
    /// retryable.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let stop_listener = cancel.child_token();
        let listener = self.listen.map(|(pool, channel)| {
            tokio::spawn(listen(
                pool,
                channel,
                self.wake.clone(),
                stop_listener.clone(),
            ))
        });
        let result = self.forwarder.run(Some(self.wake), cancel).await;
        stop_listener.cancel();
        if let Some(task) = listener {
            let _ = task.await;
        }
        result
    }

    /// Runs the relay on a task of its own.
    pub fn spawn(self, cancel: CancellationToken) -> tokio::task::JoinHandle<Result<()>> {
        tokio::spawn(self.run(cancel))
    }
}

async fn listen(pool: PgPool, channel: TableName, wake: Arc<Notify>, cancel: CancellationToken) {
    let mut failures = 0u32;
    while !cancel.is_cancelled() {
        match subscribe(&pool, &channel).await {
            Ok(mut listener) => {
                failures = 0;
                // Anything committed while we were not listening.
                wake.notify_one();
                loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        received = listener.try_recv() => match received {
                            Ok(Some(_)) => wake.notify_one(),
                            Ok(None) => {
                                // Connection lost: the next try_recv reconnects and
                                // listens again; catch up on what we missed.
                                tracing::warn!(channel = %channel, "outbox listener reconnecting");
                                wake.notify_one();
                            }
                            Err(e) => {
                                tracing::warn!(channel = %channel, error = %e, "outbox listener failed");
                                break;
                            }
                        },
                    }
                }
            }
            Err(e) => {
                tracing::warn!(channel = %channel, error = %e, "cannot listen for outbox notifications");
            }
        }
        failures = failures.saturating_add(1);
        let delay = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

async fn subscribe(pool: &PgPool, channel: &TableName) -> sqlx::Result<PgListener> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(channel.as_str()).await?;
    Ok(listener)
}
