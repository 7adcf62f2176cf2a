//! The shared conformance suite on a standard SQS queue per scenario.

mod common;

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness};
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
            .with_redelivery(true)
            .with_persistent(true)
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
}

async fn harness() -> SqsHarness {
    SqsHarness {
        client: common::client().await,
    }
}

streams_conformance::conformance_tests!(harness());
