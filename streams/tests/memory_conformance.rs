//! The shared conformance suite on a `memory://` connection: the writer and reader that
//! `connect` returns are one working bus.

use std::sync::Arc;

use streams::{Connection, ReadTask, Reader, Result, Writer};
use streams_conformance::{Capabilities, Harness};

struct MemoryHarness {
    conn: Connection,
}

#[streams::async_trait]
impl Harness for MemoryHarness {
    fn name(&self) -> &'static str {
        "memory://"
    }

    fn capabilities(&self) -> Capabilities {
        // The in-process bus: at most once, nothing kept for a closed group.
        Capabilities::none()
            .with_ordered_per_key(true)
            .with_ordered_across_members(true)
            .with_consumer_groups(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(self.conn.writer())
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        self.conn.reader()
    }

    fn task(&self, stream: &str, group: &str) -> ReadTask {
        ReadTask::new(stream).with_group(group)
    }
}

async fn harness() -> MemoryHarness {
    // concurrency=4: several lanes, so order per key is checked under concurrency.
    let conn = streams::connect("memory://?queue_depth=64&concurrency=4")
        .await
        .expect("connect memory://");
    assert_eq!(conn.platform(), "memory");
    MemoryHarness { conn }
}

streams_conformance::conformance_tests!(harness());
