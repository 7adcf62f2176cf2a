//! Appending to streams.

use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use streams_core::{Error, Message, Result, Writer};

use crate::error::redis_error;
use crate::{wire, RedisClient};

/// Appends messages to Redis streams with `XADD`, one pipeline per write; implements
/// [`Writer`].
///
/// The stream is the Redis key of the message's stream name, as it is (Redis keys take
/// any bytes). A write returns once the server answered every `XADD` of the pipeline.
/// With [`RedisConfig::with_max_len`](crate::RedisConfig::with_max_len) each `XADD`
/// trims the stream to about that many entries (`MAXLEN ~`); by default nothing is
/// trimmed.
///
/// # On a bad day
///
/// - A lost connection fails the write with a retryable error, and the connection is
///   made again in the background; some entries of that pipeline may have been
///   appended, so a retried write can append them twice (at least once).
/// - A key that holds something other than a stream fails the write, not retryable,
///   naming the stream.
#[derive(Debug)]
pub struct RedisWriter {
    client: RedisClient,
    closed: AtomicBool,
}

impl RedisWriter {
    /// A writer on `client`'s connection.
    pub fn new(client: RedisClient) -> Self {
        RedisWriter {
            client,
            closed: AtomicBool::new(false),
        }
    }
}

#[async_trait]
impl Writer for RedisWriter {
    async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("Redis writer"));
        }
        let Some(first) = batch.first() else {
            return Ok(());
        };
        let mut pipe = redis::pipe();
        for msg in &batch {
            let mut cmd = redis::cmd("XADD");
            cmd.arg(msg.stream.as_bytes());
            if let Some(max) = self.client.config.max_len {
                cmd.arg("MAXLEN").arg("~").arg(max);
            }
            cmd.arg("*");
            wire::fields(msg, &mut cmd);
            pipe.add_command(cmd);
        }
        let mut conn = self.client.conn.clone();
        let ids: Vec<redis::Value> = pipe
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error("XADD", &first.stream, &e))?;
        debug_assert_eq!(ids.len(), batch.len());
        Ok(())
    }

    async fn close(&self) -> Result<()> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }
}
