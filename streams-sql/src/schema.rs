//! The outbox tables: created on demand, and a table the Go library created gets this
//! crate's columns, under a lock so that several processes can do it at once.

use std::time::Duration;

use sqlx::Pool;
use streams_core::{Error, Result};

use crate::common::{db_err, one_line, retryable, Session};
use crate::dialect::{Arg, Dialect, Kind, NOW};
use crate::TableName;

/// The columns this crate adds to the Go library's table: insert order and claims.
const RELAY_COLUMNS: [&str; 3] = ["seq", "claimed_by", "claimed_until"];

/// How long a migration waits for its lock (another process migrating the table).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// How long its DDL waits for a table lock. While it waits, the statements of Go
/// writers and relays that come after it wait behind it, so this is short: the
/// migration fails (retryably) rather than stall them.
const DDL_LOCK_WAIT: Duration = Duration::from_secs(5);

/// What exists of the outbox and quarantine tables: `table.column` names.
#[derive(Debug)]
struct Found(Vec<String>);

impl Found {
    fn has_table(&self, table: &TableName) -> bool {
        let prefix = format!("{table}.");
        self.0.iter().any(|c| c.starts_with(&prefix))
    }

    fn has_column(&self, table: &TableName, column: &str) -> bool {
        let name = format!("{table}.{column}");
        self.0.iter().any(|c| c.eq_ignore_ascii_case(&name))
    }
}

async fn inspect<D: Dialect>(conn: &mut D::Connection, table: &TableName) -> sqlx::Result<Found> {
    let quarantine = table.derived("_quarantine");
    let sql = format!(
        "SELECT CAST(CONCAT(table_name, '.', column_name) AS {}) \
         FROM information_schema.columns WHERE table_schema = {} AND table_name IN ({}, {})",
        D::TEXT,
        D::SCHEMA,
        D::param(1),
        D::param(2),
    );
    let args = vec![Arg::Text(table.as_str()), Arg::Text(quarantine.as_str())];
    let rows = D::fetch(conn, &sql, args, &[Kind::Text]).await?;
    Ok(Found(
        rows.into_iter()
            .filter_map(|mut row| row.pop().map(|mut v| v.text()))
            .collect(),
    ))
}

/// What brings the tables to this crate's shape, given what exists.
fn statements<D: Dialect>(table: &TableName, found: &Found) -> Vec<String> {
    let t = D::quote(table);
    let quarantine = table.derived("_quarantine");
    let mut out = Vec::new();
    if !found.has_table(table) {
        // The Go library's table, unchanged.
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {t} (batch_id VARCHAR(27) NOT NULL PRIMARY KEY, \
             message_count INTEGER, raw_data {} NOT NULL, \
             insert_time TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP)",
            D::BLOB,
        ));
    }
    // Defaults and NULLs keep the Go library's INSERT, SELECT and DELETE working.
    let adds: Vec<String> = RELAY_COLUMNS
        .iter()
        .filter(|c| !found.has_column(table, c))
        .map(|c| match *c {
            "seq" => format!("ADD COLUMN seq {}", D::SEQ),
            "claimed_by" => "ADD COLUMN claimed_by VARCHAR(64) NULL".to_owned(),
            _ => format!("ADD COLUMN claimed_until {} NULL", D::TIME),
        })
        .collect();
    if !adds.is_empty() {
        out.push(format!("ALTER TABLE {t} {}", adds.join(", ")));
    }
    if !found.has_column(table, "claimed_until") {
        out.push(format!(
            "CREATE INDEX {} ON {t} (claimed_until)",
            D::quote(&table.derived("_claim_idx"))
        ));
    }
    if !found.has_table(&quarantine) {
        out.push(format!(
            "CREATE TABLE IF NOT EXISTS {} (batch_id VARCHAR(27) NOT NULL PRIMARY KEY, \
             message_count INTEGER, raw_data {} NOT NULL, insert_time TIMESTAMP NULL, \
             quarantine_time {} NOT NULL DEFAULT {NOW}, reason TEXT NOT NULL)",
            D::quote(&quarantine),
            D::BLOB,
            D::TIME,
        ));
    }
    out
}

/// Brings the outbox tables to this crate's shape: creates them when `create` is set,
/// and adds the relay's columns and indexes to a table that lacks them (one the Go
/// library created). Does nothing, and takes no lock, when all is there.
///
/// The changes are safe while a Go relay or writer uses the table: they add nullable
/// or defaulted columns only, which its `SELECT`, `INSERT` and `DELETE` of the four Go
/// columns do not see; they wait at most [`DDL_LOCK_WAIT`] for the table lock. On
/// PostgreSQL adding `seq` rewrites the table under an exclusive lock, which is quick
/// for an outbox (its rows are deleted as they are relayed); on MySQL the table is
/// copied while reads go on and writes wait.
pub(crate) async fn migrate<D: Dialect>(
    pool: &Pool<D>,
    table: &TableName,
    create: bool,
) -> Result<()> {
    let err = |e| db_err::<D>("migrate outbox table", table, e);
    let mut session = Session::new(pool.acquire().await.map_err(err)?);
    let found = inspect::<D>(session.conn(), table).await.map_err(err)?;
    if statements::<D>(table, &found).is_empty() {
        session.keep();
        return Ok(());
    }
    if !create && !found.has_table(table) {
        return Err(Error::driver(
            D::DRIVER,
            "open outbox",
            false,
            format!(
                "table `{table}` does not exist; create it with `create_table` \
                 (`--create-table`, `migrate()`)"
            ),
        ));
    }
    // On PostgreSQL all of it is one transaction under a transaction-level advisory
    // lock. MySQL and MariaDB commit each DDL statement implicitly, so there the
    // transaction does not make the migration atomic: the session lock (`GET_LOCK`)
    // serializes migrations, every step is checked again under it, and the connection is
    // closed afterwards (see `Session`), which frees the lock whatever happened.
    let mut tx = sqlx::Connection::begin(session.conn()).await.map_err(err)?;
    let lock = D::lock_name("migrate", table);
    if !D::lock(&mut *tx, &lock, LOCK_WAIT).await.map_err(err)? {
        return Err(Error::Timeout {
            operation: "outbox migration lock",
            after: LOCK_WAIT,
        });
    }
    let bound = D::ddl_lock_wait(DDL_LOCK_WAIT);
    D::execute(&mut *tx, &bound, Vec::new())
        .await
        .map_err(err)?;
    // Another process may have migrated while this one waited for the lock.
    let found = inspect::<D>(&mut *tx, table).await.map_err(err)?;
    let todo = statements::<D>(table, &found);
    for sql in &todo {
        if let Err(e) = D::execute(&mut *tx, sql, Vec::new()).await {
            return Err(upgrade_failed::<D>(table, e, &todo));
        }
    }
    tx.commit().await.map_err(err)?;
    D::unlock(session.conn(), &lock).await.map_err(err)?;
    Ok(())
}

/// The database refused a step: one line with its reason and what to do. A table
/// another transaction holds (a lock time-out) is retryable; anything else (often: the
/// relay's user may not alter the table) comes with the SQL that does it by hand.
fn upgrade_failed<D: Dialect>(table: &TableName, e: sqlx::Error, todo: &[String]) -> Error {
    let retry = retryable(&e);
    let advice = if retry {
        "another transaction holds the table; try again".to_owned()
    } else {
        format!("to do it by hand, run: {};", todo.join("; "))
    };
    Error::driver(
        D::DRIVER,
        "migrate outbox table",
        retry,
        format!("table `{table}`: {}; {advice}", one_line(&e)),
    )
}
