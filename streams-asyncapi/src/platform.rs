//! What each platform adds to a document: its server, channel and message bindings,
//! and the headers its driver sets on every message.

use serde_json::{json, Value};
use streams_core::ConnectUrl;

use crate::{Error, Result};

/// A platform named by a connection URL, as far as a document describes it.
#[derive(Debug, Clone)]
pub(crate) struct Platform {
    /// `kafka`, `sqs`, `sns`, `nats`, `redis` or `amqp`.
    pub(crate) protocol: &'static str,
    pub(crate) host: String,
    pub(crate) description: String,
    vhost: String,
}

/// The headers (message attributes, entry fields) the driver of `protocol` (`kafka`,
/// `sqs`, `sns`, `nats`, `redis`, `amqp`) writes besides the message's own, with what
/// each holds; documents list them as the message's headers. These are the drivers'
/// constants (`streams_kafka::HEADER_MESSAGE_ID`, ...), which this crate does not
/// depend on: the `streams` tool's tests check them against the driver crates.
///
/// ```
/// let kafka = streams_asyncapi::driver_headers("kafka");
/// assert_eq!(kafka[0].0, "message_id");
/// assert!(streams_asyncapi::driver_headers("memory").is_empty());
/// ```
pub fn driver_headers(protocol: &str) -> &'static [(&'static str, &'static str)] {
    const SQS: &[(&str, &str)] = &[
        ("streams-message-id", "The message id."),
        (
            "streams-stream-name",
            "The stream the message was written to.",
        ),
        (
            "streams-stream-key",
            "The message key (FIFO message group).",
        ),
        ("streams-content-type", "The payload's content type."),
        (
            "streams-message-time",
            "The message time: Unix milliseconds (SQS writers) or RFC 3339 (SNS writers).",
        ),
        (
            "streams-body-encoding",
            "`base64` or `empty` when the body is not the payload as text.",
        ),
        (
            "streams-headers",
            "As a JSON object, the headers that could not travel as attributes of their own.",
        ),
    ];
    match protocol {
        "kafka" => &[
            ("message_id", "The message id."),
            ("content_type", "The payload's content type."),
        ],
        "sqs" | "sns" => SQS,
        "nats" => &[
            (
                "Nats-Msg-Id",
                "The message id (JetStream's duplicate window uses it).",
            ),
            ("streams-key", "The message key."),
            ("content-type", "The payload's content type."),
            (
                "streams-time",
                "The message time (RFC 3339, nanoseconds, UTC).",
            ),
        ],
        "redis" => &[
            ("id", "Entry field: the message id."),
            ("key", "Entry field: the message key."),
            ("content-type", "Entry field: the payload's content type."),
            (
                "time",
                "Entry field: the message time (RFC 3339, nanoseconds, UTC).",
            ),
        ],
        "amqp" => &[
            ("streams-key", "The message key."),
            (
                "streams-time",
                "The message time (RFC 3339, nanoseconds; the AMQP timestamp has seconds).",
            ),
        ],
        _ => &[],
    }
}

/// Queue and topic names of the AWS drivers: `.` becomes `-`, a `.fifo` suffix stays.
fn aws_name(stream: &str) -> String {
    match stream.strip_suffix(".fifo") {
        Some(stem) => format!("{}.fifo", stem.replace('.', "-")),
        None => stream.replace('.', "-"),
    }
}

impl Platform {
    /// The platform of `url`. Never keeps a user or password.
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`] for a malformed URL, the in-process bus or an outbox (no
    /// server to describe) and unknown schemes.
    pub(crate) fn parse(url: &str) -> Result<Platform> {
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .ok_or_else(|| Error::Invalid("expected a `<scheme>://...` URL".into()))?;
        let (protocol, default_host): (&'static str, &str) = match scheme.as_str() {
            "kafka" => ("kafka", "localhost:9092"),
            "nats" => ("nats", "127.0.0.1:4222"),
            "redis" => ("redis", "127.0.0.1:6379"),
            "amqp" => ("amqp", "127.0.0.1:5672"),
            "sqs" => ("sqs", ""),
            "sns" => ("sns", ""),
            "memory" => {
                return Err(Error::Invalid(
                    "memory:// is the in-process bus: a document has no server for it".into(),
                ))
            }
            "postgres" | "postgresql" | "mysql" | "mariadb" => {
                return Err(Error::Invalid(format!(
                    "{scheme}:// is an outbox, not a broker: describe the platform the relay writes to"
                )))
            }
            other => {
                return Err(Error::Invalid(format!(
                    "unknown scheme `{other}`; documents describe kafka://, sqs://, sns://, nats://, redis:// and amqp://"
                )))
            }
        };
        let parsed = ConnectUrl::parse(protocol, url).map_err(|e| Error::Invalid(e.to_string()))?;
        let mut params = parsed.params;
        let hosts: Vec<&str> = parsed
            .hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        let region = params.take("region");
        let host = match (hosts.first(), protocol) {
            (Some(h), _) => (*h).to_owned(),
            (None, "sqs" | "sns") => match &region {
                Some(r) => format!("{protocol}.{r}.amazonaws.com"),
                None => format!("{protocol}.amazonaws.com"),
            },
            (None, _) => default_host.to_owned(),
        };
        let description = match protocol {
            "kafka" if hosts.len() > 1 => format!("Kafka, bootstrap brokers {}", hosts.join(", ")),
            "kafka" => "Kafka".to_owned(),
            "sqs" => format!(
                "Amazon SQS{}; queue = stream with `.` as `-`",
                region.map(|r| format!(" in {r}")).unwrap_or_default()
            ),
            "sns" => format!(
                "Amazon SNS{}; topic = stream with `.` as `-`",
                region.map(|r| format!(" in {r}")).unwrap_or_default()
            ),
            "nats" => "NATS JetStream; one JetStream stream per channel".to_owned(),
            "redis" => "Redis Streams; one Redis stream per channel".to_owned(),
            "amqp" => "RabbitMQ (AMQP 0-9-1); one fanout exchange per channel, one queue per consumer group".to_owned(),
            _ => String::new(),
        };
        let vhost = match parsed.path.trim_start_matches('/') {
            "" | "%2f" | "%2F" => "/".to_owned(),
            v => v.to_owned(),
        };
        Ok(Platform {
            protocol,
            host,
            description,
            vhost,
        })
    }

    /// The Server Object.
    pub(crate) fn server(&self) -> Value {
        let mut server = json!({
            "host": self.host,
            "protocol": self.protocol,
            "description": self.description,
        });
        if self.protocol == "amqp" {
            server["protocolVersion"] = json!("0.9.1");
        }
        server
    }

    /// The channel binding of `stream`, under its protocol's key.
    pub(crate) fn channel_binding(&self, stream: &str) -> Option<Value> {
        match self.protocol {
            "kafka" => Some(json!({"topic": stream, "bindingVersion": "0.5.0"})),
            "sqs" => Some(json!({
                "queue": {"name": aws_name(stream), "fifoQueue": stream.ends_with(".fifo")},
                "bindingVersion": "0.2.0",
            })),
            "sns" => {
                let mut b = json!({"name": aws_name(stream), "bindingVersion": "0.1.0"});
                if stream.ends_with(".fifo") {
                    b["ordering"] = json!({"type": "FIFO"});
                }
                Some(b)
            }
            "amqp" => Some(json!({
                "is": "routingKey",
                "exchange": {
                    "name": stream,
                    "type": "fanout",
                    "durable": true,
                    "autoDelete": false,
                    "vhost": self.vhost,
                },
                "bindingVersion": "0.3.0",
            })),
            _ => None,
        }
    }

    /// The message binding, under the protocol's key.
    pub(crate) fn message_binding(&self) -> Option<Value> {
        match self.protocol {
            "kafka" => Some(json!({
                "key": {"type": "string", "description": "The message key (partition key); absent when the message has none."},
                "bindingVersion": "0.5.0",
            })),
            _ => None,
        }
    }

    /// The headers schema: the driver's headers, and any other string header (the
    /// event's own).
    pub(crate) fn headers(&self) -> Value {
        let properties: serde_json::Map<String, Value> = driver_headers(self.protocol)
            .iter()
            .map(|(name, what)| {
                (
                    (*name).to_owned(),
                    json!({"type": "string", "description": format!("{what} Set by the {} driver.", self.protocol)}),
                )
            })
            .collect();
        json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": {"type": "string"},
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_regions_and_refusals() {
        let p = Platform::parse("kafka://u:hunter2@b1:9092,b2:9092?group=g").unwrap();
        assert_eq!(p.host, "b1:9092");
        assert!(p.description.contains("b2:9092"));
        assert!(!format!("{p:?}").contains("hunter2"));
        assert_eq!(Platform::parse("kafka://").unwrap().host, "localhost:9092");
        let p = Platform::parse("sqs://?region=eu-west-1").unwrap();
        assert_eq!(p.host, "sqs.eu-west-1.amazonaws.com");
        assert_eq!(
            p.channel_binding("orders.placed").unwrap()["queue"]["name"],
            "orders-placed"
        );
        let p = Platform::parse("sns://127.0.0.1:4566").unwrap();
        assert_eq!(p.channel_binding("a.b.fifo").unwrap()["name"], "a-b.fifo");
        assert_eq!(Platform::parse("amqp://h/%2f").unwrap().vhost, "/");
        for (url, says) in [
            ("memory://", "in-process"),
            ("postgres://x", "outbox"),
            ("mqtt://x", "unknown scheme"),
            ("kafka", "scheme"),
        ] {
            let e = Platform::parse(url).unwrap_err().to_string();
            assert!(e.contains(says), "{url}: {e}");
        }
    }
}
