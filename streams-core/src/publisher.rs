use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use chrono::Utc;

use crate::{
    Codec, Error, Event, EventRegistry, IdFactory, JsonCodec, Message, Result, UuidFactory, Writer,
};

/// Publishes typed events through a [`Writer`].
///
/// The codec (JSON by default) and the id factory (UUID v7 by default, KSUID available)
/// are configurable. Cloning is cheap and clones share the writer.
///
/// ```
/// # async fn demo(writer: std::sync::Arc<dyn streams_core::Writer>) -> streams_core::Result<()> {
/// use std::sync::Arc;
/// use streams_core::{Event, EventRegistry, KsuidFactory, Publisher};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Paid { invoice: String }
/// impl Event for Paid {}
///
/// let registry = Arc::new(EventRegistry::new());
/// registry.register::<Paid>("billing.paid");
/// let publisher = Publisher::new(writer, registry).with_id_factory(KsuidFactory);
/// let id = publisher.publish(&Paid { invoice: "A-1".into() }).await?;
/// # let _ = id; Ok(()) }
/// ```
pub struct Publisher<C = JsonCodec> {
    writer: Arc<dyn Writer>,
    registry: Arc<EventRegistry>,
    ids: Arc<dyn IdFactory>,
    codec: C,
    closed: Arc<AtomicBool>,
}

impl Publisher<JsonCodec> {
    /// A JSON publisher with UUID v7 ids.
    pub fn new(writer: Arc<dyn Writer>, registry: Arc<EventRegistry>) -> Self {
        Publisher {
            writer,
            registry,
            ids: Arc::new(UuidFactory),
            codec: JsonCodec,
            closed: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl<C> Publisher<C> {
    /// Uses another codec; events must be encodable by it.
    pub fn with_codec<C2>(self, codec: C2) -> Publisher<C2> {
        Publisher {
            writer: self.writer,
            registry: self.registry,
            ids: self.ids,
            codec,
            closed: self.closed,
        }
    }

    /// Uses another id factory.
    pub fn with_id_factory(mut self, ids: impl IdFactory) -> Self {
        self.ids = Arc::new(ids);
        self
    }

    /// The writer messages go to.
    pub fn writer(&self) -> &Arc<dyn Writer> {
        &self.writer
    }

    /// Refuses further publishing from this publisher and its clones.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Builds the message carrying `event` on `stream`, without writing it.
    ///
    /// # Errors
    ///
    /// [`Error::Encode`] when the codec cannot encode the event.
    pub fn message<E: Event>(&self, stream: impl Into<String>, event: &E) -> Result<Message>
    where
        C: Codec<E>,
    {
        Ok(Message {
            id: self.ids.new_id(),
            stream: stream.into(),
            key: event.key().filter(|k| !k.is_empty()),
            headers: event.headers(),
            metadata: crate::Metadata::new(),
            content_type: self.codec.content_type().to_owned(),
            data: self.codec.encode(event)?,
            time: Utc::now(),
        })
    }

    /// Publishes an event on the stream registered for its type; returns the message id.
    ///
    /// # Errors
    ///
    /// [`Error::EventNotRegistered`], [`Error::Closed`] after [`close`](Self::close),
    /// an encoding error, or the writer's error.
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String>
    where
        C: Codec<E>,
    {
        let stream = self.registry.stream_of::<E>()?;
        self.publish_to(stream, event).await
    }

    /// Publishes an event on a given stream; returns the message id.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish), without the registry lookup.
    pub async fn publish_to<E: Event>(&self, stream: impl Into<String>, event: &E) -> Result<String>
    where
        C: Codec<E>,
    {
        let msg = self.message(stream, event)?;
        let id = msg.id.clone();
        self.write(vec![msg]).await?;
        Ok(id)
    }

    /// Publishes several events of one type as one batch; returns the message ids.
    ///
    /// # Errors
    ///
    /// As [`publish`](Self::publish).
    pub async fn publish_batch<E: Event>(&self, events: &[E]) -> Result<Vec<String>>
    where
        C: Codec<E>,
    {
        let stream = self.registry.stream_of::<E>()?;
        let batch = events
            .iter()
            .map(|e| self.message(stream.clone(), e))
            .collect::<Result<Vec<_>>>()?;
        let ids = batch.iter().map(|m| m.id.clone()).collect();
        self.write(batch).await?;
        Ok(ids)
    }

    /// Writes prepared messages.
    ///
    /// # Errors
    ///
    /// [`Error::Closed`] after [`close`](Self::close), or the writer's error.
    pub async fn write(&self, batch: Vec<Message>) -> Result<()> {
        if self.closed.load(Ordering::Acquire) {
            return Err(Error::Closed("publisher"));
        }
        self.writer.write(batch).await
    }
}

impl<C: Clone> Clone for Publisher<C> {
    fn clone(&self) -> Self {
        Publisher {
            writer: self.writer.clone(),
            registry: self.registry.clone(),
            ids: self.ids.clone(),
            codec: self.codec.clone(),
            closed: self.closed.clone(),
        }
    }
}

impl<C> fmt::Debug for Publisher<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Publisher")
            .field("writer", &self.writer)
            .field("ids", &self.ids)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
