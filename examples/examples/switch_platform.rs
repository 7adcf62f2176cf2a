//! The same service on any platform: the platform comes from `STREAMS_URL`.
//!
//! ```text
//! cargo run -p streams-examples --example switch_platform                      # memory://
//! STREAMS_URL='kafka://localhost:9092?group=demo' \
//!     cargo run -p streams-examples --features streams/kafka --example switch_platform
//! STREAMS_URL='sqs://127.0.0.1:4566?region=us-east-1' AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test \
//!     cargo run -p streams-examples --features streams/sqs --example switch_platform
//! ```
//!
//! The stream (topic or queue) must exist on platforms that need it created first.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use streams::{BoxError, Event, Message};
use tokio::sync::mpsc;

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Pinged {
    seq: u32,
}

impl Event for Pinged {}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt().with_env_filter("warn").init();
    let conn = streams::connect_from_env().await?;
    println!("platform: {}", conn.platform());

    let mut bus = conn.event_bus()?;
    bus.register::<Pinged>("demo-pings");
    let (tx, mut rx) = mpsc::unbounded_channel();
    bus.router().subscribe_typed(move |p: Pinged, m: Message| {
        let tx = tx.clone();
        async move { tx.send((p.seq, m.id)).map_err(BoxError::from) }
    })?;
    // Attaches before it returns: the in-process bus receives everything published
    // from here on; a new Kafka group starts at the earliest offset and an SQS queue
    // keeps what arrives before the first receive.
    bus.start().await?;
    for seq in 0..3 {
        bus.publish(&Pinged { seq }).await?;
    }
    for _ in 0..3 {
        let (seq, id) = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await?
            .ok_or("subscriber stopped")?;
        println!("handled ping {seq} (message {id})");
    }
    bus.shutdown(Duration::from_secs(10)).await?;
    Ok(())
}
