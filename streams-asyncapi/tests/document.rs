//! Documents built from a registry: their shape, and their validity according to the
//! AsyncAPI initiative's own parser (`@asyncapi/parser` on Node.js).

#![allow(clippy::print_stderr)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use streams_asyncapi::{AsyncApi, Document, Error};
use streams_core::{Event, EventContract, EventRegistry, ProtobufCodec};

/// A payment was captured by the card processor.
///
/// Emitted once per payment.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct PaymentCaptured {
    payment_id: String,
    amount: Money,
    method: Method,
    /// Free-form labels.
    labels: BTreeMap<String, String>,
    note: Option<String>,
    refund_of: Option<Box<PaymentCaptured>>,
    lines: Vec<Line>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Money {
    cents: i64,
    currency: Currency,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
enum Currency {
    Eur,
    Usd,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Method {
    Card { last4: String },
    Transfer { iban: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Line {
    sku: String,
    quantity: u32,
}

fn captured() -> PaymentCaptured {
    PaymentCaptured {
        payment_id: "pay-1".into(),
        amount: Money {
            cents: 1999,
            currency: Currency::Eur,
        },
        method: Method::Card {
            last4: "4242".into(),
        },
        labels: BTreeMap::from([("channel".into(), "web".into())]),
        note: None,
        refund_of: None,
        lines: vec![Line {
            sku: "A-1".into(),
            quantity: 2,
        }],
    }
}

impl Event for PaymentCaptured {
    fn contract() -> EventContract<Self> {
        streams_asyncapi::contract::<Self>().with_example(captured())
    }
}

/// Same name as `other::Money`'s event below, different module.
#[derive(Clone, PartialEq, Serialize, Deserialize, JsonSchema, prost::Message)]
struct Refunded {
    #[prost(string, tag = "1")]
    payment_id: String,
}

impl Event for Refunded {
    fn codecs() -> streams_core::CodecRegistry<Self> {
        streams_core::CodecRegistry::json().with_codec(ProtobufCodec)
    }
    fn contract() -> EventContract<Self> {
        streams_asyncapi::contract::<Self>().with_description("A refund.")
    }
}

/// An event without a schema: documented by name only.
#[derive(Debug, Serialize, Deserialize)]
struct Pinged;
impl Event for Pinged {}

mod other {
    /// Another `Money`, different from the one above: its schema is renamed.
    #[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    pub(crate) struct Money {
        pub(crate) amount: f64,
    }
    #[derive(Debug, serde::Serialize, serde::Deserialize, schemars::JsonSchema)]
    pub(crate) struct Converted {
        pub(crate) from: Money,
        pub(crate) to: super::Money,
    }
    impl streams_core::Event for Converted {
        fn contract() -> streams_core::EventContract<Self> {
            streams_asyncapi::contract::<Self>()
        }
    }
}

fn registry() -> EventRegistry {
    let r = EventRegistry::new();
    r.register::<PaymentCaptured>("payments.captured");
    r.register::<Refunded>("payments.refunded.fifo");
    r.register::<Pinged>("ops/pings");
    r.register::<other::Converted>("payments.captured");
    r
}

const SERVERS: [(&str, &str); 6] = [
    (
        "kafka",
        "kafka://user:hunter2@b1:9092,b2:9092?group=billing",
    ),
    ("sqs", "sqs://key:hunter2@127.0.0.1:4566?region=eu-west-1"),
    ("sns", "sns://?region=eu-west-1&account_id=123456789012"),
    ("nats", "nats://127.0.0.1:4222?group=billing"),
    ("redis", "redis://127.0.0.1:6379"),
    (
        "amqp",
        "amqp://guest:hunter2@127.0.0.1:5672/%2f?group=billing",
    ),
];

fn full_document() -> Document {
    let mut api = AsyncApi::new("payments", "1.0.0").with_description("Takes payments.");
    for (name, url) in SERVERS {
        api = api.with_server(name, url);
    }
    api.build(&registry()).unwrap()
}

#[test]
fn channels_are_streams_and_messages_are_events() {
    let doc = full_document();
    let v = doc.as_value();
    assert_eq!(v["asyncapi"], "3.0.0");
    assert_eq!(v["info"]["description"], "Takes payments.");
    let channel = &v["channels"]["payments.captured"];
    assert_eq!(channel["address"], "payments.captured");
    let mut messages: Vec<&String> = channel["messages"].as_object().unwrap().keys().collect();
    messages.sort();
    assert_eq!(messages, ["Converted", "PaymentCaptured"]);
    // A stream name with a `/` gets a safe channel id; the address keeps it.
    assert_eq!(v["channels"]["ops_pings"]["address"], "ops/pings");

    let m = &v["components"]["messages"]["PaymentCaptured"];
    assert_eq!(m["contentType"], "application/json");
    assert_eq!(
        m["summary"],
        "A payment was captured by the card processor."
    );
    assert_eq!(m["payload"]["$ref"], "#/components/schemas/PaymentCaptured");
    assert_eq!(m["examples"][0]["payload"]["amount"]["cents"], 1999);
    assert_eq!(
        m["x-streams-type"],
        std::any::type_name::<PaymentCaptured>()
    );
    // The headers every driver of the document's servers sets.
    for header in [
        "message_id",
        "streams-message-id",
        "Nats-Msg-Id",
        "streams-key",
        "content-type",
    ] {
        assert!(
            m["headers"]["properties"].get(header).is_some(),
            "{header}: {}",
            m["headers"]
        );
    }
    assert_eq!(m["bindings"]["kafka"]["key"]["type"], "string");

    let refunded = &v["components"]["messages"]["Refunded"];
    assert_eq!(refunded["description"], "A refund.");
    assert_eq!(
        refunded["x-streams-content-types"],
        json!(["application/json", "application/x-google-protobuf"])
    );
    assert!(v["components"]["messages"]["Pinged"]
        .get("payload")
        .is_none());

    // Definitions moved to components/schemas; the two `Money`s are kept apart.
    let schemas = v["components"]["schemas"].as_object().unwrap();
    assert!(
        schemas.contains_key("Money") && schemas.contains_key("Money2"),
        "{:?}",
        schemas.keys()
    );
    let text = doc.to_json();
    assert!(
        !text.contains("#/definitions/") && !text.contains("#/$defs/"),
        "{text}"
    );
    assert!(!text.contains("hunter2"), "a password reached the document");

    // Servers and channel bindings per platform.
    assert_eq!(v["servers"]["kafka"]["host"], "b1:9092");
    assert_eq!(v["servers"]["sns"]["host"], "sns.eu-west-1.amazonaws.com");
    assert_eq!(v["servers"]["amqp"]["protocolVersion"], "0.9.1");
    let b = &v["channels"]["payments.refunded.fifo"]["bindings"];
    assert_eq!(b["kafka"]["topic"], "payments.refunded.fifo");
    assert_eq!(b["sqs"]["queue"]["name"], "payments-refunded.fifo");
    assert_eq!(b["sqs"]["queue"]["fifoQueue"], true);
    assert_eq!(b["sns"]["ordering"]["type"], "FIFO");
    assert_eq!(b["amqp"]["exchange"]["type"], "fanout");
}

#[test]
fn yaml_and_json_read_back_the_same() {
    let doc = full_document();
    assert_eq!(Document::parse(&doc.to_yaml().unwrap()).unwrap(), doc);
    assert_eq!(Document::parse(&doc.to_json()).unwrap(), doc);
}

#[test]
fn a_program_document_gets_its_server_later() {
    let doc = AsyncApi::new("payments", "1").build(&registry()).unwrap();
    assert!(doc.as_value().get("servers").is_none());
    let doc = Document::parse(&doc.to_yaml().unwrap())
        .unwrap()
        .with_server("production", "kafka://broker:9092")
        .unwrap();
    assert_eq!(doc.as_value()["servers"]["production"]["protocol"], "kafka");
    let again = doc.clone().with_server("production", "kafka://other:9092");
    assert!(matches!(again, Err(Error::Invalid(_))), "{again:?}");
}

#[test]
fn bad_day_names_urls_and_input() {
    #[derive(Serialize, Deserialize)]
    struct PaymentCapturedToo;
    impl Event for PaymentCapturedToo {
        fn contract() -> EventContract<Self> {
            EventContract::new().with_name("PaymentCaptured")
        }
    }
    let r = registry();
    r.register::<PaymentCapturedToo>("x");
    let e = AsyncApi::new("t", "1").build(&r).unwrap_err().to_string();
    assert!(e.contains("both named `PaymentCaptured`"), "{e}");

    for (url, says) in [
        ("memory://", "in-process"),
        ("postgres://postgres@127.0.0.1/test", "outbox"),
        ("mqtt://h", "unknown scheme"),
    ] {
        let e = AsyncApi::new("t", "1")
            .with_server("s", url)
            .build(&registry())
            .unwrap_err()
            .to_string();
        assert!(e.contains(says), "{url}: {e}");
    }

    for (text, says) in [
        ("", "empty"),
        ("{ not json", "neither JSON nor YAML"),
        ("openapi: 3.1.0\n", "no `asyncapi` field"),
        ("asyncapi: 2.6.0\n", "AsyncAPI 2.6.0 is not supported"),
        ("- a\n- b\n", "no `asyncapi` field"),
    ] {
        let e = Document::parse(text).unwrap_err().to_string();
        assert!(e.contains(says), "{text:?}: {e}");
    }
}

// --- the AsyncAPI initiative's parser ----------------------------------------

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The parser's directory, installed on first use; `None` (after one SKIPPED line)
/// where Node.js or npm is missing.
fn parser_dir(test: &str) -> Option<PathBuf> {
    // Installed once per test binary; the script also locks against other processes.
    static DIR: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);
    let mut dir = DIR.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(d) = &*dir {
        return Some(d.clone());
    }
    for tool in ["node", "npm"] {
        let found = Command::new(tool)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            // CI and the development machines have both: there this test really runs.
            assert!(
                std::env::var_os("CI").is_none(),
                "{test}: `{tool}` is missing, and CI must validate documents with @asyncapi/parser"
            );
            eprintln!("SKIPPED {test}: `{tool}` is not installed, so @asyncapi/parser cannot run");
            return None;
        }
    }
    let out = Command::new("bash")
        .arg(repo_root().join("scripts/asyncapi-parser.sh"))
        .output()
        .expect("run scripts/asyncapi-parser.sh");
    assert!(
        out.status.success(),
        "installing @asyncapi/parser failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let found = PathBuf::from(String::from_utf8(out.stdout).unwrap().trim());
    *dir = Some(found.clone());
    Some(found)
}

/// Runs scripts/asyncapi-validate.mjs on `text`; (exit code, output).
fn validate(parser: &Path, name: &str, text: &str) -> (i32, String) {
    let dir = std::env::temp_dir().join(format!("streams-asyncapi-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let out = Command::new("node")
        .arg(repo_root().join("scripts/asyncapi-validate.mjs"))
        .arg(parser)
        .arg(&file)
        .output()
        .expect("run node");
    let _ = std::fs::remove_file(&file);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn the_asyncapi_parser_accepts_our_documents() {
    let Some(parser) = parser_dir("the_asyncapi_parser_accepts_our_documents") else {
        return;
    };
    let doc = full_document();
    for (name, text) in [
        ("full.yaml", doc.to_yaml().unwrap()),
        ("full.json", doc.to_json()),
        (
            "bare.yaml",
            AsyncApi::new("bare", "0.1.0")
                .build(&registry())
                .unwrap()
                .to_yaml()
                .unwrap(),
        ),
        (
            "empty.yaml",
            AsyncApi::new("empty", "0.1.0")
                .build(&EventRegistry::new())
                .unwrap()
                .to_yaml()
                .unwrap(),
        ),
    ] {
        let (code, out) = validate(&parser, name, &text);
        assert_eq!(code, 0, "{name} rejected:\n{out}\n{text}");
        assert!(out.contains("valid AsyncAPI 3.0.0"), "{out}");
        eprint!("{out}");
    }
}

#[test]
fn the_asyncapi_parser_rejects_a_broken_document() {
    let Some(parser) = parser_dir("the_asyncapi_parser_rejects_a_broken_document") else {
        return;
    };
    // The validation above could not pass a broken document: a message whose payload
    // points nowhere, and a Kafka binding with a field Kafka bindings do not have.
    let mut v: Value = full_document().as_value().clone();
    v["components"]["messages"]["Refunded"]["payload"] =
        json!({"$ref": "#/components/schemas/Nowhere"});
    v["channels"]["payments.captured"]["bindings"]["kafka"]["queue"] = json!("x");
    let (code, out) = validate(&parser, "broken.json", &v.to_string());
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("error:"), "{out}");
}
