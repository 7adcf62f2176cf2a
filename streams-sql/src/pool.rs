//! Opening a pool with a bounded wait and a readable failure.

use std::time::Duration;

use sqlx::pool::PoolOptions;
use sqlx::{ConnectOptions as _, Pool};
use streams_core::{Error, Result};

use crate::common::{one_line, sql_err};
use crate::dialect::{Dialect, Options};

/// How long opening a database may take before it fails, unless told otherwise (the
/// pool's acquire timeout, or `connect_timeout=<seconds>` in the URL): 10 s.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the failure of a timed-out open is looked into, to name its cause.
const DIAGNOSE: Duration = Duration::from_secs(3);

/// Opens a pool on `url` and its first connection, failing within the pool's acquire
/// timeout (set it with [`PoolOptions::acquire_timeout`]; [`DEFAULT_CONNECT_TIMEOUT`] is
/// this crate's default) with one line that names the database, its address and the
/// cause, never the password.
///
/// `connect_timeout=<duration>` in the URL's query (`5`, `5s`, `500ms`, `2m`; libpq's
/// parameter, in seconds when it has no unit) overrides the bound and is taken out
/// before the URL reaches sqlx.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// use sqlx::pool::PoolOptions;
/// use streams_sql::{open_pool, DEFAULT_CONNECT_TIMEOUT};
///
/// let pool = open_pool::<sqlx::Postgres>(
///     "postgres://postgres@127.0.0.1:5432/test?connect_timeout=5",
///     PoolOptions::new().acquire_timeout(DEFAULT_CONNECT_TIMEOUT),
/// )
/// .await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`] for a URL that does not parse or a bad `connect_timeout`; a
/// driver error when the database cannot be reached in time or refuses the login.
pub async fn open_pool<D: Dialect>(url: &str, mut options: PoolOptions<D>) -> Result<Pool<D>> {
    let (url, timeout) = take_connect_timeout(url)?;
    if let Some(timeout) = timeout {
        options = options.acquire_timeout(timeout);
    }
    let timeout = options.get_acquire_timeout();
    let connect: Options<D> = url.parse().map_err(|e: sqlx::Error| {
        Error::invalid("database URL", format!("{} URL: {e}", D::DRIVER))
    })?;
    let (database, host, port, socket) = D::endpoint(&connect);
    let at = match socket {
        Some(socket) => socket.display().to_string(),
        None => format!("{host}:{port}"),
    };
    let about = format!("database `{}` at {at}", database.unwrap_or("(default)"));
    match options.connect_with(connect.clone()).await {
        Ok(pool) => Ok(pool),
        Err(sqlx::Error::PoolTimedOut) => {
            // The pool retried until the deadline; one more attempt names the cause.
            let cause = match tokio::time::timeout(DIAGNOSE, connect.connect()).await {
                Ok(Err(e)) => format!(" ({})", one_line(&e)),
                _ => String::new(),
            };
            Err(Error::driver(
                D::DRIVER,
                "connect",
                true,
                format!("{about}: no connection within {timeout:?}{cause}"),
            ))
        }
        Err(e) => Err(sql_err::<D>("connect", about, e)),
    }
}

/// Splits `connect_timeout=<seconds>` off the query of `url`.
fn take_connect_timeout(url: &str) -> Result<(String, Option<Duration>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), None));
    };
    let mut timeout = None;
    let mut rest = Vec::new();
    for pair in query.split('&') {
        match pair.strip_prefix("connect_timeout=") {
            Some(value) => {
                timeout = streams_core::UrlParams::new("sql", [("connect_timeout", value)])
                    .take_duration("connect_timeout")?;
            }
            None => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_timeout_is_taken_out_of_the_url() {
        let (url, t) =
            take_connect_timeout("postgres://h/db?connect_timeout=5&sslmode=disable").unwrap();
        assert_eq!(url, "postgres://h/db?sslmode=disable");
        assert_eq!(t, Some(Duration::from_secs(5)));
        let (_, t) = take_connect_timeout("mysql://h/db?connect_timeout=1500ms").unwrap();
        assert_eq!(t, Some(Duration::from_millis(1500)));
        let (url, t) = take_connect_timeout("mysql://h/db?connect_timeout=2").unwrap();
        assert_eq!(
            (url.as_str(), t),
            ("mysql://h/db", Some(Duration::from_secs(2)))
        );
        let (url, t) = take_connect_timeout("mysql://h/db").unwrap();
        assert_eq!((url.as_str(), t), ("mysql://h/db", None));
        assert!(take_connect_timeout("mysql://h/db?connect_timeout=soon").is_err());
        assert!(take_connect_timeout("mysql://h/db?connect_timeout=0").is_err());
    }
}
