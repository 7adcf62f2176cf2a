//! `sns://` connection URLs.

use std::sync::Arc;

use streams_aws::{AwsUrl, AWS_URL_PARAMS};
use streams_core::{ConnectUrl, Connection, Result};

use crate::{SnsWriter, ACCOUNT_ID_ENV};

/// What an `sns://` URL says.
#[derive(Debug, PartialEq, Eq)]
struct Parsed {
    aws: AwsUrl,
    account_id: Option<String>,
}

/// Builds an SNS writer from an
/// `sns://[key:secret@][host:port][?region=R&account_id=A&tls=true&connect_timeout=D&operation_timeout=D&max_message_bytes=N]`
/// URL. SNS
/// connections are write-only: read what a topic delivers from an SQS queue subscribed
/// to it.
///
/// Endpoint, region and credentials as for `sqs://` (see `streams_sqs::connect`);
/// `account_id` (else the `AWS_ACCOUNT_ID` environment variable) and the region build
/// the topic ARNs.
///
/// ```no_run
/// # async fn demo() -> streams_core::Result<()> {
/// let conn = streams_sns::connect("sns://test:test@127.0.0.1:4566?region=us-east-1&account_id=123456789012").await?;
/// assert!(conn.reader().is_err());
/// # Ok(()) }
/// ```
///
/// # Errors
///
/// [`Error::Invalid`](streams_core::Error::Invalid) for a malformed URL or an unknown
/// parameter, or when region or account id is unknown.
pub async fn connect(url: &str) -> Result<Connection> {
    let parsed = parse(url)?;
    let mut builder = SnsWriter::builder().with_client_config(parsed.aws.apply(Default::default()));
    let account_id = parsed
        .account_id
        .or_else(|| std::env::var(ACCOUNT_ID_ENV).ok().filter(|a| !a.is_empty()));
    if let Some(account_id) = account_id {
        builder = builder.with_account_id(account_id);
    }
    if let Some(bytes) = parsed.aws.max_message_bytes {
        builder = builder.with_max_message_bytes(bytes);
    }
    Ok(Connection::new(
        "sns",
        Arc::new(builder.connect().await?),
        None,
    ))
}

fn parse(url: &str) -> Result<Parsed> {
    let mut url = ConnectUrl::parse("sns", url)?;
    let aws = AwsUrl::take(&mut url)?;
    let mut params = url.params;
    let account_id = params.take_nonempty("account_id")?;
    let mut known = AWS_URL_PARAMS.to_vec();
    known.push("account_id");
    params.finish(&known)?;
    Ok(Parsed { aws, account_id })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_id() {
        let p = parse("sns://localhost:4566?region=eu-west-1&account_id=123456789012").unwrap();
        assert_eq!(p.aws.endpoint.as_deref(), Some("http://localhost:4566"));
        assert_eq!(p.account_id.as_deref(), Some("123456789012"));
        let e = parse("sns://h?wait_time_seconds=1")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown parameter `wait_time_seconds`"), "{e}");
    }
}
