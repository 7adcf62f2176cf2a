//! The payments service's event and its AsyncAPI document, shared by the payments
//! examples.
//!
//! The service registers its event once, on its bus; the same registry writes the
//! document (`cargo run -p streams-examples --example payments_agentless --features sql
//! -- asyncapi`), and `streams --url kafka://... asyncapi` adds the server it runs on.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use streams_asyncapi::{AsyncApi, Document};
use streams_core::{Event, EventContract, EventRegistry};

/// The stream payments are announced on.
pub const STREAM: &str = "payments.created";

/// A payment was stored, together with this event, in one database transaction.
///
/// Keyed by account, so that one account's payments keep their order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PaymentCreated {
    /// The payment's id, unique per service.
    pub payment_id: String,
    /// The account charged.
    pub account: String,
    /// The amount in cents; always positive.
    pub cents: i64,
}

impl Event for PaymentCreated {
    fn key(&self) -> Option<String> {
        Some(self.account.clone())
    }

    fn contract() -> EventContract<Self> {
        streams_asyncapi::contract::<Self>().with_example(PaymentCreated {
            payment_id: "pay-1".into(),
            account: "acct-7".into(),
            cents: 1999,
        })
    }
}

/// The service's AsyncAPI document, from the registry its bus uses.
///
/// # Errors
///
/// As [`AsyncApi::build`].
pub fn asyncapi(registry: &EventRegistry) -> streams_asyncapi::Result<Document> {
    AsyncApi::new("payments", "1.0.0")
        .with_description(
            "Stores payments and announces each one, written through a transactional outbox.",
        )
        .build(registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_document_describes_the_event() {
        let registry = EventRegistry::new();
        registry.register::<PaymentCreated>(STREAM);
        let doc = asyncapi(&registry).unwrap();
        let v = doc.as_value();
        assert_eq!(v["channels"][STREAM]["address"], STREAM);
        let m = &v["components"]["messages"]["PaymentCreated"];
        assert_eq!(
            m["summary"],
            "A payment was stored, together with this event, in one database transaction."
        );
        assert_eq!(m["examples"][0]["payload"]["cents"], 1999);
        assert_eq!(
            v["components"]["schemas"]["PaymentCreated"]["required"],
            serde_json::json!(["payment_id", "account", "cents"])
        );
    }
}
