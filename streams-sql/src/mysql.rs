//! MySQL and MariaDB: their SQL and their locks (`GET_LOCK`, held by the session).

use std::time::Duration;

use sqlx::mysql::MySqlConnectOptions;
use sqlx::{MySql, MySqlConnection};

use crate::dialect::{Endpoint, Fut, Sealed};
use crate::TableName;

impl Sealed for MySql {
    const DRIVER: &'static str = "mysql";
    // GET_LOCK belongs to the session, not to the transaction: whoever takes it must
    // release it or close the connection (see `storage::Session`).
    const SESSION_LOCKS: bool = true;
    const CLAIM_LOCK: &'static str = "streams_sql.";
    const MIGRATE_LOCK: &'static str = "streams_sql.m.";
    const SCHEMA: &'static str = "DATABASE()";
    const TEXT: &'static str = "CHAR";
    const BLOB: &'static str = "LONGBLOB";
    const INSERT_TIME: &'static str = "TIMESTAMP NULL DEFAULT CURRENT_TIMESTAMP";
    // AUTO_INCREMENT needs a key.
    const SEQ: &'static str = "BIGINT NOT NULL AUTO_INCREMENT UNIQUE";
    const LEASE_END: &'static str = "DATETIME(6)";
    const QUARANTINE_TIME: &'static str = "TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)";
    const NOW: &'static str = "NOW(6)";
    const INSERT_IGNORE: (&'static str, &'static str) = ("INSERT IGNORE INTO", "");
    // Under REPEATABLE READ the locking scan takes gap locks that block (and deadlock
    // with) the service's outbox inserts; READ COMMITTED locks rows only. It applies to
    // the next transaction of the session only.
    const BEFORE_CLAIM: Option<&'static str> =
        Some("SET TRANSACTION ISOLATION LEVEL READ COMMITTED");

    fn ddl_lock_wait(wait: Duration) -> Option<String> {
        // A session setting; the migration closes its connection afterwards.
        Some(format!(
            "SET SESSION lock_wait_timeout = {}",
            wait.as_secs().max(1)
        ))
    }

    fn quote(name: &TableName) -> String {
        format!("`{name}`")
    }

    fn param(_: usize) -> String {
        "?".to_owned()
    }

    fn lease_end(param: &str) -> String {
        format!("NOW(6) + INTERVAL {param} MICROSECOND")
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
