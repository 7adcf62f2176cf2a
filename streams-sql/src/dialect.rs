//! What differs between the databases: the sealed [`Dialect`] trait, implemented for
//! [`sqlx::Postgres`] (in `pg.rs`) and [`sqlx::MySql`] (in `mysql.rs`), and the one
//! place that runs SQL generically over both.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use sqlx::{ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Type};

use crate::TableName;

/// A database the outbox runs on: [`sqlx::Postgres`] or [`sqlx::MySql`] (MySQL 8,
/// MariaDB 10.6 and later).
///
/// The outbox, its writer and its storage are written once over this trait; it holds
/// only what really differs between the databases (SQL text and placeholders, column
/// types, locking primitives). It is sealed: the crate implements it for the two
/// databases above and nothing else can.
pub trait Dialect: sealed::Sealed {}

impl Dialect for sqlx::Postgres {}
impl Dialect for sqlx::MySql {}

/// A boxed, sendable database future.
pub(crate) type Fut<'c, T> = Pin<Box<dyn Future<Output = sqlx::Result<T>> + Send + 'c>>;

/// The connect options of a database.
pub(crate) type Options<D> = <<D as Database>::Connection as sqlx::Connection>::Options;

/// Database, host, port and Unix socket of a connection.
pub(crate) type Endpoint<'a> = (
    Option<&'a str>,
    &'a str,
    u16,
    Option<&'a std::path::PathBuf>,
);

pub(crate) mod sealed {
    use super::*;

    /// A value bound to a placeholder.
    #[derive(Debug, Clone, Copy)]
    pub enum Arg<'a> {
        Text(&'a str),
        Int(i64),
        Count(i32),
        Bytes(&'a [u8]),
    }

    /// How a column is decoded.
    #[derive(Debug, Clone, Copy)]
    pub enum Kind {
        Int,
        Text,
        Bytes,
    }

    /// A decoded column.
    #[derive(Debug)]
    pub enum Value {
        Int(Option<i64>),
        Text(String),
        Bytes(Vec<u8>),
    }

    impl Value {
        pub fn int(&self) -> i64 {
            match self {
                Value::Int(v) => v.unwrap_or(0),
                _ => 0,
            }
        }

        pub fn as_text(&self) -> &str {
            match self {
                Value::Text(v) => v,
                _ => "",
            }
        }

        pub fn text(&mut self) -> String {
            match self {
                Value::Text(v) => std::mem::take(v),
                _ => String::new(),
            }
        }

        pub fn bytes(&mut self) -> Vec<u8> {
            match self {
                Value::Bytes(v) => std::mem::take(v),
                _ => Vec::new(),
            }
        }
    }

    /// The dialect's contents; private to this crate.
    pub trait Sealed: Exec + std::fmt::Debug + Send + Sync + 'static {
        /// The driver name in errors and logs.
        const DRIVER: &'static str;
        /// Whether [`lock`](Self::lock) takes a session-level lock, one that outlives the
        /// transaction and is only freed by [`unlock`](Self::unlock) or by closing the
        /// connection.
        const SESSION_LOCKS: bool;
        /// The expression for the current schema or database.
        const SCHEMA: &'static str;
        /// The type text is cast to in a `SELECT`.
        const TEXT: &'static str;
        /// Column type of the batch bytes.
        const BLOB: &'static str;
        /// Column definition of `seq`: increasing, filled in by the database, indexed.
        const SEQ: &'static str;
        /// Column type of a point in time to the microsecond.
        const TIME: &'static str;
        /// Starts an `INSERT` that skips rows whose key exists, and ends it.
        const INSERT_IGNORE: (&'static str, &'static str);
        /// Run before the claim transaction begins.
        const BEFORE_CLAIM: Option<&'static str>;
        /// The name of the lock that serializes `purpose` (`claim`, `migrate`) on `table`.
        fn lock_name(purpose: &str, table: &TableName) -> String;
        /// Bounds how long the migration's DDL waits for table locks.
        fn ddl_lock_wait(wait: Duration) -> String;

        /// The identifier quoted.
        fn quote(name: &TableName) -> String;
        /// The `n`th placeholder (1-based).
        fn param(n: usize) -> String;
        /// [`NOW`] plus `<micros>` microseconds, with `micros` bound to `param`.
        fn lease_end(param: &str) -> String;
        /// The insert of one outbox row that also notifies the channel bound as the
        /// fourth value, if the database can.
        fn insert_notify(table: &str) -> Option<String>;

        /// Takes the lock `name` inside the transaction `conn` is in, waiting at most
        /// `wait`; `false` when it could not be had in time.
        fn lock<'c>(conn: &'c mut Self::Connection, name: &'c str, wait: Duration)
            -> Fut<'c, bool>;
        /// Frees a session-level lock after the transaction ended; nothing else.
        fn unlock<'c>(conn: &'c mut Self::Connection, name: &'c str) -> Fut<'c, ()>;

        /// The database, host, port and socket of `options`, for error messages.
        fn endpoint(options: &Options<Self>) -> Endpoint<'_>;
    }

    /// Running SQL with bound values, written once over every database with the
    /// capabilities it needs.
    pub trait Exec: Database {
        /// Runs a statement.
        fn execute<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            args: Vec<Arg<'c>>,
        ) -> Fut<'c, ()>;
        /// Runs a query and decodes its columns as `kinds` say.
        fn fetch<'c>(
            conn: &'c mut Self::Connection,
            sql: &'c str,
            args: Vec<Arg<'c>>,
            kinds: &'static [Kind],
        ) -> Fut<'c, Vec<Vec<Value>>>;
    }
}

/// The current time to the microsecond, in both databases.
pub(crate) const NOW: &str = "CURRENT_TIMESTAMP(6)";

pub(crate) use sealed::{Arg, Exec, Kind, Sealed, Value};

fn arguments<'q, DB>(args: Vec<Arg<'q>>) -> Result<DB::Arguments<'q>, sqlx::error::BoxDynError>
where
    DB: Database,
    &'q str: Encode<'q, DB> + Type<DB>,
    &'q [u8]: Encode<'q, DB> + Type<DB>,
    i64: Encode<'q, DB> + Type<DB>,
    i32: Encode<'q, DB> + Type<DB>,
{
    use sqlx::Arguments as _;
    let mut out = DB::Arguments::default();
    for arg in args {
        match arg {
            Arg::Text(v) => out.add(v)?,
            Arg::Int(v) => out.add(v)?,
            Arg::Count(v) => out.add(v)?,
            Arg::Bytes(v) => out.add(v)?,
        }
    }
    Ok(out)
}

impl<DB> Exec for DB
where
    DB: Database,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> &'q [u8]: Encode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Vec<u8>: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
{
    fn execute<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        args: Vec<Arg<'c>>,
    ) -> Fut<'c, ()> {
        Box::pin(async move {
            let args = arguments::<DB>(args).map_err(sqlx::Error::Encode)?;
            sqlx::query_with(sql, args).execute(conn).await.map(drop)
        })
    }

    fn fetch<'c>(
        conn: &'c mut Self::Connection,
        sql: &'c str,
        args: Vec<Arg<'c>>,
        kinds: &'static [Kind],
    ) -> Fut<'c, Vec<Vec<Value>>> {
        use sqlx::Row as _;
        Box::pin(async move {
            let args = arguments::<DB>(args).map_err(sqlx::Error::Encode)?;
            let rows = sqlx::query_with(sql, args).fetch_all(conn).await?;
            rows.iter()
                .map(|row| {
                    kinds
                        .iter()
                        .enumerate()
                        .map(|(i, kind)| {
                            Ok(match kind {
                                Kind::Int => Value::Int(row.try_get(i)?),
                                Kind::Text => Value::Text(row.try_get(i)?),
                                Kind::Bytes => Value::Bytes(row.try_get(i)?),
                            })
                        })
                        .collect()
                })
                .collect()
        })
    }
}

/// `(p<first>, p<first+1>, ...)`: `n` placeholders in parentheses.
pub(crate) fn param_list<D: Sealed>(first: usize, n: usize) -> String {
    let params: Vec<String> = (first..first + n).map(D::param).collect();
    format!("({})", params.join(", "))
}
