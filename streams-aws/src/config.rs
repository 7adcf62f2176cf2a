//! Where the drivers' SDK clients get their configuration.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::provider::SharedCredentialsProvider;
use aws_credential_types::Credentials;
use aws_types::origin::Origin;

/// The environment variable [`ClientConfig::from_env`] reads an endpoint override from,
/// for emulators such as LocalStack or moto.
pub const ENDPOINT_ENV: &str = "STREAMS_AWS_ENDPOINT";

/// How long a connection attempt to AWS may take unless set otherwise:
/// [`ClientConfig::with_connect_timeout`].
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long one AWS call may take, its retries included, unless set otherwise:
/// [`ClientConfig::with_operation_timeout`].
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(20);

/// Where an AWS SDK client gets its configuration: the usual AWS sources (environment,
/// profile files, instance metadata) unless an [`SdkConfig`] is given, with optional
/// overrides of endpoint, region, credentials and time limits.
///
/// Each driver builder keeps one and hands its `from_env`, `with_sdk_config`,
/// `with_endpoint`, `with_region`, `with_static_credentials`, `with_connect_timeout` and
/// `with_operation_timeout` to it; [`load`](Self::load) gives the configuration to
/// create the service client from.
///
/// # Time limits
///
/// Every call is bounded, so a wrong or unreachable endpoint fails within seconds rather
/// than hanging: a connection attempt gives up after the
/// [connect timeout](Self::with_connect_timeout) (default 5 s), and a call, its retries
/// included, after the [operation timeout](Self::with_operation_timeout) (default 20 s).
/// The SDK's standard retry policy applies within that bound (3 attempts with jittered
/// backoff, for connection failures, time-outs, throttling and 5xx answers). Against an
/// endpoint where nothing listens a call therefore fails in well under 30 s. A long poll
/// (SQS `ReceiveMessage`) gets its wait time on top of the operation timeout, so a
/// healthy poll is never cut.
///
/// ```no_run
/// # async fn demo() {
/// let config = streams_aws::ClientConfig::new()
///     .with_endpoint("http://127.0.0.1:4566")
///     .with_region("us-east-1")
///     .with_static_credentials("test", "test")
///     .load()
///     .await;
/// assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:4566"));
/// # }
/// ```
#[derive(Debug, Default, Clone)]
pub struct ClientConfig {
    sdk_config: Option<SdkConfig>,
    endpoint: Option<String>,
    region: Option<String>,
    credentials: Option<Credentials>,
    connect_timeout: Option<Duration>,
    operation_timeout: Option<Duration>,
}

impl ClientConfig {
    /// No overrides: the configuration is loaded from the usual AWS sources.
    pub fn new() -> Self {
        Self::default()
    }

    /// Reads the endpoint override from [`ENDPOINT_ENV`] when set and not empty; region
    /// and credentials come from the usual AWS environment at [`load`](Self::load).
    pub fn from_env() -> Self {
        ClientConfig {
            endpoint: std::env::var(ENDPOINT_ENV).ok().filter(|e| !e.is_empty()),
            ..Self::default()
        }
    }

    /// Uses this AWS configuration instead of loading one.
    pub fn with_sdk_config(mut self, config: SdkConfig) -> Self {
        self.sdk_config = Some(config);
        self
    }

    /// Sends every request to this endpoint (an emulator, a VPC endpoint).
    pub fn with_endpoint(mut self, url: impl Into<String>) -> Self {
        self.endpoint = Some(url.into());
        self
    }

    /// Sets the region.
    pub fn with_region(mut self, region: impl Into<String>) -> Self {
        self.region = Some(region.into());
        self
    }

    /// Uses fixed credentials (for emulators and tests).
    pub fn with_static_credentials(
        mut self,
        access_key_id: impl Into<String>,
        secret_access_key: impl Into<String>,
    ) -> Self {
        self.credentials = Some(Credentials::new(
            access_key_id,
            secret_access_key,
            None,
            None,
            "streams-static",
        ));
        self
    }

    /// How long a connection attempt may take before it fails (and is retried while the
    /// operation timeout allows). Default 5 s ([`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = Some(timeout);
        self
    }

    /// How long one call may take, retries included, before it fails with a retryable
    /// error naming the endpoint. Default 20 s ([`DEFAULT_OPERATION_TIMEOUT`]); long
    /// polls get their wait time on top.
    pub fn with_operation_timeout(mut self, timeout: Duration) -> Self {
        self.operation_timeout = Some(timeout);
        self
    }

    /// The region set with [`with_region`](Self::with_region), if any.
    pub fn region_override(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The AWS configuration to create a service client from (`Client::new(&config)`):
    /// the one given, or one loaded from the usual AWS sources, with the overrides
    /// applied. A given configuration keeps its own time limits where it sets them and
    /// gets the defaults where it does not; time limits set here win over both.
    pub async fn load(self) -> SdkConfig {
        let defaults = TimeoutConfig::builder()
            .connect_timeout(DEFAULT_CONNECT_TIMEOUT)
            .operation_timeout(DEFAULT_OPERATION_TIMEOUT)
            .build();
        let config = match self.sdk_config {
            Some(config) => config,
            None => {
                // Region and credentials given here skip the provider chains, which
                // would otherwise probe the instance metadata service.
                let mut loader = aws_config::defaults(BehaviorVersion::latest())
                    .timeout_config(defaults.clone());
                if let Some(region) = &self.region {
                    loader = loader.region(Region::new(region.clone()));
                }
                if let Some(credentials) = &self.credentials {
                    loader = loader.credentials_provider(credentials.clone());
                }
                loader.load().await
            }
        };
        let mut explicit = TimeoutConfig::builder();
        if let Some(t) = self.connect_timeout {
            explicit = explicit.connect_timeout(t);
        }
        if let Some(t) = self.operation_timeout {
            explicit = explicit.operation_timeout(t);
        }
        let mut timeouts = explicit.build();
        if let Some(given) = config.timeout_config() {
            timeouts.take_defaults_from(given);
        }
        timeouts.take_defaults_from(&defaults);
        let mut b = config.into_builder();
        b.set_timeout_config(Some(timeouts));
        if let Some(endpoint) = self.endpoint {
            // Marked as set in code, as when set on a service client, so that it wins
            // over service-specific settings such as AWS_ENDPOINT_URL_SQS.
            b.insert_origin("endpoint_url", Origin::shared_config());
            b = b.endpoint_url(endpoint);
        }
        if let Some(region) = self.region {
            b = b.region(Region::new(region));
        }
        if let Some(credentials) = self.credentials {
            b = b.credentials_provider(SharedCredentialsProvider::new(credentials));
        }
        b.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_credential_types::provider::ProvideCredentials;

    #[test]
    fn overrides_apply_to_a_given_config() {
        let given = SdkConfig::builder()
            .region(Region::new("eu-west-1"))
            .endpoint_url("http://from-the-environment:1")
            .build();
        let config = ClientConfig::new()
            .with_sdk_config(given.clone())
            .with_endpoint("http://127.0.0.1:4566")
            .with_region("us-east-1")
            .with_static_credentials("id", "secret");
        assert_eq!(config.region_override(), Some("us-east-1"));
        let config = futures::executor::block_on(config.load());
        assert_eq!(config.region().map(|r| r.as_ref()), Some("us-east-1"));
        assert_eq!(config.endpoint_url(), Some("http://127.0.0.1:4566"));
        assert!(config.get_origin("endpoint_url").is_client_config());
        let credentials = futures::executor::block_on(
            config
                .credentials_provider()
                .expect("credentials are set")
                .provide_credentials(),
        )
        .expect("static credentials");
        assert_eq!(credentials.access_key_id(), "id");

        // Without overrides the given configuration is used as it is.
        let config = futures::executor::block_on(ClientConfig::new().with_sdk_config(given).load());
        assert_eq!(config.region().map(|r| r.as_ref()), Some("eu-west-1"));
        assert_eq!(config.endpoint_url(), Some("http://from-the-environment:1"));
        assert!(!config.get_origin("endpoint_url").is_client_config());
        assert!(config.credentials_provider().is_none());
    }

    #[test]
    fn time_limits_default_and_can_be_set() {
        let timeouts = |config: ClientConfig| {
            let loaded = futures::executor::block_on(config.load());
            let t = loaded
                .timeout_config()
                .expect("time limits are set")
                .clone();
            (t.connect_timeout(), t.operation_timeout())
        };
        let bare = || {
            SdkConfig::builder()
                .region(Region::new("us-east-1"))
                .build()
        };
        assert_eq!(
            timeouts(ClientConfig::new().with_sdk_config(bare())),
            (
                Some(DEFAULT_CONNECT_TIMEOUT),
                Some(DEFAULT_OPERATION_TIMEOUT)
            )
        );
        // A given configuration keeps what it sets; settings here win over it.
        let given = SdkConfig::builder()
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(1))
                    .build(),
            )
            .build();
        assert_eq!(
            timeouts(ClientConfig::new().with_sdk_config(given.clone())),
            (
                Some(Duration::from_secs(1)),
                Some(DEFAULT_OPERATION_TIMEOUT)
            )
        );
        let set = ClientConfig::new()
            .with_sdk_config(given)
            .with_connect_timeout(Duration::from_millis(250))
            .with_operation_timeout(Duration::from_secs(3));
        assert_eq!(
            timeouts(set),
            (
                Some(Duration::from_millis(250)),
                Some(Duration::from_secs(3))
            )
        );
    }
}
