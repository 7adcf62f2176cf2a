//! The shared conformance suite on RabbitMQ.

use std::sync::Arc;
use std::time::Duration;

use streams_amqp::{create_stream, AmqpClient, AmqpConfig, AmqpReader, AmqpWriter};
use streams_conformance::{Capabilities, Harness, TcpProxy};
use streams_core::{Reader, Result, Writer};

struct AmqpHarness {
    client: AmqpClient,
}

fn url() -> String {
    streams_testkit::amqp_url()
}

fn config(url: String) -> AmqpConfig {
    AmqpConfig::new(url)
        .with_concurrency(4)
        .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(200))
}

#[streams_core::async_trait]
impl Harness for AmqpHarness {
    fn name(&self) -> &'static str {
        "amqp"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_batches(true)
            .with_redelivery(true)
            .with_delayed_redelivery(true)
            .with_persistent(true)
            // Per member: lanes by key. The members of a group consume one queue.
            .with_ordered_per_key(true)
            .with_consumer_groups(true)
            .with_reconnect(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(AmqpWriter::new(self.client.clone())))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        Ok(Arc::new(AmqpReader::new(self.client.clone())))
    }

    async fn create_stream(&self, stream: &str) -> Result<()> {
        create_stream(&self.client, stream).await
    }

    async fn behind_proxy(&self) -> Result<(Box<dyn Harness>, TcpProxy)> {
        let url = url();
        let authority = url
            .trim_start_matches("amqp://")
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
            .expect("the broker's address");
        let proxy = TcpProxy::start(target)
            .await
            .map_err(|e| streams_core::Error::driver("amqp", "start proxy", false, e))?;
        let client = AmqpClient::connect(
            config(format!("amqp://guest:guest@{}/%2f", proxy.addr()))
                .with_operation_timeout(Duration::from_secs(2))
                .with_connect_timeout(Duration::from_secs(2)),
        )
        .await?;
        Ok((Box::new(AmqpHarness { client }), proxy))
    }
}

async fn harness() -> AmqpHarness {
    AmqpHarness {
        client: AmqpClient::connect(config(url()))
            .await
            .expect("RabbitMQ (streams-testkit: STREAMS_AMQP_URL, a container, or 127.0.0.1:5672)"),
    }
}

streams_conformance::conformance_tests!(harness());
