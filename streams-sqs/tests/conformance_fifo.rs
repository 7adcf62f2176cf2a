//! The shared conformance suite on a FIFO queue per scenario: order per key holds.

mod common;

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness};
use streams_core::{ReadTask, Reader, Result, Writer};
use streams_sqs::{SqsClient, SqsReader, SqsWriter};

struct SqsFifoHarness {
    client: SqsClient,
}

#[streams_core::async_trait]
impl Harness for SqsFifoHarness {
    fn name(&self) -> &'static str {
        "sqs-fifo"
    }

    fn capabilities(&self) -> Capabilities {
        // SQS hands out no message of a group while one is in flight, so readers of one
        // queue keep order per key between them. moto does not: a long poll checks the
        // groups in flight when it starts, and hands out a group another reader took
        // meanwhile (two readers, 6 keys x 30 messages: 8 keys handled twice at once).
        // So order is promised per reader only.
        Capabilities::none()
            .with_batches(true)
            // A failed message is retried in place; its key's later messages wait.
            .with_ordered_redelivery(true)
            .with_redelivery(true)
            .with_delayed_redelivery(true)
            .with_persistent(true)
            .with_ordered_per_key(true)
            .with_ordered_across_members(false)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(SqsWriter::new(self.client.clone())))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        // Immediate redelivery: every message of one group fails once in the
        // redelivery scenario, and each waits for the ones before it. One poller: moto
        // does not lock a message group across concurrent receives (SQS does).
        Ok(Arc::new(
            SqsReader::builder(self.client.clone())
                .with_wait_time(Duration::from_secs(1))
                .with_redelivery_backoff(Duration::ZERO, Duration::ZERO)
                .build(),
        ))
    }

    async fn create_stream(&self, stream: &str) -> Result<()> {
        // The scenarios name plain streams; map each to a FIFO queue of its own.
        let url = self.client.create_queue(&format!("{stream}.fifo")).await?;
        self.client.set_queue_url(stream, url);
        Ok(())
    }

    fn patience(&self) -> Duration {
        // FIFO receives are slower on the emulator (500 messages in 50 groups take tens of
        // seconds on a loaded two-core machine): wait generously.
        Duration::from_secs(120)
    }

    fn task(&self, stream: &str, _group: &str) -> ReadTask {
        ReadTask::new(stream).with_concurrency(8)
    }
}

async fn harness() -> SqsFifoHarness {
    SqsFifoHarness {
        client: common::client().await,
    }
}

streams_conformance::conformance_tests!(harness());
