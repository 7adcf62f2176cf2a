//! The DynamoDB deduplication store against the AWS emulator (`STREAMS_AWS_ENDPOINT`,
//! default `http://127.0.0.1:4566`).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use streams_core::middleware::{Claim, ClaimToken, DedupLayer, DedupStore};
use streams_core::{BoxError, Error, Message};
use streams_dynamodb::aws_sdk_dynamodb::types::AttributeValue;
use streams_dynamodb::{create_table, DynamoDedupStore};
use tower::{Layer, Service, ServiceExt};

const TABLE: &str = "streams-dedup-store-tests";

async fn store(table: &str) -> DynamoDedupStore {
    let endpoint = streams_testkit::aws_endpoint();
    let store = DynamoDedupStore::builder()
        .with_endpoint(endpoint)
        .with_region("us-east-1")
        .with_static_credentials("test", "test")
        .with_table(table)
        .with_ttl(Duration::from_secs(600))
        .connect()
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

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

async fn acquire(store: &DynamoDedupStore, worker: &str, id: &str, lease: Duration) -> ClaimToken {
    match store.claim(worker, id, lease).await.unwrap() {
        Claim::Acquired(token) => token,
        other => panic!("{worker}/{id}: expected a claim, found {other:?}"),
    }
}

async fn item(
    store: &DynamoDedupStore,
    worker: &str,
    id: &str,
) -> Option<std::collections::HashMap<String, AttributeValue>> {
    store
        .sdk()
        .get_item()
        .table_name(store.table())
        .key("worker_id", AttributeValue::S(worker.to_owned()))
        .key("message_id", AttributeValue::S(id.to_owned()))
        .consistent_read(true)
        .send()
        .await
        .unwrap()
        .item
}

/// A handler that counts its calls, sleeps, and fails its first call if asked to.
fn counting(
    calls: &Arc<AtomicU32>,
    sleep: Duration,
    fail_first: bool,
) -> impl Service<
    Message,
    Response = (),
    Error = BoxError,
    Future = BoxFuture<'static, Result<(), BoxError>>,
> + Clone {
    let calls = calls.clone();
    tower::service_fn(move |_m: Message| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        Box::pin(async move {
            tokio::time::sleep(sleep).await;
            if fail_first && n == 0 {
                Err::<(), BoxError>("first try fails".into())
            } else {
                Ok(())
            }
        }) as BoxFuture<'static, Result<(), BoxError>>
    })
}

#[tokio::test]
async fn claim_commit_release_per_worker() {
    let store = store(TABLE).await;
    let (w1, w2) = (unique("w1"), unique("w2"));
    let lease = Duration::from_secs(30);
    let token = acquire(&store, &w1, "m-1", lease).await;
    assert_eq!(store.claim(&w1, "m-1", lease).await.unwrap(), Claim::Busy);
    let claimed = item(&store, &w1, "m-1").await.unwrap();
    assert_eq!(claimed["lease_owner"].as_s().unwrap(), token.as_str());
    store.commit(&w1, "m-1", &token).await.unwrap();
    assert_eq!(store.claim(&w1, "m-1", lease).await.unwrap(), Claim::Done);
    let done = item(&store, &w1, "m-1").await.unwrap();
    assert!(!done.contains_key("lease_owner"));
    let expires: u64 = done["expiration_time"].as_n().unwrap().parse().unwrap();
    assert!(expires >= now_secs() + 590, "lives for the TTL: {expires}");
    // Committing again (a late copy) is not an error and does not move the expiry.
    store.commit(&w1, "m-1", &token).await.unwrap();
    // Another worker deduplicates on its own; a release frees the message at once.
    let other = acquire(&store, &w2, "m-1", lease).await;
    store.release(&w2, "m-1", &other).await.unwrap();
    assert!(item(&store, &w2, "m-1").await.is_none());
    acquire(&store, &w2, "m-1", lease).await;
}

#[tokio::test]
async fn expired_item_is_absent_and_can_be_claimed_again() {
    let store = store(TABLE).await;
    let worker = unique("expired");
    let past = now_secs() - 60;
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
    let token = acquire(&store, &worker, "m-1", Duration::from_secs(30)).await;
    store.commit(&worker, "m-1", &token).await.unwrap();
    let item = item(&store, &worker, "m-1").await.unwrap();
    let expires: u64 = item["expiration_time"].as_n().unwrap().parse().unwrap();
    assert!(expires > past + 60, "expiry moved forward");
}

#[tokio::test]
async fn unexpired_item_without_a_lease_owner_is_done() {
    // As the Go library writes them.
    let store = store(TABLE).await;
    let worker = unique("go");
    store
        .sdk()
        .put_item()
        .table_name(store.table())
        .item("worker_id", AttributeValue::S(worker.clone()))
        .item("message_id", AttributeValue::S("m-1".into()))
        .item(
            "expiration_time",
            AttributeValue::N((now_secs() + 600).to_string()),
        )
        .send()
        .await
        .unwrap();
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.claim(&worker, "m-1", lease).await.unwrap(),
        Claim::Done
    );
}

#[tokio::test]
async fn expired_lease_is_taken_over() {
    let store = store(TABLE).await;
    let worker = unique("lapsed");
    let lapsed = acquire(&store, &worker, "m-1", Duration::from_secs(1)).await;
    assert_eq!(
        store
            .claim(&worker, "m-1", Duration::from_secs(1))
            .await
            .unwrap(),
        Claim::Busy
    );
    // Leases are kept in whole seconds, rounded up.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let current = acquire(&store, &worker, "m-1", Duration::from_secs(60)).await;
    // The lapsed holder can neither release nor commit the new holder's claim.
    store.release(&worker, "m-1", &lapsed).await.unwrap();
    let lease = Duration::from_secs(60);
    assert_eq!(
        store.claim(&worker, "m-1", lease).await.unwrap(),
        Claim::Busy
    );
    let err = store.commit(&worker, "m-1", &lapsed).await.unwrap_err();
    assert!(matches!(err, Error::Invalid { .. }), "{err}");
    store.commit(&worker, "m-1", &current).await.unwrap();
    assert_eq!(
        store.claim(&worker, "m-1", lease).await.unwrap(),
        Claim::Done
    );
    store.release(&worker, "m-1", &current).await.unwrap();
    assert_eq!(
        store.claim(&worker, "m-1", lease).await.unwrap(),
        Claim::Done
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_handled_at_the_same_instant_call_the_handler_once() {
    let store: Arc<dyn DedupStore> = Arc::new(store(TABLE).await);
    let calls = Arc::new(AtomicU32::new(0));
    let svc = DedupLayer::new(unique("instant"), store).layer(counting(
        &calls,
        Duration::from_millis(300),
        false,
    ));
    let msg = Message::new("s", "x");
    let start = Arc::new(tokio::sync::Barrier::new(16));
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (svc, msg, start) = (svc.clone(), msg.clone(), start.clone());
        copies.spawn(async move {
            start.wait().await;
            svc.oneshot(msg).await
        });
    }
    while let Some(done) = copies.join_next().await {
        done.unwrap().unwrap();
    }
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one handler call for 16 copies"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_copy_is_handled_when_the_first_copy_fails() {
    let store: Arc<dyn DedupStore> = Arc::new(store(TABLE).await);
    let calls = Arc::new(AtomicU32::new(0));
    let worker = unique("fails");
    let svc = DedupLayer::new(worker.clone(), store.clone()).layer(counting(
        &calls,
        Duration::from_millis(500),
        true,
    ));
    let msg = Message::new("s", "x");
    let first = tokio::spawn(svc.clone().oneshot(msg.clone()));
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The first copy holds the claim now: this one waits for it.
    let second = tokio::spawn(svc.clone().oneshot(msg.clone()));
    assert!(first.await.unwrap().is_err());
    second.await.unwrap().unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    let lease = Duration::from_secs(30);
    assert_eq!(
        store.claim(&worker, &msg.id, lease).await.unwrap(),
        Claim::Done
    );
}

#[tokio::test]
async fn copy_is_handled_once_a_crashed_holders_lease_lapses() {
    let store: Arc<dyn DedupStore> = Arc::new(store(TABLE).await);
    let calls = Arc::new(AtomicU32::new(0));
    let worker = unique("crashed");
    let msg = Message::new("s", "x");
    // A holder that never commits nor releases.
    let crashed = store
        .claim(&worker, &msg.id, Duration::from_secs(1))
        .await
        .unwrap();
    assert!(matches!(crashed, Claim::Acquired(_)));
    let svc = DedupLayer::new(worker, store)
        .with_lease(Duration::from_secs(5))
        .layer(counting(&calls, Duration::ZERO, false));
    svc.oneshot(msg).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 1);
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
