//! The shared conformance suite on Redis Streams.

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness, TcpProxy};
use streams_core::{Reader, Result, Writer};
use streams_redis::{RedisClient, RedisConfig, RedisReader, RedisWriter};

struct RedisHarness {
    client: RedisClient,
}

fn server() -> String {
    streams_testkit::redis_url()
}

/// Quick claims, so a failed handler's entry comes back within the scenarios' patience.
fn config(url: String) -> RedisConfig {
    RedisConfig::new(url)
        .with_claim_idle(Duration::from_secs(1))
        .with_block(Duration::from_millis(500))
        .with_concurrency(4)
}

#[streams_core::async_trait]
impl Harness for RedisHarness {
    fn name(&self) -> &'static str {
        "redis"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_batches(true)
            .with_redelivery(true)
            .with_delayed_redelivery(true)
            .with_persistent(true)
            // Per member: lanes by key. The members of a group read from one stream,
            // so a key's entries may be handled by two members at once.
            .with_ordered_per_key(true)
            .with_consumer_groups(true)
            .with_reconnect(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(RedisWriter::new(self.client.clone())))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        Ok(Arc::new(RedisReader::new(self.client.clone())))
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn behind_proxy(&self) -> Result<(Box<dyn Harness>, TcpProxy)> {
        let url = server();
        let authority = url
            .trim_start_matches("redis://")
            .split(['/', '?'])
            .next()
            .unwrap_or_default()
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .to_owned();
        let target = std::net::ToSocketAddrs::to_socket_addrs(&authority)
            .ok()
            .and_then(|mut a| a.next())
            .expect("the Redis server's address");
        let proxy = TcpProxy::start(target)
            .await
            .map_err(|e| streams_core::Error::driver("redis", "start proxy", false, e))?;
        let client = RedisClient::connect(
            config(format!("redis://{}", proxy.addr()))
                .with_response_timeout(Duration::from_secs(2)),
        )
        .await?;
        Ok((Box::new(RedisHarness { client }), proxy))
    }
}

async fn harness() -> RedisHarness {
    RedisHarness {
        client: RedisClient::connect(config(server()))
            .await
            .expect("Redis (streams-testkit: STREAMS_REDIS_URL, a container, or 127.0.0.1:6379)"),
    }
}

streams_conformance::conformance_tests!(harness());
