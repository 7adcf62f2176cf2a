//! The DynamoDB deduplication store against the AWS emulator (`STREAMS_AWS_ENDPOINT`,
//! default `http://127.0.0.1:4566`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use streams_core::middleware::DedupStore;
use streams_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use streams_dynamodb::{create_table, DynamoDedupStore};

async fn store(table: &str) -> DynamoDedupStore {
    let endpoint = std::env::var("STREAMS_AWS_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty())
        .unwrap_or_else(|| "http://127.0.0.1:4566".to_owned());
    let store = DynamoDedupStore::builder()
        .endpoint(endpoint)
        .region("us-east-1")
        .static_credentials("test", "test")
        .table(table)
        .ttl(Duration::from_secs(600))
        .build()
        .await;
    create_table(store.sdk(), store.table()).await.unwrap();
    // Creating it again is fine.
    create_table(store.sdk(), store.table()).await.unwrap();
    store
}

fn unique(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{nanos}", std::process::id())
}

#[tokio::test]
async fn commit_then_contains_per_worker() {
    let store = store("streams-dedup-store-tests").await;
    let (w1, w2) = (unique("w1"), unique("w2"));
    assert!(!store.contains(&w1, "m-1").await.unwrap());
    store.commit(&w1, "m-1").await.unwrap();
    assert!(store.contains(&w1, "m-1").await.unwrap());
    assert!(!store.contains(&w2, "m-1").await.unwrap());
    // A second commit (another worker instance) is not an error.
    store.commit(&w1, "m-1").await.unwrap();
}

#[tokio::test]
async fn expired_item_is_absent_and_can_be_committed_again() {
    let store = store("streams-dedup-store-tests").await;
    let worker = unique("expired");
    let past = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        - 60;
    // An item DynamoDB has not removed yet although its TTL passed.
    store
        .sdk()
        .put_item()
        .table_name(store.table())
        .item("worker_id", AttributeValue::S(worker.clone()))
        .item("message_id", AttributeValue::S("m-1".into()))
        .item("expiration_time", AttributeValue::N(past.to_string()))
        .send()
        .await
        .unwrap();
    assert!(!store.contains(&worker, "m-1").await.unwrap());
    store.commit(&worker, "m-1").await.unwrap();
    assert!(store.contains(&worker, "m-1").await.unwrap());
    let item = store
        .sdk()
        .get_item()
        .table_name(store.table())
        .key("worker_id", AttributeValue::S(worker))
        .key("message_id", AttributeValue::S("m-1".into()))
        .send()
        .await
        .unwrap()
        .item
        .unwrap();
    let expires: u64 = item["expiration_time"].as_n().unwrap().parse().unwrap();
    assert!(expires > past + 60, "expiry moved forward");
}

#[tokio::test]
async fn table_has_ttl_enabled() {
    let store = store(&unique("streams-dedup-ttl")).await;
    let out = store
        .sdk()
        .describe_time_to_live()
        .table_name(store.table())
        .send()
        .await
        .unwrap();
    let d = out.time_to_live_description.unwrap();
    assert_eq!(d.attribute_name.as_deref(), Some("expiration_time"));
}
