//! Contracts for streams: an AsyncAPI 3.0 document built from an
//! [`EventRegistry`](streams_core::EventRegistry), and a check that a new version of
//! a contract does not break consumers of the old one.
//!
//! - [`contract`] derives an event's contract (JSON Schema via `schemars`, description
//!   from the doc comment) for [`Event::contract`](streams_core::Event::contract); an
//!   event is registered once, as always, and documented from that registration.
//! - [`AsyncApi`] builds the [`Document`]: channels are streams, messages are event
//!   types, servers and bindings come from connection URLs
//!   ([`Document::with_server`]).
//! - [`check`] compares two documents (or two JSON Schemas) and lists each breaking
//!   change as a [`Finding`]: removed field, field made required, type changed,
//!   enum value removed, and at the message level event removed, stream or content
//!   type changed.
//!
//! The `streams` tool prints documents (`streams asyncapi`) and runs the check
//! (`streams schema check OLD NEW`).

mod check;
mod contract;
mod document;
mod error;
mod platform;
mod schema;

pub use check::{check, check_values, Finding, Rule};
pub use contract::contract;
pub use document::{AsyncApi, Document, ASYNCAPI_VERSION};
pub use error::{Error, Result};
pub use platform::driver_headers;
/// The `schemars` this crate derives schemas with; derive `JsonSchema` from it.
pub use schemars;
