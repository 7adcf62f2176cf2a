//! The shared conformance suite on a standard SQS queue per scenario.

mod common;

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness, TcpProxy};
use streams_core::{ReadTask, Reader, Result, Writer};
use streams_sqs::{SqsClient, SqsReader, SqsWriter};

struct SqsHarness {
    client: SqsClient,
}

#[streams_core::async_trait]
impl Harness for SqsHarness {
    fn name(&self) -> &'static str {
        "sqs"
    }

    fn capabilities(&self) -> Capabilities {
        // A queue keeps messages and redelivers failed ones; a standard queue has no
        // order, and one queue has one set of consumers.
        Capabilities::none()
            .with_batches(true)
            .with_redelivery(true)
            .with_delayed_redelivery(true)
            .with_persistent(true)
            .with_reconnect(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(SqsWriter::new(self.client.clone())))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        // Short polls keep shutdown quick in tests.
        Ok(Arc::new(
            SqsReader::builder(self.client.clone())
                .with_wait_time(Duration::from_secs(1))
                .build(),
        ))
    }

    async fn create_stream(&self, stream: &str) -> Result<()> {
        self.client.create_queue(stream).await.map(|_| ())
    }

    fn patience(&self) -> Duration {
        // The emulator slows down with queue depth and machine load: wait generously.
        Duration::from_secs(60)
    }

    fn task(&self, stream: &str, _group: &str) -> ReadTask {
        ReadTask::new(stream).with_concurrency(8)
    }

    async fn behind_proxy(&self) -> Result<(Box<dyn Harness>, TcpProxy)> {
        let endpoint = common::endpoint();
        let authority = endpoint
            .split("://")
            .nth(1)
            .unwrap_or(&endpoint)
            .trim_end_matches('/');
        let target = std::net::ToSocketAddrs::to_socket_addrs(authority)
            .ok()
            .and_then(|mut a| a.next())
            .expect("the emulator's address");
        let proxy = TcpProxy::start(target)
            .await
            .map_err(|e| streams_core::Error::driver("sqs", "start proxy", false, e))?;
        let client = SqsClient::builder()
            .with_endpoint(format!("http://{}", proxy.addr()))
            .with_region(common::REGION)
            .with_static_credentials("test", "test")
            .with_operation_timeout(Duration::from_secs(5))
            .connect()
            .await;
        Ok((Box::new(SqsHarness { client }), proxy))
    }
}

async fn harness() -> SqsHarness {
    SqsHarness {
        client: common::client().await,
    }
}

streams_conformance::conformance_tests!(harness());
