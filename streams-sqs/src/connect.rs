//! `sqs://` connection URLs.

use std::sync::Arc;
use std::time::Duration;

use streams_aws::{AwsUrl, AWS_URL_PARAMS};
use streams_core::{async_trait, invalid_url, ConnectUrl, Connection, Result, StreamAdmin};

use crate::{SqsClient, SqsReader, SqsWriter};

/// What an `sqs://` URL says.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    aws: AwsUrl,
    /// Long-poll time of receives, `wait_time_seconds` (0 to 20).
    wait_secs: Option<u64>,
}

/// Builds an SQS writer and reader sharing one client from an
/// `sqs://[key:secret@][host:port][?region=R&tls=true&wait_time_seconds=S&connect_timeout=D&operation_timeout=D&max_message_bytes=N]`
/// URL.
///
/// Without a host the AWS SDK resolves the endpoint; with one, requests go to
/// `http://host:port` (`https` with `tls=true`), as for an emulator. Region and
/// credentials come from the usual AWS environment unless the URL gives them (meant
/// for emulators: keep real secrets in the environment). `wait_time_seconds` (0 to 20,
/// default 20) is the long-poll time of receives, which is also how long a reader may
/// take to stop. `connect_timeout` and `operation_timeout` (`5s`, `500ms`) bound every
/// call, so an unreachable endpoint fails within seconds (defaults 5 s and 20 s, a long
/// poll's wait added to receives); `max_message_bytes` lowers the writer's 1 MiB limit
/// for emulators and older regions. The connection creates and deletes queues.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_sqs::connect("sqs://test:test@127.0.0.1:4566?region=us-east-1").await?;
/// conn.create_stream("orders", 1).await?;
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a malformed URL or an unknown
/// parameter.
pub async fn connect(url: &str) -> Result<Connection> {
    let parsed = parse(url)?;
    let builder = SqsClient::builder().with_client_config(parsed.aws.apply(Default::default()));
    let client = builder.connect().await;
    let mut writer = SqsWriter::builder(client.clone());
    if let Some(bytes) = parsed.aws.max_message_bytes {
        writer = writer.with_max_message_bytes(bytes);
    }
    let mut reader = SqsReader::builder(client.clone());
    if let Some(secs) = parsed.wait_secs {
        reader = reader.with_wait_time(Duration::from_secs(secs));
    }
    Ok(Connection::new(
        "sqs",
        Arc::new(writer.build()?),
        Some(Arc::new(reader.build())),
    )
    .with_admin(Arc::new(QueueAdmin(client))))
}

fn parse(url: &str) -> Result<Parsed> {
    let mut url = ConnectUrl::parse("sqs", url)?;
    let aws = AwsUrl::take(&mut url)?;
    let mut params = url.params;
    let wait_secs = match params.take("wait_time_seconds") {
        None => None,
        Some(v) => match v.parse::<u64>() {
            Ok(secs) if secs <= 20 => Some(secs),
            _ => {
                return Err(invalid_url(format!(
                    "`wait_time_seconds` must be a whole number from 0 to 20, not `{v}`"
                )))
            }
        },
    };
    let mut known = AWS_URL_PARAMS.to_vec();
    known.push("wait_time_seconds");
    params.finish(&known)?;
    Ok(Parsed { aws, wait_secs })
}

/// Queues as the streams of an `sqs://` connection.
#[derive(Debug)]
struct QueueAdmin(SqsClient);

#[async_trait]
impl StreamAdmin for QueueAdmin {
    async fn create_stream(&self, stream: &str, _partitions: u32) -> Result<()> {
        self.0.create_queue(stream).await.map(drop)
    }

    async fn delete_stream(&self, stream: &str) -> Result<()> {
        self.0.delete_queue(stream).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(url: &str) -> String {
        parse(url).expect_err(url).to_string()
    }

    #[test]
    fn wait_time_and_unknown_parameters() {
        let p = parse("sqs://h:1?wait_time_seconds=2&region=us-east-1").unwrap();
        assert_eq!(p.wait_secs, Some(2));
        assert_eq!(p.aws.region.as_deref(), Some("us-east-1"));
        assert_eq!(parse("sqs://").unwrap().wait_secs, None);
        assert!(err("sqs://h:1?wait_time_seconds=21").contains("0 to 20"));
        assert!(err("sqs://h:1?wait_time_seconds=x").contains("0 to 20"));
        let e = err("sqs://host?queue=x");
        assert!(e.contains("unknown parameter `queue`"), "{e}");
        assert!(e.contains("region, tls, connect_timeout"), "{e}");
        assert!(e.contains("wait_time_seconds"), "{e}");
        assert!(!err("sqs://id:hunter2@host?nope=1").contains("hunter2"));
    }
}
