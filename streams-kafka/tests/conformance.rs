//! The shared conformance suite on Kafka.

mod common;

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness};
use streams_core::{ReadTask, Reader, Result, Writer};
use streams_kafka::{create_topic, KafkaReader, KafkaWriter};

struct KafkaHarness;

#[streams_core::async_trait]
impl Harness for KafkaHarness {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_redelivery(true)
            .with_persistent(true)
            .with_ordered_per_key(true)
            // A partition has one owner in a group.
            .with_ordered_across_members(true)
            .with_consumer_groups(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(KafkaWriter::new(&common::config())?))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        Ok(Arc::new(KafkaReader::new(common::config())))
    }

    async fn create_stream(&self, stream: &str) -> Result<()> {
        create_topic(&common::config(), stream, 3, 1).await
    }

    fn task(&self, stream: &str, group: &str) -> ReadTask {
        // Group ids unique per topic, so runs and scenarios never share a group.
        ReadTask::new(stream).with_group(format!("{group}-{stream}"))
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }
}

async fn harness() -> KafkaHarness {
    KafkaHarness
}

streams_conformance::conformance_tests!(harness());
