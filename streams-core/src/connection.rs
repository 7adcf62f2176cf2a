//! What a driver builds from a connection URL: a [`Connection`] holding a writer, the
//! reader where the platform has one, and the stream administration it can do.
//!
//! Each driver crate parses its own URL and owns its defaults (`streams_kafka::connect`,
//! `streams_sqs::connect`, ...); the `streams` facade only maps a scheme to a driver.
//! [`UrlParams`] gives every driver the same parameter rules and error messages.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Error, EventBus, ObservedReader, ObservedWriter, ReadTask, Reader, Result, Subscription, Writer,
};

/// What [`Error::Invalid`] names for every URL problem.
pub const URL_ERROR_WHAT: &str = "streams URL";

/// An [`Error::Invalid`] about a connection URL. The reason must not repeat the URL,
/// which may carry a password.
pub fn invalid_url(reason: impl Into<String>) -> Error {
    Error::invalid(URL_ERROR_WHAT, reason)
}

/// Creates and deletes streams on a platform that has them (Kafka topics, SQS queues).
#[async_trait]
pub trait StreamAdmin: Send + Sync + fmt::Debug {
    /// Creates `stream` with `partitions` partitions where the platform has
    /// partitions. A stream that exists already is left as it is.
    ///
    /// # Errors
    ///
    /// A driver error from the platform.
    async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()>;

    /// Deletes `stream`; a missing one is not an error.
    ///
    /// # Errors
    ///
    /// A driver error from the platform.
    async fn delete_stream(&self, stream: &str) -> Result<()>;
}

/// Stream administration of platforms whose streams need no creating (the in-process
/// bus, SQL outboxes): every call succeeds and does nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoStreamAdmin;

#[async_trait]
impl StreamAdmin for NoStreamAdmin {
    async fn create_stream(&self, _stream: &str, _partitions: u32) -> Result<()> {
        Ok(())
    }

    async fn delete_stream(&self, _stream: &str) -> Result<()> {
        Ok(())
    }
}

/// A writer and, where the platform has one, a reader, built from a connection URL.
///
/// Clones share the writer and reader.
///
/// ```
/// use std::sync::Arc;
/// use streams_core::outbox::MemoryOutbox;
/// use streams_core::Connection;
///
/// let conn = Connection::new("outbox", Arc::new(MemoryOutbox::new()), None);
/// assert_eq!(conn.platform(), "outbox");
/// assert!(conn.reader().is_err(), "write-only");
/// ```
#[derive(Debug, Clone)]
pub struct Connection {
    platform: &'static str,
    writer: Arc<dyn Writer>,
    reader: Option<Arc<dyn Reader>>,
    admin: Option<Arc<dyn StreamAdmin>>,
}

impl Connection {
    /// A connection from parts. It can create no streams until given a
    /// [`with_admin`](Self::with_admin).
    pub fn new(
        platform: &'static str,
        writer: Arc<dyn Writer>,
        reader: Option<Arc<dyn Reader>>,
    ) -> Self {
        Connection {
            platform,
            writer,
            reader,
            admin: None,
        }
    }

    /// Gives read tasks that name no consumer group `group` (a URL's `group=`), through
    /// [`DefaultGroupReader`]; `None` leaves the reader as it is.
    pub fn with_default_group(mut self, group: Option<String>) -> Self {
        if let (Some(group), Some(reader)) = (group, self.reader.take()) {
            self.reader = Some(Arc::new(DefaultGroupReader::new(reader, group)));
        }
        self
    }

    /// Sets how streams are created and deleted.
    pub fn with_admin(mut self, admin: Arc<dyn StreamAdmin>) -> Self {
        self.admin = Some(admin);
        self
    }

    /// Wraps the writer in [`ObservedWriter`] and the reader in [`ObservedReader`]
    /// with `system` as `messaging.system`, so every write has a publish span and
    /// every handled message a handle span and metrics.
    pub fn with_observation(mut self, system: &'static str) -> Self {
        self.writer = Arc::new(ObservedWriter::new(self.writer).with_system(system));
        self.reader = self
            .reader
            .map(|r| Arc::new(ObservedReader::new(r).with_system(system)) as Arc<dyn Reader>);
        self
    }

    /// Creates `stream` where the platform needs streams created first: a Kafka topic
    /// with `partitions` partitions (replication factor 1 is the broker default, so
    /// use the platform's tools for production topics), an SQS queue (FIFO when the
    /// name ends in `.fifo`). A stream that exists already is left as it is. On the
    /// in-process bus and SQL outboxes there is nothing to create.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] where this connection cannot create streams (`sns://`, or a
    /// connection built with [`Connection::new`] alone); a driver error from the
    /// platform.
    pub async fn create_stream(&self, stream: &str, partitions: u32) -> Result<()> {
        match &self.admin {
            Some(admin) => admin.create_stream(stream, partitions).await,
            None => Err(self.cannot("create")),
        }
    }

    /// Deletes `stream` where [`create_stream`](Self::create_stream) would create it; a
    /// missing stream is not an error.
    ///
    /// # Errors
    ///
    /// As [`create_stream`](Self::create_stream).
    pub async fn delete_stream(&self, stream: &str) -> Result<()> {
        match &self.admin {
            Some(admin) => admin.delete_stream(stream).await,
            None => Err(self.cannot("delete")),
        }
    }

    fn cannot(&self, what: &str) -> Error {
        Error::invalid(
            "stream",
            format!(
                "this `{}://` connection cannot {what} streams; use the platform's own tools",
                self.platform
            ),
        )
    }

    /// The platform: `memory`, `kafka`, `sqs`, `sns`, `postgres` or `mysql` for the
    /// drivers of this workspace.
    pub fn platform(&self) -> &'static str {
        self.platform
    }

    /// The writer.
    pub fn writer(&self) -> Arc<dyn Writer> {
        self.writer.clone()
    }

    /// The reader.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] on write-only platforms (`sns`, `postgres`, `mysql`): read
    /// from where their messages go instead, an SQS queue subscribed to the topic or
    /// the destination of the outbox relay.
    pub fn reader(&self) -> Result<Arc<dyn Reader>> {
        self.reader.clone().ok_or_else(|| {
            Error::invalid(
                "reader",
                format!(
                    "`{}://` connections are write-only; read from where the messages are \
                     delivered (an SQS queue subscribed to an SNS topic, the destination of \
                     an outbox relay)",
                    self.platform
                ),
            )
        })
    }

    /// Whether the platform has a reader.
    pub fn has_reader(&self) -> bool {
        self.reader.is_some()
    }

    /// A typed-event [`EventBus`] over this connection's writer and reader.
    ///
    /// # Errors
    ///
    /// As [`reader`](Self::reader), on write-only platforms.
    pub fn event_bus(&self) -> Result<EventBus> {
        Ok(EventBus::new(self.writer(), self.reader()?))
    }

    /// The writer and the reader, if any.
    pub fn into_parts(self) -> (Arc<dyn Writer>, Option<Arc<dyn Reader>>) {
        (self.writer, self.reader)
    }
}

/// The query parameters of a connection URL, for a driver's URL parser: each is taken
/// by name, and [`finish`](Self::finish) refuses whatever is left, so every driver
/// reports values and unknown parameters the same way.
///
/// ```
/// use std::time::Duration;
/// use streams_core::UrlParams;
///
/// let mut params = UrlParams::new("sqs", [("connect_timeout", "5s"), ("region", "eu-west-1")]);
/// assert_eq!(params.take_duration("connect_timeout").unwrap(), Some(Duration::from_secs(5)));
/// assert_eq!(params.take("region").as_deref(), Some("eu-west-1"));
/// params.finish(&["region", "connect_timeout"]).unwrap();
///
/// let mut params = UrlParams::new("sqs", [("regoin", "eu-west-1")]);
/// let err = params.finish(&["region"]).unwrap_err();
/// assert!(err.to_string().contains("unknown parameter `regoin`"), "{err}");
/// ```
#[derive(Debug, Clone)]
pub struct UrlParams {
    platform: &'static str,
    pairs: Vec<(String, String)>,
}

impl UrlParams {
    /// The parameters of a `platform://` URL, already percent- and form-decoded.
    pub fn new<K, V>(platform: &'static str, pairs: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        UrlParams {
            platform,
            pairs: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// Takes the last value of `key`, if present.
    pub fn take(&mut self, key: &str) -> Option<String> {
        let mut found = None;
        self.pairs.retain(|(k, v)| {
            if k == key {
                found = Some(v.clone());
                false
            } else {
                true
            }
        });
        found
    }

    /// Takes `key` as a non-empty text.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for an empty value.
    pub fn take_nonempty(&mut self, key: &str) -> Result<Option<String>> {
        match self.take(key) {
            Some(v) if v.is_empty() => Err(invalid_url(format!("`{key}` is empty"))),
            other => Ok(other),
        }
    }

    /// Takes `key` as a positive integer.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the parameter and the value.
    pub fn take_positive(&mut self, key: &str) -> Result<Option<usize>> {
        self.take(key)
            .map(|v| match v.parse::<usize>() {
                Ok(n) if n > 0 => Ok(n),
                _ => Err(invalid_url(format!(
                    "`{key}` must be a positive integer, found `{v}`"
                ))),
            })
            .transpose()
    }

    /// Takes `key` as a boolean (`true`/`false`, `1`/`0`, `yes`/`no`).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the parameter and the value.
    pub fn take_bool(&mut self, key: &str) -> Result<Option<bool>> {
        self.take(key)
            .map(|v| match v.as_str() {
                "true" | "1" | "yes" => Ok(true),
                "false" | "0" | "no" => Ok(false),
                _ => Err(invalid_url(format!(
                    "`{key}` must be true or false, found `{v}`"
                ))),
            })
            .transpose()
    }

    /// Takes `key` as a positive duration: `250ms`, `30s`, `2m`, or whole seconds.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the parameter and the value.
    pub fn take_duration(&mut self, key: &str) -> Result<Option<Duration>> {
        self.take(key)
            .map(|v| {
                parse_duration(&v).ok_or_else(|| {
                    invalid_url(format!(
                        "`{key}` must be a positive duration such as 500ms, 30s or 2m, found `{v}`"
                    ))
                })
            })
            .transpose()
    }

    /// The parameters not taken, for drivers that pass them on (librdkafka
    /// properties, database driver options).
    pub fn into_rest(self) -> Vec<(String, String)> {
        self.pairs
    }

    /// Refuses any parameter not taken.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the first unknown parameter and listing `known`.
    pub fn finish(self, known: &[&str]) -> Result<()> {
        match self.pairs.first() {
            None => Ok(()),
            Some((key, _)) => Err(invalid_url(format!(
                "unknown parameter `{key}` in a `{}://` URL; known: {}",
                self.platform,
                known.join(", ")
            ))),
        }
    }
}

/// A connection URL split into its parts, for a driver's URL parser:
/// `scheme://[user[:password]@]hosts[/path][?params]`.
///
/// `hosts` is kept as written, so a driver may take a list (`b1:9092,b2:9092`);
/// [`host_port`](Self::host_port) checks a single `host[:port]`. User and password are
/// percent-decoded, parameters form-decoded (`+` is a space, write `%2B`). No error
/// repeats the URL, which may carry a password.
///
/// ```
/// use streams_core::ConnectUrl;
///
/// let url = ConnectUrl::parse("sqs", "sqs://key:s%2Fcret@127.0.0.1:4566?region=us-east-1").unwrap();
/// assert_eq!(url.user.as_deref(), Some("key"));
/// assert_eq!(url.password.as_deref(), Some("s/cret"));
/// assert_eq!(url.host_port().unwrap(), Some(("127.0.0.1".to_owned(), Some(4566))));
/// let mut params = url.params;
/// assert_eq!(params.take("region").as_deref(), Some("us-east-1"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct ConnectUrl {
    /// The platform the parser was given (`kafka`, `sqs`, ...), for messages.
    pub platform: &'static str,
    /// The user, percent-decoded.
    pub user: Option<String>,
    /// The password, percent-decoded.
    pub password: Option<String>,
    /// Everything between `//` (or the `@`) and the path, as written.
    pub hosts: String,
    /// The path as written, with its leading `/`; empty when there is none.
    pub path: String,
    /// The query parameters.
    pub params: UrlParams,
    /// The query as written, without `?`.
    pub raw_query: String,
}

impl fmt::Debug for ConnectUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectUrl")
            .field("platform", &self.platform)
            .field("user", &self.user)
            .field("hosts", &self.hosts)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl ConnectUrl {
    /// Splits `url`, a `platform://` URL.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for another scheme, a fragment (`#...`) or bad
    /// percent-encoding.
    pub fn parse(platform: &'static str, url: &str) -> Result<ConnectUrl> {
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid_url(format!("expected `{platform}://...`")));
        };
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(invalid_url(format!("expected `{platform}://...`")));
        }
        if rest.contains('#') {
            return Err(invalid_url(format!(
                "a `{platform}://` URL has no fragment (`#...`)"
            )));
        }
        let (location, raw_query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, path) = match location.find('/') {
            Some(i) => location.split_at(i),
            None => (location, ""),
        };
        let (userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_decode(s, false).ok_or_else(|| {
                invalid_url(format!("bad percent-encoding in a `{platform}://` URL"))
            })
        };
        let (user, password) = match userinfo {
            None => (None, None),
            Some(u) => match u.split_once(':') {
                Some((user, pw)) => (Some(decode(user)?), Some(decode(pw)?)),
                None => (Some(decode(u)?), None),
            },
        };
        let mut pairs = Vec::new();
        for pair in raw_query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let form = |s: &str| {
                percent_decode(s, true).ok_or_else(|| {
                    invalid_url(format!("bad percent-encoding in a `{platform}://` URL"))
                })
            };
            pairs.push((form(k)?, form(v)?));
        }
        Ok(ConnectUrl {
            platform,
            user: user.filter(|u| !u.is_empty()),
            password,
            hosts: hosts.to_owned(),
            path: path.to_owned(),
            params: UrlParams::new(platform, pairs),
            raw_query: raw_query.to_owned(),
        })
    }

    /// Refuses a path other than `/`.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the path.
    pub fn no_path(&self) -> Result<()> {
        if self.path.is_empty() || self.path == "/" {
            Ok(())
        } else {
            Err(invalid_url(format!(
                "a `{}://` URL has no path, found `{}`",
                self.platform, self.path
            )))
        }
    }

    /// Refuses a user or password.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] with `hint` saying where credentials go instead.
    pub fn no_credentials(&self, hint: &str) -> Result<()> {
        if self.user.is_some() || self.password.is_some() {
            Err(invalid_url(format!(
                "a `{}://` URL takes no user or password: {hint}",
                self.platform
            )))
        } else {
            Ok(())
        }
    }

    /// The single `host[:port]` of the URL, `None` when it names no host.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a list, an empty host with a port, or a port that is not
    /// a number from 0 to 65535.
    pub fn host_port(&self) -> Result<Option<(String, Option<u16>)>> {
        if self.hosts.is_empty() {
            return Ok(None);
        }
        split_host_port(&self.hosts).map(Some).ok_or_else(|| {
            invalid_url(format!(
                "malformed host `{}` in a `{}://` URL: expected `host` or `host:port`",
                self.hosts, self.platform
            ))
        })
    }

    /// Every `host[:port]` of a comma-separated host list (`b1:9092,b2:9092`), each
    /// checked as [`host_port`](Self::host_port) checks one; empty when the URL names
    /// no host. `what` is the platform's word for an entry (`broker`, `node`).
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] naming the first malformed entry.
    pub fn host_list(&self, what: &str) -> Result<Vec<(String, Option<u16>)>> {
        if self.hosts.is_empty() {
            return Ok(Vec::new());
        }
        self.hosts
            .split(',')
            .map(|entry| {
                split_host_port(entry).ok_or_else(|| {
                    invalid_url(format!(
                        "malformed {what} `{entry}` in a `{}://` URL: expected `host` or `host:port`",
                        self.platform
                    ))
                })
            })
            .collect()
    }
}

/// `host`, `host:port`, `[v6]` or `[v6]:port`.
pub(crate) fn split_host_port(text: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = text.strip_prefix('[') {
        let (v6, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':')?),
        };
        (format!("[{v6}]"), port)
    } else {
        match text.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (text.to_owned(), None),
        }
    };
    let valid_host = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if !valid_host {
        return None;
    }
    let port = match port {
        None => None,
        Some(p) => Some(p.parse::<u16>().ok()?),
    };
    Some((host, port))
}

/// Percent-decodes `s` (and `+` as a space in form encoding) as UTF-8.
fn percent_decode(s: &str, form: bool) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' if form => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// `250ms`, `30s`, `2m` or whole seconds; `None` for anything else or zero.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        _ => return None,
    };
    (!d.is_zero()).then_some(d)
}

/// A [`Reader`] that gives read tasks without a consumer group a default one.
///
/// A driver's `connect` wraps its reader in it when the URL has `group=...`, so
/// handlers subscribe with `ReadTask::new("orders")` and the deployment picks the
/// group.
///
/// ```
/// use streams_core::{DefaultGroupReader, ReadTask};
/// # #[derive(Debug)] struct KafkaReader;
///
/// let reader = DefaultGroupReader::new(KafkaReader, "billing");
/// assert_eq!(reader.group(), "billing");
/// assert_eq!(reader.apply(ReadTask::new("orders")).group.as_deref(), Some("billing"));
/// assert_eq!(
///     reader.apply(ReadTask::new("orders").with_group("audit")).group.as_deref(),
///     Some("audit"),
/// );
/// assert_eq!(reader.apply(ReadTask::new("orders").with_partition(0)).group, None);
/// ```
#[derive(Clone)]
pub struct DefaultGroupReader<R> {
    inner: R,
    group: String,
}

impl<R> DefaultGroupReader<R> {
    /// Wraps `inner`, filling in `group` where a task has none.
    pub fn new(inner: R, group: impl Into<String>) -> Self {
        DefaultGroupReader {
            inner,
            group: group.into(),
        }
    }

    /// The default group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// The task as the inner reader receives it: a task reading one partition
    /// directly joins no group and is left as it is.
    pub fn apply(&self, mut task: ReadTask) -> ReadTask {
        if task.group.is_none() && task.partition.is_none() {
            task.group = Some(self.group.clone());
        }
        task
    }

    /// The wrapped reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Unwraps the reader.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

impl<R: fmt::Debug> fmt::Debug for DefaultGroupReader<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DefaultGroupReader")
            .field("group", &self.group)
            .field("inner", &self.inner)
            .finish()
    }
}

#[async_trait]
impl<R: Reader> Reader for DefaultGroupReader<R> {
    async fn subscribe(&self, task: ReadTask) -> Result<Subscription> {
        self.inner.subscribe(self.apply(task)).await
    }

    async fn subscribe_batch(
        &self,
        task: ReadTask,
        size: crate::BatchSize,
    ) -> Result<crate::BatchSubscription> {
        self.inner.subscribe_batch(self.apply(task), size).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        for bad in ["", "0", "0s", "-1s", "1h", "s", "1.5s", "ten"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }

    #[test]
    fn params_report_bad_values_by_name() {
        let mut p = UrlParams::new("memory", [("capacity", "0"), ("tls", "maybe")]);
        let e = p.take_positive("capacity").unwrap_err().to_string();
        assert!(
            e.contains("`capacity` must be a positive integer, found `0`"),
            "{e}"
        );
        let e = p.take_bool("tls").unwrap_err().to_string();
        assert!(e.contains("`tls` must be true or false"), "{e}");
        p.finish(&[]).unwrap();
        let mut p = UrlParams::new("kafka", [("group", "")]);
        assert!(p.take_nonempty("group").is_err());
        let mut p = UrlParams::new("kafka", [("connect_timeout", "soon")]);
        let e = p.take_duration("connect_timeout").unwrap_err().to_string();
        assert!(
            e.starts_with("invalid streams URL: `connect_timeout`"),
            "{e}"
        );
    }

    #[test]
    fn urls_split_into_parts() {
        let u = ConnectUrl::parse("kafka", "kafka://b1:9092,b2:9093/?group=a+b&x=%2B").unwrap();
        assert_eq!(u.hosts, "b1:9092,b2:9093");
        assert_eq!(u.path, "/");
        u.no_path().unwrap();
        let mut p = u.params;
        assert_eq!(p.take("group").as_deref(), Some("a b"));
        assert_eq!(p.take("x").as_deref(), Some("+"));
        let u = ConnectUrl::parse("kafka", "kafka://b1:9092,[::1]").unwrap();
        let hosts = u.host_list("broker").unwrap();
        assert_eq!(hosts, [("b1".into(), Some(9092)), ("[::1]".into(), None)]);
        let u = ConnectUrl::parse("kafka", "kafka://b1:9092,,b2").unwrap();
        let e = u.host_list("broker").unwrap_err().to_string();
        assert!(e.contains("malformed broker ``"), "{e}");
        let u = ConnectUrl::parse("sqs", "sqs://[::1]:4566").unwrap();
        assert_eq!(u.host_port().unwrap(), Some(("[::1]".into(), Some(4566))));
        let u = ConnectUrl::parse("sqs", "sqs://host:99999").unwrap();
        assert!(u.host_port().is_err());
        let u = ConnectUrl::parse("sqs", "sqs://u:hunter2@host/path").unwrap();
        let e = u.no_path().unwrap_err().to_string();
        assert!(e.contains("no path") && !e.contains("hunter2"), "{e}");
        assert!(u.no_credentials("use the environment").is_err());
        assert!(ConnectUrl::parse("sqs", "sqs://h#frag").is_err());
        assert!(ConnectUrl::parse("sqs", "sqs://h?a=%zz").is_err());
        assert!(ConnectUrl::parse("sqs", "localhost:4566").is_err());
        assert_eq!(split_host_port("h"), Some(("h".into(), None)));
        assert_eq!(split_host_port(":80"), None);
        assert_eq!(split_host_port("h:x"), None);
    }

    #[tokio::test]
    async fn a_connection_without_admin_cannot_create_streams() {
        let outbox = Arc::new(crate::outbox::MemoryOutbox::new());
        let conn = Connection::new("outbox", outbox.clone(), None);
        let e = conn.create_stream("s", 1).await.unwrap_err().to_string();
        assert!(e.contains("cannot create streams"), "{e}");
        let conn = conn.with_admin(Arc::new(NoStreamAdmin));
        conn.create_stream("s", 1).await.unwrap();
        conn.delete_stream("s").await.unwrap();
    }
}
