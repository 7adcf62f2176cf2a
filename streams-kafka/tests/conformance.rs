//! The shared conformance suite on Kafka.

mod common;

use std::sync::Arc;
use std::time::Duration;

use streams_conformance::{Capabilities, Harness, TcpProxy};
use streams_core::{Error, ReadTask, Reader, Result, Writer};
use streams_kafka::{create_topic, KafkaConfig, KafkaReader, KafkaWriter};

struct KafkaHarness {
    config: KafkaConfig,
    /// A private broker this harness runs (the reconnect scenario's), removed with it.
    _broker: Option<PrivateBroker>,
}

/// The reconnect scenario's broker: a container with `STREAMS_CONTAINERS=1`, else a tansu
/// process (killed when dropped).
#[allow(dead_code)]
enum PrivateBroker {
    Container(streams_testkit::PrivateService),
    Process(tokio::process::Child),
}

#[streams_core::async_trait]
impl Harness for KafkaHarness {
    fn name(&self) -> &'static str {
        "kafka"
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities::none()
            .with_batches(true)
            // A failed message is retried in place; its key's later messages wait.
            .with_ordered_redelivery(true)
            .with_redelivery(true)
            .with_delayed_redelivery(true)
            .with_persistent(true)
            .with_ordered_per_key(true)
            // A partition has one owner in a group.
            .with_ordered_across_members(true)
            .with_consumer_groups(true)
            .with_reconnect(true)
    }

    async fn writer(&self) -> Result<Arc<dyn Writer>> {
        Ok(Arc::new(KafkaWriter::new(&self.config)?))
    }

    async fn reader(&self) -> Result<Arc<dyn Reader>> {
        Ok(Arc::new(KafkaReader::new(self.config.clone())))
    }

    async fn create_stream(&self, stream: &str) -> Result<()> {
        create_topic(&self.config, stream, 3, 1).await
    }

    fn task(&self, stream: &str, group: &str) -> ReadTask {
        // Group ids unique per topic, so runs and scenarios never share a group.
        ReadTask::new(stream).with_group(format!("{group}-{stream}"))
    }

    fn patience(&self) -> Duration {
        Duration::from_secs(60)
    }

    /// A private broker that listens on one port and advertises the proxy's, so that
    /// every connection, also those to the partition leaders, goes through it: a container
    /// of its own with `STREAMS_CONTAINERS=1`, else a tansu process.
    async fn behind_proxy(&self) -> Result<(Box<dyn Harness>, TcpProxy)> {
        if streams_testkit::containers_enabled() {
            return container_behind_proxy().await;
        }
        let bin = std::env::var("STREAMS_TANSU_BIN").map_err(|_| {
            Error::invalid(
                "kafka harness",
                "neither STREAMS_CONTAINERS=1 nor STREAMS_TANSU_BIN (scripts/test.sh sets one): the reconnect scenario runs a private broker",
            )
        })?;
        let free = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
        };
        let setup = |e: std::io::Error| Error::driver("kafka", "start private broker", false, e);
        let (broker_port, proxy_port) = (free().map_err(setup)?, free().map_err(setup)?);
        let target = std::net::SocketAddr::from(([127, 0, 0, 1], broker_port));
        let proxy = TcpProxy::start_on(([127, 0, 0, 1], proxy_port).into(), target)
            .await
            .map_err(setup)?;
        let dir = std::env::temp_dir().join(common::unique("tansu-proxy"));
        std::fs::create_dir_all(&dir).map_err(setup)?;
        let broker = tokio::process::Command::new(bin)
            .current_dir(&dir)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .args(["--listener-url", &format!("tcp://127.0.0.1:{broker_port}")])
            .args([
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{proxy_port}"),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(setup)?;
        for _ in 0..300 {
            if std::net::TcpStream::connect(target).is_ok() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let config = common::config()
            .with_property("bootstrap.servers", format!("127.0.0.1:{proxy_port}"))
            .with_property("reconnect.backoff.max.ms", "500");
        let harness = KafkaHarness {
            config,
            _broker: Some(PrivateBroker::Process(broker)),
        };
        Ok((Box::new(harness), proxy))
    }
}

/// The reconnect scenario's broker in a container advertising the proxy's port.
async fn container_behind_proxy() -> Result<(Box<dyn Harness>, TcpProxy)> {
    let setup = |e: std::io::Error| Error::driver("kafka", "start proxy", false, e);
    let proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(setup)?;
    let advertised = format!("PLAINTEXT://127.0.0.1:{proxy_port}");
    let broker = streams_testkit::PrivateService::start(
        streams_testkit::Service::Kafka,
        &[("KAFKA_ADVERTISED_LISTENERS", &advertised)],
        &[],
    )
    .await;
    let target: std::net::SocketAddr = broker
        .address()
        .parse()
        .map_err(|e| Error::invalid("kafka harness", format!("broker address: {e}")))?;
    let proxy = TcpProxy::start_on(([127, 0, 0, 1], proxy_port).into(), target)
        .await
        .map_err(setup)?;
    let config = common::config()
        .with_property("bootstrap.servers", format!("127.0.0.1:{proxy_port}"))
        .with_property("reconnect.backoff.max.ms", "500");
    let harness = KafkaHarness {
        config,
        _broker: Some(PrivateBroker::Container(broker)),
    };
    Ok((Box::new(harness), proxy))
}

async fn harness() -> KafkaHarness {
    KafkaHarness {
        config: common::config(),
        _broker: None,
    }
}

streams_conformance::conformance_tests!(harness());
