//! Redis Streams against the suite's server (streams-testkit: a container of this test
//! binary, or the native one): what the conformance suite does not cover. The fault tests
//! are in faults.rs.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use streams_core::{handler, BoxError, CancellationToken, Message, ReadTask, Reader, Writer};
use streams_redis::{RedisClient, RedisConfig, RedisReader, RedisWriter, HEADER_DELIVERED};
use tokio::sync::mpsc;

fn url() -> String {
    streams_testkit::redis_url()
}

fn unique(prefix: &str) -> String {
    format!("{prefix}.{}", uuid::Uuid::new_v4().simple())
}

async fn client(config: RedisConfig) -> RedisClient {
    RedisClient::connect(config).await.expect("Redis")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn collecting() -> (streams_core::Handler, mpsc::UnboundedReceiver<Message>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let h = handler(tower::service_fn(move |m: Message| {
        let tx = tx.clone();
        async move { tx.send(m).map_err(BoxError::from) }
    }));
    (h, rx)
}

async fn len(c: &RedisClient, stream: &str) -> i64 {
    redis::cmd("XLEN")
        .arg(stream)
        .query_async(&mut c.connection())
        .await
        .unwrap()
}

#[tokio::test]
async fn nothing_listening_fails_within_the_connect_timeout() {
    let started = Instant::now();
    let err = RedisClient::connect(
        RedisConfig::new(format!("redis://127.0.0.1:{}", free_port()))
            .with_connect_timeout(Duration::from_millis(500)),
    )
    .await
    .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert!(err.is_retryable(), "{err}");
    let line = err.to_string();
    assert!(
        line.starts_with("redis: connect failed") && !line.contains('\n'),
        "{line}"
    );
    assert!(RedisClient::connect(RedisConfig::new("http://nope"))
        .await
        .is_err());
}

#[tokio::test]
async fn a_key_of_another_type_is_named_and_not_retryable() {
    let c = client(RedisConfig::new(url())).await;
    let stream = unique("wrongtype");
    let _: () = redis::cmd("SET")
        .arg(&stream)
        .arg("a string")
        .query_async(&mut c.connection())
        .await
        .unwrap();
    let err = RedisWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains(&stream),
        "{err}"
    );
    let err = RedisReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap_err();
    assert!(
        !err.is_retryable() && err.to_string().contains("WRONGTYPE"),
        "{err}"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut c.connection())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_group_a_reader_starts_where_it_is_told() {
    let c = client(RedisConfig::new(url()).with_block(Duration::from_millis(200))).await;
    let stream = unique("start");
    let writer = RedisWriter::new(c.clone());
    writer
        .write(vec![Message::new(&stream, "old")])
        .await
        .unwrap();
    let reader = RedisReader::new(c.clone());
    // `$` (the default) is resolved at subscribe: what comes after is read.
    let from_now = reader.subscribe(ReadTask::new(&stream)).await.unwrap();
    let from_start = reader
        .subscribe(ReadTask::new(&stream).with_arg("start", "0"))
        .await
        .unwrap();
    writer
        .write(vec![Message::new(&stream, "new")])
        .await
        .unwrap();
    let cancel = CancellationToken::new();
    let (h1, mut rx1) = collecting();
    let (h2, mut rx2) = collecting();
    let runs = [
        tokio::spawn(from_now.run(h1, cancel.clone())),
        tokio::spawn(from_start.run(h2, cancel.clone())),
    ];
    let next = |rx: &mut mpsc::UnboundedReceiver<Message>| {
        let got = rx.try_recv().ok();
        got.map(|m| String::from_utf8_lossy(&m.data).into_owned())
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(next(&mut rx1).as_deref(), Some("new"));
    assert_eq!(next(&mut rx1), None);
    assert_eq!(next(&mut rx2).as_deref(), Some("old"));
    assert_eq!(next(&mut rx2).as_deref(), Some("new"));
    cancel.cancel();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let err = reader
        .subscribe(ReadTask::new(&stream).with_arg("start", "yesterday"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("`start`"), "{err}");
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut c.connection())
        .await
        .unwrap();
}

#[tokio::test]
async fn trimming_only_when_asked() {
    let stream = unique("trim");
    let plain = client(RedisConfig::new(url())).await;
    let batch = |n: usize| {
        (0..n)
            .map(|i| Message::new(&stream, format!("{i}")))
            .collect::<Vec<_>>()
    };
    RedisWriter::new(plain.clone())
        .write(batch(300))
        .await
        .unwrap();
    assert_eq!(
        len(&plain, &stream).await,
        300,
        "nothing trimmed by default"
    );
    let trimming = client(RedisConfig::new(url()).with_max_len(100)).await;
    RedisWriter::new(trimming).write(batch(300)).await.unwrap();
    let n = len(&plain, &stream).await;
    assert!(
        (100..=200).contains(&n),
        "about 100 kept (~ trims whole nodes of 100 entries): {n}"
    );
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut plain.connection())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_killed_mid_stream_has_its_entries_claimed_by_another() {
    let c = client(
        RedisConfig::new(url())
            .with_claim_idle(Duration::from_secs(1))
            .with_block(Duration::from_millis(200)),
    )
    .await;
    let stream = unique("claim");
    let reader = RedisReader::new(c.clone());
    // Member A takes entries and never finishes; its run is aborted (a crash).
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let stuck = handler(tower::service_fn(move |_m: Message| {
        s.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<(), BoxError>>()
    }));
    let a = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let a = tokio::spawn(a.run(stuck, CancellationToken::new()));
    let sent: Vec<Message> = (0..5)
        .map(|i| Message::new(&stream, format!("{i}")))
        .collect();
    RedisWriter::new(c.clone())
        .write(sent.clone())
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while started.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(started.load(Ordering::SeqCst) > 0, "member A took an entry");
    a.abort();
    let _ = a.await;
    // Member B of the same group claims what A left pending.
    let (h, mut rx) = collecting();
    let cancel = CancellationToken::new();
    let b = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let b = tokio::spawn(b.run(h, cancel.clone()));
    let mut got = HashSet::new();
    let mut redelivered = 0;
    while got.len() < sent.len() {
        let m = tokio::time::timeout(Duration::from_secs(15), rx.recv())
            .await
            .expect("every entry arrives")
            .unwrap();
        if m.headers[HEADER_DELIVERED] != "1" {
            redelivered += 1;
        }
        got.insert(m.id);
    }
    assert!(redelivered > 0, "what A held came back claimed");
    assert_eq!(
        got,
        sent.iter().map(|m| m.id.clone()).collect::<HashSet<_>>()
    );
    cancel.cancel();
    b.await.unwrap().unwrap();
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut c.connection())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_handler_keeps_its_entry() {
    let c = client(
        RedisConfig::new(url())
            .with_claim_idle(Duration::from_millis(600))
            .with_block(Duration::from_millis(200)),
    )
    .await;
    let stream = unique("long");
    let calls = Arc::new(AtomicUsize::new(0));
    let k = calls.clone();
    let slow = handler(tower::service_fn(move |_m: Message| {
        let k = k.clone();
        async move {
            k.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_secs(3)).await;
            Ok::<_, BoxError>(())
        }
    }));
    let reader = RedisReader::new(c.clone());
    let cancel = CancellationToken::new();
    let a = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let b = reader
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let runs = [
        tokio::spawn(a.run(slow.clone(), cancel.clone())),
        tokio::spawn(b.run(slow, cancel.clone())),
    ];
    RedisWriter::new(c.clone())
        .write(vec![Message::new(&stream, "slow")])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "3 s handler, 0.6 s claim idle: handled once"
    );
    cancel.cancel();
    for r in runs {
        r.await.unwrap().unwrap();
    }
    let _: i64 = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut c.connection())
        .await
        .unwrap();
}

/// When each delivery came, and its delivery attempt.
type Seen = Arc<Mutex<Vec<(Instant, Option<u32>)>>>;

/// Fails deliveries before `until` with `delay`, recording each.
fn delaying(delay: Duration, until: u32, seen: Seen) -> streams_core::Handler {
    handler(tower::service_fn(move |m: Message| {
        let seen = seen.clone();
        async move {
            let n = m.delivery_attempt();
            seen.lock().unwrap().push((Instant::now(), n));
            if n.unwrap_or(1) < until {
                Err::<(), BoxError>(streams_core::RetryAfter::new(delay, "later").into())
            } else {
                Ok(())
            }
        }
    }))
}

async fn wait_for(seen: &Seen, n: usize, within: Duration) {
    let deadline = Instant::now() + within;
    while seen.lock().unwrap().len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delay_longer_than_the_claim_idle_time_is_kept_and_shutdown_loses_nothing() {
    // Claimed as idle after 300 ms, yet delayed for 2 s: the claim must leave it alone,
    // and a restart in between must bring it back after the delay, not before.
    let config = RedisConfig::new(url()).with_claim_idle(Duration::from_millis(300));
    let c = client(config).await;
    let stream = unique("delay");
    let delay = Duration::from_secs(2);
    let seen: Seen = Arc::default();
    let task = ReadTask::new(&stream).with_group("g");
    let cancel = CancellationToken::new();
    let sub = RedisReader::new(c.clone())
        .subscribe(task.clone())
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(delaying(delay, 3, seen.clone()), cancel.clone()));
    RedisWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    wait_for(&seen, 1, Duration::from_secs(10)).await;
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("shutdown does not wait for the delay")
        .unwrap()
        .unwrap();
    // Another member meanwhile: it claims idle entries every 150 ms.
    let cancel = CancellationToken::new();
    let sub = RedisReader::new(c.clone()).subscribe(task).await.unwrap();
    let run = tokio::spawn(sub.run(delaying(delay, 3, seen.clone()), cancel.clone()));
    wait_for(&seen, 3, Duration::from_secs(15)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)],
        "each delivery once, counted"
    );
    for w in seen.windows(2) {
        let away = w[1].0 - w[0].0;
        assert!(away >= delay, "back after {away:?}");
        assert!(away < delay + Duration::from_secs(3), "back after {away:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_delay_comes_back_at_once_and_without_a_group_nothing_comes_back() {
    let c = client(RedisConfig::new(url())).await;
    let stream = unique("delay-zero");
    let seen: Seen = Arc::default();
    let cancel = CancellationToken::new();
    let sub = RedisReader::new(c.clone())
        .subscribe(ReadTask::new(&stream).with_group("g"))
        .await
        .unwrap();
    let run = tokio::spawn(sub.run(delaying(Duration::ZERO, 2, seen.clone()), cancel.clone()));
    // Without a group: no attempt number, so the handler's delay goes nowhere.
    let plain_seen: Seen = Arc::default();
    let plain = RedisReader::new(c.clone())
        .subscribe(ReadTask::new(&stream))
        .await
        .unwrap();
    let plain_run = tokio::spawn(plain.run(
        delaying(Duration::ZERO, 2, plain_seen.clone()),
        cancel.clone(),
    ));
    RedisWriter::new(c.clone())
        .write(vec![Message::new(&stream, "x")])
        .await
        .unwrap();
    wait_for(&seen, 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    cancel.cancel();
    run.await.unwrap().unwrap();
    plain_run.await.unwrap().unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );
    assert!(seen[1].0 - seen[0].0 < Duration::from_secs(3));
    let plain_seen = plain_seen.lock().unwrap().clone();
    assert_eq!(
        plain_seen.iter().map(|(_, n)| *n).collect::<Vec<_>>(),
        [None],
        "without a group, read once and never again"
    );
}
