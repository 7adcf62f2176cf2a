//! `postgres://` and `mysql://` connection URLs: an outbox writer owning a pool.

use std::sync::Arc;

use streams_core::{invalid_url, ConnectUrl, Connection, NoStreamAdmin, Result};

use crate::{
    open_pool, MySqlOutbox, MySqlOutboxWriter, PgOutbox, PgOutboxWriter, DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_TABLE,
};

/// The parameters `streams` takes from a SQL URL; sqlx gets the others.
const OWN_PARAMS: [&str; 2] = ["table", "create_table"];

/// What a SQL URL says. No `Debug`: the URL may hold a password.
#[derive(PartialEq, Eq)]
struct Parsed {
    platform: &'static str,
    /// The URL handed to sqlx, without the parameters `streams` takes.
    sqlx_url: String,
    table: String,
    create_table: bool,
}

/// Builds an outbox writer owning a connection pool from a
/// `postgres://...[?table=T&create_table=true&<sqlx parameters>]` URL (also
/// `postgresql://`), or the same with `mysql://` (also `mariadb://`).
///
/// The URL without `table` (default `streams_egress`), `create_table` (default
/// false) and `connect_timeout` (default [`DEFAULT_CONNECT_TIMEOUT`], e.g. `5s`) is
/// handed to sqlx, so its own parameters (`sslmode`, ...) work. The pool is opened
/// here, so an unreachable database fails now, within the bound, with one line
/// naming the database and its address. Each write is a transaction of
/// its own; to write in your own transaction use [`PgOutbox`]/[`MySqlOutbox`]
/// directly. A relay moves the rows to the real platform. Outbox connections are
/// write-only.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_sql::connect("postgres://postgres@127.0.0.1:5432/test?create_table=true").await?;
/// conn.writer().write(vec![streams_core::Message::new("payments", "{}")]).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for another scheme or an invalid table name; a driver error when
/// the database cannot be reached or the table cannot be created.
pub async fn connect(url: &str) -> Result<Connection> {
    let parsed = parse(url)?;
    let writer: Arc<dyn streams_core::Writer> = match parsed.platform {
        "postgres" => {
            let pool = open_pool::<sqlx::Postgres>(&parsed.sqlx_url, pool_options()).await?;
            let outbox = PgOutbox::new(&parsed.table)?;
            if parsed.create_table {
                outbox.migrate(&pool).await?;
            }
            Arc::new(PgOutboxWriter::new(pool, outbox))
        }
        _ => {
            let pool = open_pool::<sqlx::MySql>(&parsed.sqlx_url, pool_options()).await?;
            let outbox = MySqlOutbox::new(&parsed.table)?;
            if parsed.create_table {
                outbox.migrate(&pool).await?;
            }
            Arc::new(MySqlOutboxWriter::new(pool, outbox))
        }
    };
    Ok(Connection::new(parsed.platform, writer, None).with_admin(Arc::new(NoStreamAdmin)))
}

fn pool_options<D: crate::Dialect>() -> sqlx::pool::PoolOptions<D> {
    sqlx::pool::PoolOptions::new().acquire_timeout(DEFAULT_CONNECT_TIMEOUT)
}

/// The database of a SQL URL's scheme, `postgres` or `mysql`.
///
/// # Errors
///
/// [`Error::Invalid`] for any other scheme.
pub(crate) fn platform_of(url: &str) -> Result<&'static str> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    match scheme.to_ascii_lowercase().as_str() {
        "postgres" | "postgresql" => Ok("postgres"),
        "mysql" | "mariadb" => Ok("mysql"),
        _ => Err(invalid_url(
            "expected a `postgres://`, `postgresql://`, `mysql://` or `mariadb://` URL",
        )),
    }
}

fn parse(url: &str) -> Result<Parsed> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    let platform = platform_of(url)?;
    let split = ConnectUrl::parse(platform, url)?;
    let mut params = split.params;
    let table = params
        .take("table")
        .unwrap_or_else(|| DEFAULT_TABLE.to_owned());
    let create_table = params.take_bool("create_table")?.unwrap_or(false);
    // Everything else is the database driver's, passed on as written.
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    let base = match (platform, scheme) {
        // sqlx knows `mysql://` only.
        ("mysql", s) if !s.eq_ignore_ascii_case("mysql") => {
            format!("mysql{}", &base[s.len()..])
        }
        _ => base.to_owned(),
    };
    let rest: Vec<&str> = split
        .raw_query
        .split('&')
        .filter(|pair| {
            let key = pair.split_once('=').map_or(*pair, |(k, _)| k);
            !pair.is_empty() && !OWN_PARAMS.contains(&key)
        })
        .collect();
    let sqlx_url = if rest.is_empty() {
        base
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok(Parsed {
        platform,
        sqlx_url,
        table,
        create_table,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_and_driver_parameters() {
        let p = parse(
            "postgres://u:pw@db:5432/app?table=orders_outbox&create_table=true&sslmode=disable",
        )
        .unwrap();
        assert_eq!(p.platform, "postgres");
        assert_eq!(p.sqlx_url, "postgres://u:pw@db:5432/app?sslmode=disable");
        assert_eq!(p.table, "orders_outbox");
        assert!(p.create_table);
        let p = parse("mysql://root@127.0.0.1:3306/test").unwrap();
        assert_eq!(p.sqlx_url, "mysql://root@127.0.0.1:3306/test");
        assert_eq!(p.table, DEFAULT_TABLE);
        assert!(!p.create_table);
        assert_eq!(parse("postgresql://db/app").unwrap().platform, "postgres");
        let p = parse("mariadb://root@db/app").unwrap();
        assert_eq!(
            (p.platform, p.sqlx_url.as_str()),
            ("mysql", "mysql://root@db/app")
        );
        let e = parse("mysql://db/app?create_table=maybe")
            .err()
            .expect("a bad boolean is refused")
            .to_string();
        assert!(e.contains("true or false"), "{e}");
        assert!(parse("sqlite://x").is_err());
    }
}
