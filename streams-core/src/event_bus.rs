use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::{Codec, Event, EventRegistry, JsonCodec, Publisher, Reader, Result, Router, Writer};

/// A publisher and a router sharing one event registry: the one object
/// most services need.
///
/// ```
/// # async fn demo(writer: std::sync::Arc<dyn streams_core::Writer>, reader: std::sync::Arc<dyn streams_core::Reader>) -> streams_core::Result<()> {
/// use std::time::Duration;
/// use streams_core::{EventBus, BoxError, Event, Message};
///
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct Shipped { parcel: String }
/// impl Event for Shipped {}
///
/// let mut bus = EventBus::new(writer, reader);
/// bus.register::<Shipped>("logistics.shipped");
/// bus.router().subscribe_typed(|e: Shipped, _m: Message| async move {
///     tracing::info!(parcel = %e.parcel, "shipped");
///     Ok::<_, BoxError>(())
/// })?;
/// bus.start().await?;
/// bus.publish(&Shipped { parcel: "P-1".into() }).await?;
/// bus.shutdown(Duration::from_secs(5)).await?;
/// # Ok(()) }
/// ```
pub struct EventBus<C = JsonCodec> {
    registry: Arc<EventRegistry>,
    publisher: Publisher<C>,
    router: Router,
}

impl EventBus<JsonCodec> {
    /// A bus writing JSON events to `writer` and reading from `reader`.
    pub fn new(writer: Arc<dyn Writer>, reader: Arc<dyn Reader>) -> Self {
        let registry = Arc::new(EventRegistry::new());
        EventBus {
            publisher: Publisher::new(writer, registry.clone()),
            router: Router::new(reader, registry.clone()),
            registry,
        }
    }
}

impl<C> EventBus<C> {
    /// Replaces the publisher's codec.
    pub fn with_codec<C2>(self, codec: C2) -> EventBus<C2> {
        EventBus {
            registry: self.registry,
            publisher: self.publisher.with_codec(codec),
            router: self.router,
        }
    }

    /// Replaces the publisher's id factory.
    pub fn with_id_factory(mut self, ids: impl crate::IdFactory) -> Self {
        self.publisher = self.publisher.with_id_factory(ids);
        self
    }

    /// Registers the stream of an event type.
    pub fn register<E: Event>(&mut self, stream: impl Into<String>) -> &mut Self {
        self.registry.register::<E>(stream);
        self
    }

    /// The shared event registry.
    pub fn registry(&self) -> &Arc<EventRegistry> {
        &self.registry
    }

    /// The publisher; clone it to publish from handlers and other tasks.
    pub fn publisher(&self) -> &Publisher<C> {
        &self.publisher
    }

    /// The router that runs the handlers over the reader: subscribe handlers here
    /// ([`Router::subscribe_typed`] and the others).
    pub fn router(&mut self) -> &mut Router {
        &mut self.router
    }

    /// See [`Publisher::publish`].
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<String>
    where
        C: Codec<E>,
    {
        self.publisher.publish(event).await
    }

    /// See [`Publisher::publish_to`].
    ///
    /// # Errors
    ///
    /// As [`Publisher::publish_to`].
    pub async fn publish_to<E: Event>(&self, stream: impl Into<String>, event: &E) -> Result<String>
    where
        C: Codec<E>,
    {
        self.publisher.publish_to(stream, event).await
    }

    /// Attaches and starts the subscribed read tasks; see [`Router::start`].
    ///
    /// # Errors
    ///
    /// As [`Router::start`]: a task that could not be attached, naming its stream.
    pub async fn start(&mut self) -> Result<()> {
        self.router.start().await
    }

    /// Refuses new publishing, stops the readers, waits up to `deadline` for in-flight
    /// handlers, then closes the writer (flushing what it holds).
    ///
    /// # Errors
    ///
    /// Every reader failure (see [`Router::shutdown`]) or the writer's close error.
    pub async fn shutdown(self, deadline: Duration) -> Result<()> {
        self.publisher.close();
        let readers = self.router.shutdown(deadline).await;
        let writer = self.publisher.writer().close().await;
        readers.and(writer)
    }
}

impl<C> fmt::Debug for EventBus<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventBus")
            .field("registry", &self.registry)
            .field("publisher", &self.publisher)
            .field("router", &self.router)
            .finish()
    }
}
