//! Creating and deleting streams.

use async_trait::async_trait;
use streams_core::{Result, StreamAdmin};

use crate::error::redis_error;
use crate::RedisClient;

/// Redis streams as the streams of a `redis://` connection. A stream is made by its
/// first entry (and by a reader's group, `MKSTREAM`), so creating one does nothing;
/// deleting one removes the key, its entries and its groups.
#[derive(Debug, Clone)]
pub(crate) struct RedisAdmin(pub(crate) RedisClient);

#[async_trait]
impl StreamAdmin for RedisAdmin {
    async fn create_stream(&self, _stream: &str, _partitions: u32) -> Result<()> {
        Ok(())
    }

    async fn delete_stream(&self, stream: &str) -> Result<()> {
        let mut conn = self.0.conn.clone();
        redis::cmd("DEL")
            .arg(stream.as_bytes())
            .query_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(|e| redis_error("DEL", stream, &e))
    }
}
