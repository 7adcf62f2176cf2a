//! `streams asyncapi` and `streams schema check`, driven through the binary.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::streams;
use serde_json::{json, Value};

const LIMIT: Duration = Duration::from_secs(60);

/// A document as a program writes it (no server), with one event.
fn program_document(cents_type: &str, states: &[&str]) -> Value {
    json!({
        "asyncapi": "3.0.0",
        "info": {"title": "payments", "version": "1.0.0"},
        "defaultContentType": "application/json",
        "channels": {"payments.created": {"address": "payments.created", "messages": {
            "PaymentCreated": {"$ref": "#/components/messages/PaymentCreated"}}}},
        "components": {
            "messages": {"PaymentCreated": {
                "name": "PaymentCreated",
                "contentType": "application/json",
                "payload": {"$ref": "#/components/schemas/PaymentCreated"}}},
            "schemas": {"PaymentCreated": {
                "type": "object",
                "properties": {
                    "payment_id": {"type": "string"},
                    "cents": {"type": cents_type},
                    "state": {"type": "string", "enum": states},
                },
                "required": ["payment_id", "cents"],
            }},
        },
    })
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("streams-cli-contract-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn asyncapi_adds_the_server_of_the_url() {
    let doc = program_document("integer", &["open", "paid"]).to_string();
    let file = temp_file("program.json", &doc);
    let run = streams(
        &[
            "--url",
            "kafka://user:hunter2@broker-1:9092,broker-2:9092",
            "asyncapi",
            file.to_str().unwrap(),
            "--format",
            "json",
        ],
        "",
        LIMIT,
    )
    .await
    .ok();
    let v: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["servers"]["kafka"]["host"], "broker-1:9092");
    assert_eq!(
        v["channels"]["payments.created"]["bindings"]["kafka"]["topic"],
        "payments.created"
    );
    let headers = &v["components"]["messages"]["PaymentCreated"]["headers"]["properties"];
    assert!(headers.get("message_id").is_some(), "{headers}");
    assert!(!run.stdout.contains("hunter2"), "{run:#?}");
    assert!(run.stderr.contains("added server `kafka`"), "{run:#?}");

    // From stdin, YAML out, a named server.
    let run = streams(
        &[
            "--url",
            "sqs://127.0.0.1:4566?region=eu-west-1",
            "asyncapi",
            "--server",
            "production",
        ],
        &doc,
        LIMIT,
    )
    .await
    .ok();
    assert!(run.stdout.contains("production:"), "{run:#?}");
    assert!(run.stdout.contains("name: payments-created"), "{run:#?}");

    // memory:// (the default): the document as it is, and a note saying why.
    let run = streams(&["asyncapi", "-"], &doc, LIMIT).await.ok();
    assert!(!run.stdout.contains("servers:"), "{run:#?}");
    assert!(run.stderr.contains("no server added"), "{run:#?}");
}

#[tokio::test]
async fn asyncapi_bad_input_is_one_line() {
    for (args, stdin, says) in [
        (
            &["asyncapi"][..],
            "openapi: 3.1.0\n",
            "not an AsyncAPI document",
        ),
        (&["asyncapi"], "{ nope", "neither JSON nor YAML"),
        (
            &["asyncapi", "/nonexistent/doc.yaml"],
            "",
            "cannot read /nonexistent/doc.yaml",
        ),
        (
            &["--url", "postgres://postgres@127.0.0.1/test", "asyncapi"],
            "asyncapi: 3.0.0\ninfo: {title: t, version: '1'}\n",
            "outbox",
        ),
    ] {
        let run = streams(args, stdin, LIMIT).await;
        assert_eq!(run.code, 1, "{args:?}: {run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(says), "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "{args:?}: {run:#?}");
    }
}

#[tokio::test]
async fn schema_check_exit_codes_and_lines() {
    let v1 = temp_file(
        "v1.json",
        &program_document("integer", &["open", "paid"]).to_string(),
    );
    let v2 = temp_file(
        "v2.json",
        &program_document("string", &["open"]).to_string(),
    );
    let v1b = temp_file(
        "v1b.yaml",
        &format!(
            "# same, in YAML\n{}",
            program_document("integer", &["open", "paid", "void"])
        ),
    );

    let run = streams(
        &[
            "schema",
            "check",
            v1.to_str().unwrap(),
            v2.to_str().unwrap(),
        ],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            "PaymentCreated: cents: type-changed: integer -> string",
            "PaymentCreated: state: enum-value-removed: \"paid\" is no longer allowed",
        ],
        "{run:#?}"
    );
    assert!(run.stderr.contains("2 breaking change(s)"), "{run:#?}");

    // An added enum value passes.
    let run = streams(
        &[
            "schema",
            "check",
            v1.to_str().unwrap(),
            v1b.to_str().unwrap(),
        ],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 0, "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    assert!(run.stderr.contains("compatible"), "{run:#?}");

    // Two JSON Schemas; the event is named by NEW's file.
    let old = temp_file(
        "order.v1.json",
        r#"{"type":"object","properties":{"id":{"type":"string"}}}"#,
    );
    let new = temp_file("order.json", r#"{"type":"object","properties":{}}"#);
    let run = streams(
        &[
            "schema",
            "check",
            old.to_str().unwrap(),
            new.to_str().unwrap(),
        ],
        "",
        LIMIT,
    )
    .await;
    assert_eq!(run.code, 1, "{run:#?}");
    assert_eq!(
        run.stdout.trim(),
        "order: id: field-removed: the field is gone (renamed counts as removed)"
    );
}

#[tokio::test]
async fn schema_check_unreadable_input_exits_2() {
    let ok = temp_file("ok.json", r#"{"type":"object"}"#);
    let bad = temp_file("bad.json", "{ nope");
    let doc = temp_file("doc.json", &program_document("integer", &[]).to_string());
    for (old, new, says) in [
        (
            bad.to_str().unwrap(),
            ok.to_str().unwrap(),
            "bad.json: neither JSON nor YAML",
        ),
        (
            ok.to_str().unwrap(),
            "/nonexistent.json",
            "cannot read /nonexistent.json",
        ),
        (
            doc.to_str().unwrap(),
            ok.to_str().unwrap(),
            "a JSON Schema: compare two documents or two schemas",
        ),
    ] {
        let run = streams(&["schema", "check", old, new], "", LIMIT).await;
        assert_eq!(run.code, 2, "{run:#?}");
        assert_eq!(run.stderr.lines().count(), 1, "{run:#?}");
        assert!(run.stderr.starts_with("streams: error: "), "{run:#?}");
        assert!(run.stderr.contains(says), "{run:#?}");
    }
    let run = streams(&["schema", "check", "only-one.json"], "", LIMIT).await;
    assert_eq!(run.code, 2, "{run:#?}");
}

/// The headers documents list are the ones the drivers set.
#[test]
fn documented_headers_are_the_drivers_constants() {
    let names = |p: &str| -> Vec<&str> {
        streams_asyncapi::driver_headers(p)
            .iter()
            .map(|(n, _)| *n)
            .collect()
    };
    #[cfg(feature = "kafka")]
    assert_eq!(
        names("kafka"),
        [
            streams::kafka::HEADER_MESSAGE_ID,
            streams::kafka::HEADER_CONTENT_TYPE
        ]
    );
    #[cfg(feature = "sqs")]
    {
        use streams::sqs::*;
        assert_eq!(
            names("sqs"),
            [
                ATTR_MESSAGE_ID,
                ATTR_STREAM_NAME,
                ATTR_STREAM_KEY,
                ATTR_CONTENT_TYPE,
                ATTR_MESSAGE_TIME,
                ATTR_BODY_ENCODING,
                ATTR_HEADERS
            ]
        );
        assert_eq!(names("sns"), names("sqs"));
        assert_eq!(queue_name("a.b.fifo"), "a-b.fifo");
    }
    #[cfg(feature = "nats")]
    assert_eq!(
        names("nats"),
        [
            "Nats-Msg-Id",
            streams::nats::HEADER_KEY,
            streams::nats::HEADER_CONTENT_TYPE,
            streams::nats::HEADER_TIME
        ]
    );
    #[cfg(feature = "redis")]
    assert_eq!(
        names("redis"),
        [
            streams::redis::FIELD_ID,
            streams::redis::FIELD_KEY,
            streams::redis::FIELD_CONTENT_TYPE,
            streams::redis::FIELD_TIME
        ]
    );
    #[cfg(feature = "amqp")]
    assert_eq!(
        names("amqp"),
        [streams::amqp::HEADER_KEY, streams::amqp::HEADER_TIME]
    );
    let _ = names;
}
