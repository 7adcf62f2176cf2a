//! The shared conformance suite on the in-process bus.

use std::sync::Arc;

use streams_chanbuf::MemoryBus;
use streams_conformance::{Capabilities, Harness};
use streams_core::{ReadTask, Reader, Result, Writer};

struct ChanHarness {
    bus: Arc<MemoryBus>,
}

#[streams_core::async_trait]
impl Harness for ChanHarness {
    fn name(&self) -> &'static str {
        "chanbuf"
    }

    fn capabilities(&self) -> Capabilities {
        // In memory and at most once: no redelivery (but for a handler that asks for a
        // delay), nothing kept for a closed group.
        Capabilities::none()
            .with_batches(true)
            .with_delayed_redelivery(true)
            .with_ordered_per_key(true)
            .with_ordered_across_members(true)
            .with_consumer_groups(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(self.bus.clone())
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        Ok(self.bus.clone())
    }

    fn task(&self, stream: &str, group: &str) -> ReadTask {
        // Several lanes, so that order per key is checked under concurrency.
        ReadTask::new(stream).with_group(group).with_concurrency(4)
    }
}

async fn harness() -> ChanHarness {
    ChanHarness {
        bus: Arc::new(MemoryBus::builder().with_queue_depth(64).build()),
    }
}

streams_conformance::conformance_tests!(harness());
