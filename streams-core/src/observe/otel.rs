//! Trace context in message headers, through OpenTelemetry's global text-map propagator.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::{Headers, Message};

/// Message [`Headers`] as an OpenTelemetry [`Injector`]: what a propagator writes becomes
/// a header. Empty values are skipped, since SQS and SNS reject empty attributes.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut Headers);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

/// Message [`Headers`] as an OpenTelemetry [`Extractor`].
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a Headers);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes `cx` into `headers` with the global text-map propagator, replacing what the
/// propagator's headers held.
///
/// [`ObservedWriter`](super::ObservedWriter) does this for each message that carries no
/// trace context yet; call it to propagate a context by hand.
///
/// ```
/// use opentelemetry::trace::TraceContextExt;
/// use streams_core::observe::{extract_context, inject_context};
/// use streams_core::Headers;
///
/// opentelemetry::global::set_text_map_propagator(
///     opentelemetry_sdk::propagation::TraceContextPropagator::new(),
/// );
/// let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
/// let mut received = Headers::new();
/// received.insert("traceparent".into(), traceparent.into());
///
/// let cx = extract_context(&received);
/// assert!(cx.span().span_context().is_remote());
///
/// let mut forwarded = Headers::new();
/// inject_context(&cx, &mut forwarded);
/// assert_eq!(forwarded["traceparent"], traceparent);
/// assert!(!forwarded.contains_key("tracestate"), "empty, so not written");
/// ```
pub fn inject_context(cx: &Context, headers: &mut Headers) {
    opentelemetry::global::get_text_map_propagator(|propagator| {
        propagator.inject_context(cx, &mut HeaderInjector(headers));
    });
}

/// Reads the context `headers` carry with the global text-map propagator: an empty
/// context when they carry none, never the current one.
pub fn extract_context(headers: &Headers) -> Context {
    opentelemetry::global::get_text_map_propagator(|propagator| extract(propagator, headers))
}

// `TextMapPropagator::extract` starts from the current context, so a message without a
// context of its own would look as if it carried the caller's.
fn extract(propagator: &dyn TextMapPropagator, headers: &Headers) -> Context {
    propagator.extract_with_context(&Context::new(), &HeaderExtractor(headers))
}

/// Injects the context of a publish span into every message without a context of its own.
pub(super) fn inject_span_context(span: &Span, batch: &mut [Message]) {
    if span.is_disabled() {
        return;
    }
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return;
    }
    opentelemetry::global::get_text_map_propagator(|propagator| {
        for msg in batch.iter_mut() {
            // The creation context wins: a relayed or dead-lettered message keeps the trace
            // of the producer that created it.
            let own = extract(propagator, &msg.headers);
            if !own.span().span_context().is_valid() {
                propagator.inject_context(&cx, &mut HeaderInjector(&mut msg.headers));
            }
        }
    });
}

/// Makes the context a message's headers carry the parent of its handle span.
pub(super) fn set_parent_from_headers(span: &Span, headers: &Headers) {
    let cx = extract_context(headers);
    if cx.span().span_context().is_valid() {
        // Fails only without an OpenTelemetry layer, where there is nothing to link.
        if let Err(error) = span.set_parent(cx) {
            tracing::trace!(%error, "trace context of message not linked");
        }
    }
}
