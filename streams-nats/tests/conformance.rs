//! The shared conformance suite on NATS JetStream.

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness, TcpProxy};
use streams_core::{Reader, Result, Writer};
use streams_nats::{create_stream, NatsClient, NatsConfig, NatsReader, NatsWriter};

struct NatsHarness {
    client: NatsClient,
}

#[streams_core::async_trait]
impl Harness for NatsHarness {
    fn name(&self) -> &'static str {
        "nats"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_batches(true)
            .with_redelivery(true)
            .with_delayed_redelivery(true)
            .with_persistent(true)
            // Per member: lanes by key. Members of one group pull from one consumer, so
            // a key's messages may be handled by two members at once.
            .with_ordered_per_key(true)
            .with_consumer_groups(true)
            .with_reconnect(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(NatsWriter::new(self.client.clone())))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        Ok(Arc::new(NatsReader::new(self.client.clone())))
    }

    async fn create_stream(&self, stream: &str) -> Result<()> {
        create_stream(&self.client, stream).await
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(30)
    }

    async fn behind_proxy(&self) -> Result<(Box<dyn Harness>, TcpProxy)> {
        let server = servers();
        let target = server
            .split(',')
            .next()
            .and_then(|s| std::net::ToSocketAddrs::to_socket_addrs(s).ok()?.next())
            .expect("a NATS server address");
        let proxy = TcpProxy::start(target)
            .await
            .map_err(|e| streams_core::Error::driver("nats", "start proxy", false, e))?;
        let client = NatsClient::connect(
            NatsConfig::new(&proxy.addr().to_string())
                .with_concurrency(4)
                .with_request_timeout(Duration::from_secs(2))
                .with_ack_wait(Duration::from_secs(5)),
        )
        .await?;
        Ok((Box::new(NatsHarness { client }), proxy))
    }
}

fn servers() -> String {
    streams_testkit::nats_servers()
}

async fn harness() -> NatsHarness {
    let config = NatsConfig::new(&servers()).with_concurrency(4);
    NatsHarness {
        client: NatsClient::connect(config)
            .await
            .expect("NATS with JetStream (streams-testkit: STREAMS_NATS_SERVERS, a container, or 127.0.0.1:4222)"),
    }
}

streams_conformance::conformance_tests!(harness());
