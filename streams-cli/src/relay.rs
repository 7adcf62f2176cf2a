//! `streams relay`.

use std::sync::Arc;
use std::time::Duration;

use streams::sql::RelayBuilder;
use streams::{async_trait, BoxError, CancellationToken, Message, Result, Writer};

use crate::output::{JsonMessage, Output};

/// What `streams relay` moves.
#[derive(Debug, Clone)]
pub struct RelayArgs {
    /// The outbox database (`postgres://`, `mysql://`, `mariadb://`).
    pub from: String,
    /// The outbox table.
    pub table: String,
    /// Batches claimed per pass.
    pub batch_size: usize,
    /// Sleep between polls when nothing wakes the relay.
    pub poll_interval: Duration,
    /// Claim lease.
    pub lease: Duration,
    /// Fixed relay id.
    pub relay_id: Option<String>,
    /// Claim alongside other relays without order across them.
    pub parallel: bool,
    /// Create the outbox tables if missing.
    pub create_table: bool,
    /// Poll only (no PostgreSQL LISTEN/NOTIFY).
    pub no_listen: bool,
    /// Relay what is there, then exit.
    pub once: bool,
}

/// What a relay moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayReport {
    /// Outbox rows (batches) relayed; counted in `--once` mode only.
    pub batches: usize,
    /// Messages in them.
    pub messages: usize,
    /// Rows quarantined.
    pub quarantined: usize,
}

/// Prints each message as a JSON line: the relay's `--to stdout`.
#[derive(Debug, Clone)]
pub struct PrintWriter(pub Output);

#[async_trait]
impl Writer for PrintWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        for m in &batch {
            self.0
                .line(&JsonMessage::from_message(m).to_line())
                .map_err(|e| streams::Error::driver("stdout", "write", false, e))?;
        }
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        Ok(())
    }
}

/// Moves outbox batches to `destination` until `stop` fires or, with `once`, until the
/// outbox is empty.
///
/// # Errors
///
/// The database cannot be reached or prepared; in `once` mode, a pass that fails.
pub async fn relay(
    args: RelayArgs,
    destination: Arc<dyn Writer>,
    stop: CancellationToken,
) -> std::result::Result<RelayReport, BoxError> {
    let mut source = RelayBuilder::new(&args.from)
        .with_table(&args.table)
        .with_lease(args.lease)
        .with_parallel(args.parallel)
        .with_create_table(args.create_table)
        .with_listen(!args.no_listen && !args.once)
        .with_fetch_limit(args.batch_size)
        .with_poll_interval(args.poll_interval);
    if let Some(id) = &args.relay_id {
        source = source.with_relay_id(id);
    }
    let relay = source.connect(destination.clone()).await?;
    let mut report = RelayReport::default();
    if args.once {
        loop {
            if stop.is_cancelled() {
                break;
            }
            let pass = relay.relay_once().await?;
            report.batches += pass.relayed;
            report.messages += pass.messages;
            report.quarantined += pass.quarantined;
            if pass.fetched == 0 {
                break;
            }
        }
    } else {
        relay.run(stop).await?;
    }
    destination.close().await?;
    Ok(report)
}
