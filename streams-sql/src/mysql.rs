//! MySQL and MariaDB: their SQL and their locks (`GET_LOCK`, held by the session).

use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{MySql, MySqlConnection};

use crate::dialect::{Endpoint, Fut, Sealed, NOW};
use crate::TableName;

impl Sealed for MySql {
    // GET_LOCK belongs to the session, not to the transaction: whoever takes it must
    // release it or close the connection (see `common::Session`).
    const SESSION_LOCKS: bool = true;
    const DRIVER: &'static str = "mysql";
    const BLOB: &'static str = "LONGBLOB";
    // AUTO_INCREMENT needs a key.
    const SEQ: &'static str = "BIGINT NOT NULL AUTO_INCREMENT UNIQUE";
    const TIME: &'static str = "DATETIME(6)";
    const INSERT_IGNORE: (&'static str, &'static str) = ("INSERT IGNORE INTO", "");
    const SCHEMA: &'static str = "DATABASE()";
    const TEXT: &'static str = "CHAR";
    // Under REPEATABLE READ the locking scan takes gap locks that block (and deadlock
    // with) the service's outbox inserts; READ COMMITTED locks rows only. It applies to
    // the next transaction of the session only.
    const BEFORE_CLAIM: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");

    fn ddl_lock_wait(wait: Duration) -> String {
        // A session setting; the migration closes its connection afterwards.
        format!("SET SESSION lock_wait_timeout = {}", wait.as_secs().max(1))
    }

    fn lock_name(purpose: &str, table: &TableName) -> String {
        // Lock names have at most 64 characters; the claim lock keeps the name earlier
        // versions used, so that relays of both versions exclude each other.
        match purpose {
            "claim" => format!("streams_sql.{table}"),
            _ => format!("streams_sql.m.{table}"),
        }
    }

    fn quote(name: &TableName) -> String {
        format!("`{name}`")
    }

    fn param(_: usize) -> String {
        "?".to_owned()
    }

    fn lease_end(param: &str) -> String {
        format!("{NOW} + INTERVAL {param} MICROSECOND")
    }

    fn insert_notify(_: &str) -> Option<String> {
        None
    }

    fn lock<'c>(conn: &'c mut MySqlConnection, name: &'c str, wait: Duration) -> Fut<'c, bool> {
        Box::pin(async move {
            let secs = i64::try_from(wait.as_secs().max(1)).unwrap_or(i64::MAX);
            let locked: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, ?)")
                .bind(name)
                .bind(secs)
                .fetch_one(&mut *conn)
                .await?;
            Ok(locked == Some(1))
        })
    }

    fn unlock<'c>(conn: &'c mut MySqlConnection, name: &'c str) -> Fut<'c, ()> {
        Box::pin(async move {
            sqlx::query("SELECT RELEASE_LOCK(?)")
                .bind(name)
                .execute(&mut *conn)
                .await
                .map(drop)
        })
    }

    fn endpoint(o: &MySqlConnectOptions) -> Endpoint<'_> {
        (o.get_database(), o.get_host(), o.get_port(), o.get_socket())
    }
}
