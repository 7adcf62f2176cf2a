//! The crate's one error type.

/// What can go wrong building, reading or checking a document.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The registry could not describe an event (an example without a JSON form).
    #[error(transparent)]
    Registry(#[from] streams_core::Error),

    /// Input that is not JSON or YAML, or not an AsyncAPI 3 document or a JSON Schema.
    #[error("{0}")]
    Unreadable(String),

    /// Something the document cannot say: two events with one name, a connection URL
    /// of a platform that has no server (the in-process bus, an outbox).
    #[error("{0}")]
    Invalid(String),
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
