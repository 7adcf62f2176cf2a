//! Waking the outbox relay on PostgreSQL notifications.

use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use streams_core::{async_trait, CancellationToken, Result, WakeSource};
use tokio::sync::Notify;

use crate::TableName;

/// Wakes a [`Relay`](streams_core::Relay) on PostgreSQL `NOTIFY` on the outbox's
/// channel (see [`PgOutbox::with_channel`](crate::PgOutbox::with_channel); the table
/// name by default), so batches go out as soon as they are committed instead of at the
/// next poll.
///
/// The listener holds one connection of the pool and reconnects when it loses it,
/// waking the relay to catch up on what it missed; the relay's poll interval covers the
/// time it is away.
///
/// ```no_run
/// # async fn demo(pool: sqlx::PgPool, dest: std::sync::Arc<dyn streams_core::Writer>) -> streams_core::Result<()> {
/// use std::sync::Arc;
/// use streams_core::{CancellationToken, Relay};
/// use streams_sql::{PgNotifications, PgOutboxStore};
///
/// let store = PgOutboxStore::new(pool.clone(), "streams_egress")?;
/// let relay = Relay::new(Arc::new(store), dest)
///     .with_wake_source(PgNotifications::new(pool, "streams_egress")?);
/// relay.run(CancellationToken::new()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct PgNotifications {
    pool: PgPool,
    channel: TableName,
}

impl PgNotifications {
    /// Notifications on `channel`, listened to with a connection of `pool`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](streams_core::Error::Invalid) for an invalid channel name.
    pub fn new(pool: PgPool, channel: &str) -> Result<Self> {
        Ok(PgNotifications {
            pool,
            channel: TableName::new(channel)?,
        })
    }
}

#[async_trait]
impl WakeSource for PgNotifications {
    async fn run(&self, wake: Arc<Notify>, cancel: CancellationToken) {
        listen(self.pool.clone(), self.channel.clone(), wake, cancel).await;
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
