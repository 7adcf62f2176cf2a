//! The part of `sqs://` and `sns://` connection URLs the AWS drivers share.

use std::fmt;
use std::time::Duration;

use streams_core::{invalid_url, ConnectUrl, Result};

use crate::ClientConfig;

/// Endpoint, region and credentials of an AWS connection URL:
/// `scheme://[key:secret@][host:port][?region=R&tls=true...]`.
///
/// Without a host the SDK resolves the endpoint; with one, requests go to
/// `http://host:port` (`https` with `tls=true`), as for an emulator. Region and
/// credentials come from the usual AWS environment unless the URL gives them.
/// `connect_timeout` and `operation_timeout` (`5s`, `500ms`) bound every call (defaults
/// [`DEFAULT_CONNECT_TIMEOUT`](crate::DEFAULT_CONNECT_TIMEOUT) and
/// [`DEFAULT_OPERATION_TIMEOUT`](crate::DEFAULT_OPERATION_TIMEOUT)); `max_message_bytes`
/// sets the writer's size limit (for emulators and topics configured otherwise).
#[derive(Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct AwsUrl {
    /// The endpoint override.
    pub endpoint: Option<String>,
    /// The region.
    pub region: Option<String>,
    /// Access key id and secret.
    pub credentials: Option<(String, String)>,
    /// `connect_timeout`: how long opening a connection may take.
    pub connect_timeout: Option<Duration>,
    /// `operation_timeout`: how long one call may take, retries included.
    pub operation_timeout: Option<Duration>,
    /// `max_message_bytes`: the largest message the writer sends.
    pub max_message_bytes: Option<usize>,
}

impl fmt::Debug for AwsUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AwsUrl")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("connect_timeout", &self.connect_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("max_message_bytes", &self.max_message_bytes)
            .field(
                "access_key_id",
                &self.credentials.as_ref().map(|(id, _)| id),
            )
            .finish_non_exhaustive()
    }
}

/// The parameters [`AwsUrl::take`] consumes.
pub const AWS_URL_PARAMS: [&str; 5] = [
    "region",
    "tls",
    "connect_timeout",
    "operation_timeout",
    "max_message_bytes",
];

impl AwsUrl {
    /// The client configuration the URL describes: `base` with the URL's endpoint,
    /// region, credentials and time limits applied.
    pub fn apply(&self, mut base: ClientConfig) -> ClientConfig {
        if let Some(endpoint) = &self.endpoint {
            base = base.with_endpoint(endpoint.clone());
        }
        if let Some(region) = &self.region {
            base = base.with_region(region.clone());
        }
        if let Some((id, secret)) = &self.credentials {
            base = base.with_static_credentials(id.clone(), secret.clone());
        }
        if let Some(t) = self.connect_timeout {
            base = base.with_connect_timeout(t);
        }
        if let Some(t) = self.operation_timeout {
            base = base.with_operation_timeout(t);
        }
        base
    }

    /// Takes endpoint, region and credentials from `url`, leaving the driver's own
    /// parameters in `url.params`.
    ///
    /// ```
    /// use streams_aws::AwsUrl;
    /// use streams_core::ConnectUrl;
    ///
    /// let mut url = ConnectUrl::parse("sqs", "sqs://test:test@127.0.0.1:4566?region=us-east-1").unwrap();
    /// let aws = AwsUrl::take(&mut url).unwrap();
    /// assert_eq!(aws.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Invalid`](streams_core::Error::Invalid) for a path, a malformed host,
    /// an empty region, `tls` without a host, or half a credential.
    pub fn take(url: &mut ConnectUrl) -> Result<AwsUrl> {
        url.no_path()?;
        let platform = url.platform;
        let mut aws = AwsUrl {
            region: url.params.take_nonempty("region")?,
            connect_timeout: url.params.take_duration("connect_timeout")?,
            operation_timeout: url.params.take_duration("operation_timeout")?,
            max_message_bytes: url.params.take_positive("max_message_bytes")?,
            ..AwsUrl::default()
        };
        let tls = url.params.take_bool("tls")?.unwrap_or(false);
        match url.host_port()? {
            Some((host, port)) => {
                let protocol = if tls { "https" } else { "http" };
                aws.endpoint = Some(match port {
                    Some(port) => format!("{protocol}://{host}:{port}"),
                    None => format!("{protocol}://{host}"),
                });
            }
            None if tls => {
                return Err(invalid_url(format!(
                    "`tls` applies to an endpoint override: `{platform}://host:port?tls=true`"
                )))
            }
            None => {}
        }
        match (url.user.take(), url.password.take()) {
            (None, None) => {}
            (Some(id), Some(secret)) => aws.credentials = Some((id, secret)),
            _ => {
                return Err(invalid_url(format!(
                    "credentials in a `{platform}://` URL need both parts: `access_key_id:secret_access_key@host`"
                )))
            }
        }
        Ok(aws)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(url: &str) -> Result<AwsUrl> {
        AwsUrl::take(&mut ConnectUrl::parse("sqs", url)?)
    }

    fn err(url: &str) -> String {
        take(url).expect_err(url).to_string()
    }

    #[test]
    fn endpoint_region_credentials() {
        assert_eq!(take("sqs://").unwrap(), AwsUrl::default());
        let aws = take("sqs://test:s%2Fcret@127.0.0.1:4566?region=us-east-1").unwrap();
        assert_eq!(aws.endpoint.as_deref(), Some("http://127.0.0.1:4566"));
        assert_eq!(aws.region.as_deref(), Some("us-east-1"));
        assert_eq!(aws.credentials, Some(("test".into(), "s/cret".into())));
        assert!(!format!("{aws:?}").contains("s/cret"));
        let aws = take("sqs://sqs.example.com?tls=true").unwrap();
        assert_eq!(aws.endpoint.as_deref(), Some("https://sqs.example.com"));
        assert!(err("sqs://?tls=true").contains("endpoint override"));
        assert!(err("sqs://onlyuser@host").contains("both parts"));
        assert!(err("sqs://host:99999").contains("malformed host"));
        assert!(err("sqs://host/path").contains("no path"));
        assert!(!err("sqs://id:hunter2@host/path").contains("hunter2"));
        assert!(err("sqs://host?region=").contains("`region` is empty"));
        let aws =
            take("sqs://h?connect_timeout=2s&operation_timeout=500ms&max_message_bytes=262144")
                .unwrap();
        assert_eq!(aws.connect_timeout, Some(Duration::from_secs(2)));
        assert_eq!(aws.operation_timeout, Some(Duration::from_millis(500)));
        assert_eq!(aws.max_message_bytes, Some(262_144));
        assert!(err("sqs://h?connect_timeout=never").contains("`connect_timeout`"));
    }
}
