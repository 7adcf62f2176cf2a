//! Event contracts derived with `schemars`.

use schemars::generate::SchemaSettings;
use schemars::JsonSchema;
use streams_core::{Event, EventContract};

/// The contract of `E` with its payload's JSON Schema derived by `schemars`; the
/// description is the type's doc comment (which `schemars` puts in the schema).
/// Add an example with [`EventContract::with_example`].
///
/// The schema is JSON Schema draft 07, the dialect AsyncAPI schemas extend; its
/// definitions move to `components/schemas` when a document is built.
///
/// ```
/// use streams_core::{Event, EventContract};
///
/// /// A payment was captured.
/// #[derive(serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
/// struct Captured { payment_id: String, cents: i64 }
///
/// impl Event for Captured {
///     fn contract() -> EventContract<Self> {
///         streams_asyncapi::contract::<Self>()
///             .with_example(Captured { payment_id: "pay-1".into(), cents: 1999 })
///     }
/// }
///
/// let c = Captured::contract();
/// assert_eq!(c.description(), Some("A payment was captured."));
/// assert_eq!(c.schema().unwrap()["properties"]["cents"]["type"], "integer");
/// ```
pub fn contract<E: Event + JsonSchema>() -> EventContract<E> {
    let schema = SchemaSettings::draft07()
        .into_generator()
        .into_root_schema_for::<E>()
        .to_value();
    let description = schema
        .get("description")
        .and_then(|d| d.as_str())
        .map(str::to_owned);
    let contract = EventContract::new().with_schema(schema);
    match description {
        Some(d) => contract.with_description(d),
        None => contract,
    }
}
