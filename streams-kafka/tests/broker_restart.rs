//! The broker is killed and restarted mid-stream; nothing is lost.
//!
//! Needs the tansu binary in `STREAMS_TANSU_BIN` (scripts/test.sh sets it): the test runs
//! a private tansu broker with its SQLite storage engine, which keeps records and
//! committed offsets across a restart, on a port of its own.

#![allow(clippy::print_stderr)]

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streams_core::{handler, BoxError, Message, ReadTask, Writer};
use streams_kafka::{create_topic, KafkaConfig, KafkaWriter};
use tokio::process::{Child, Command};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

async fn start_broker(bin: &str, dir: &Path, port: u16) -> Child {
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("broker.log"))
        .expect("log file");
    let child = Command::new(bin)
        .current_dir(dir)
        .args(["broker", "--storage-engine", "sqlite://restart.db"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("start tansu");
    for _ in 0..300 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return child;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("tansu did not listen on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let Ok(bin) = std::env::var("STREAMS_TANSU_BIN") else {
        eprintln!("SKIPPED broker_restart_mid_stream_loses_nothing: STREAMS_TANSU_BIN is not set (scripts/test.sh sets it)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("streams-restart-{}", common::unique("dir")));
    std::fs::create_dir_all(&dir).expect("dir");
    let port = free_port();
    let mut broker = start_broker(&bin, &dir, port).await;
    let config = KafkaConfig::new(format!("127.0.0.1:{port}"))
        .with_property("session.timeout.ms", "6000")
        .with_property("heartbeat.interval.ms", "1000")
        .with_property("reconnect.backoff.max.ms", "500")
        .with_retry_backoff(Duration::from_millis(20), Duration::from_millis(200));
    let topic = common::unique("restart");
    create_topic(&config, &topic, 2, 1).await.expect("topic");

    let handled = Arc::new(Mutex::new(HashSet::new()));
    let h = handled.clone();
    let svc = handler(tower::service_fn(move |m: Message| {
        h.lock().unwrap().insert(m.id);
        std::future::ready(Ok::<_, BoxError>(()))
    }));
    let (cancel, reader) = common::start(
        config.clone(),
        ReadTask::new(&topic).with_group(format!("g-{topic}")),
        svc,
    );

    let writer = Arc::new(KafkaWriter::new(&config).expect("writer"));
    let first = common::batch(&topic, 50, "before");
    writer
        .write(first.clone())
        .await
        .expect("write before restart");
    let mut sent: HashSet<String> = first.iter().map(|m| m.id.clone()).collect();

    broker.kill().await.expect("kill broker");
    // Written while the broker is down: the writer keeps retrying until it is back.
    let second = common::batch(&topic, 50, "during");
    sent.extend(second.iter().map(|m| m.id.clone()));
    let w = writer.clone();
    let pending = tokio::spawn(async move {
        for m in second {
            w.write(vec![m]).await?;
        }
        Ok::<_, streams_core::Error>(())
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !pending.is_finished(),
        "writes wait for the broker while it is down"
    );
    let _broker = start_broker(&bin, &dir, port).await;
    tokio::time::timeout(Duration::from_secs(120), pending)
        .await
        .expect("writes finish after the restart")
        .expect("join")
        .expect("writes succeed");

    for _ in 0..1200 {
        if sent.is_subset(&handled.lock().unwrap()) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cancel.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
    let handled = handled.lock().unwrap().clone();
    let missing = sent.difference(&handled).count();
    assert_eq!(
        missing,
        0,
        "{missing} of {} messages lost across the broker restart",
        sent.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
