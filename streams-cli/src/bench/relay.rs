//! `streams --url postgres://... bench --relay-to URL`: the outbox relay's latency, from
//! each insert's commit to the handler on the relay's destination.

use std::sync::Arc;

use streams::sql::RelayBuilder;
use streams::{BoxError, CancellationToken, Connection, NoStreamAdmin};

use crate::{BenchCmd, Output, Summary};

/// The outbox table the relay bench writes to and relays from.
pub(crate) const TABLE: &str = "streams_bench_outbox";

/// Writes the bench's messages to the outbox of the `url` database, runs a relay
/// (woken by PostgreSQL notifications) to `cmd.relay_to`, and measures from each
/// insert's commit to the handler reading the destination.
pub(crate) async fn bench_relay(
    url: &str,
    cmd: BenchCmd,
    out: Output,
    stop: CancellationToken,
) -> Result<Summary, BoxError> {
    let to = cmd
        .relay_to
        .clone()
        .ok_or("--relay-to names no destination")?;
    if url.contains("table=") {
        return Err(format!(
            "--relay-to writes to the table `{TABLE}`: leave `table` out of --url"
        )
        .into());
    }
    let destination = streams::connect(&to).await?;
    let sep = if url.contains('?') { '&' } else { '?' };
    let outbox = streams::connect(&format!("{url}{sep}table={TABLE}&create_table=true")).await?;
    let relay = RelayBuilder::new(url)
        .with_table(TABLE)
        .with_listen(true)
        .connect(destination.writer())
        .await?;
    let relay_stop = stop.child_token();
    let relaying = {
        let relay_stop = relay_stop.clone();
        tokio::spawn(async move { relay.run(relay_stop).await })
    };
    let conn = Connection::new("outbox-relay", outbox.writer(), Some(destination.reader()?))
        .with_admin(Arc::new(NoStreamAdmin));
    let result = crate::bench_command(&conn, cmd, None, out, stop).await;
    relay_stop.cancel();
    let relayed = relaying.await.map_err(|e| format!("relay task: {e}"))?;
    let closed = (
        outbox.writer().close().await,
        destination.writer().close().await,
    );
    let summary = result?;
    relayed.map_err(|e| format!("the relay failed: {e}"))?;
    closed.0?;
    closed.1?;
    Ok(summary.replace(
        "bench on outbox-relay",
        &format!("relay bench from {TABLE} to {}", destination.platform()),
    ))
}
