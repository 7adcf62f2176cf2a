//! The services of the integration tests, found in one place.
//!
//! Each service has a function giving its address (`postgres_url()`, `mysql_url()`,
//! `kafka_brokers()`, `aws_endpoint()`, `nats_servers()`, `redis_url()`, `amqp_url()`),
//! chosen in this order:
//!
//! 1. the service's variable when set (`STREAMS_POSTGRES_URL`, `STREAMS_MYSQL_URL`,
//!    `STREAMS_KAFKA_BROKERS`, `STREAMS_AWS_ENDPOINT`, `STREAMS_NATS_SERVERS`,
//!    `STREAMS_REDIS_URL`, `STREAMS_AMQP_URL`): a service you run yourself;
//! 2. with `STREAMS_CONTAINERS=1` (what `scripts/test.sh` sets when a Docker engine
//!    answers), a container started through `testcontainers` the first time a test of
//!    the binary asks, shared by the binary's tests (one container per suite) and removed
//!    when the binary exits, however it exits;
//! 3. otherwise the native service on its usual loopback port.
//!
//! Fault tests start a [`PrivateService`] of their own, which they may stop, start, pause
//! and unpause, and run commands in; it is removed when dropped, also when the test fails.
//!
//! Images come from `STREAMS_IMAGE_KAFKA`, `STREAMS_IMAGE_AWS`, `STREAMS_IMAGE_POSTGRES`,
//! `STREAMS_IMAGE_MARIADB`, `STREAMS_IMAGE_NATS`, `STREAMS_IMAGE_REDIS` and
//! `STREAMS_IMAGE_RABBITMQ`, defaulting to the official images named in
//! `images/images.env`; `scripts/images.sh` builds stand-ins on a machine without a
//! registry. A stand-in speaks its official image's interface (ports, variables,
//! readiness lines), so one configuration here starts either. Ports are published on
//! 127.0.0.1 only.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{CmdWaitFor, ContainerPort, ExecCommand, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, Image, ImageExt};
use testcontainers_modules::localstack::LocalStack;
use testcontainers_modules::mariadb::Mariadb;
use testcontainers_modules::nats::Nats;
use testcontainers_modules::postgres::Postgres;
use testcontainers_modules::redis::Redis;

/// The official images, in one place with docker-compose.yml (read through `.env`).
const IMAGES: &str = include_str!("../../images/images.env");

/// How long a container may take to say it is ready.
const STARTUP: Duration = Duration::from_secs(180);

/// A service the integration tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// A Kafka API broker (Apache Kafka, or tansu standing in for it).
    Kafka,
    /// The AWS emulator for SQS, SNS and DynamoDB (LocalStack, or moto standing in).
    Aws,
    /// PostgreSQL.
    Postgres,
    /// MariaDB (the MySQL dialect).
    MariaDb,
    /// NATS with JetStream, its store in the container (`-js -sd /data`).
    Nats,
    /// Redis.
    Redis,
    /// RabbitMQ, user guest/guest.
    RabbitMq,
}

impl Service {
    const ALL: [Service; 7] = [
        Service::Kafka,
        Service::Aws,
        Service::Postgres,
        Service::MariaDb,
        Service::Nats,
        Service::Redis,
        Service::RabbitMq,
    ];

    fn index(self) -> usize {
        Service::ALL
            .iter()
            .position(|s| *s == self)
            .expect("listed")
    }

    /// The variable naming this service's image.
    pub fn image_variable(self) -> &'static str {
        match self {
            Service::Kafka => "STREAMS_IMAGE_KAFKA",
            Service::Aws => "STREAMS_IMAGE_AWS",
            Service::Postgres => "STREAMS_IMAGE_POSTGRES",
            Service::MariaDb => "STREAMS_IMAGE_MARIADB",
            Service::Nats => "STREAMS_IMAGE_NATS",
            Service::Redis => "STREAMS_IMAGE_REDIS",
            Service::RabbitMq => "STREAMS_IMAGE_RABBITMQ",
        }
    }

    /// The variable giving this service's address, when it runs outside the tests.
    pub fn address_variable(self) -> &'static str {
        match self {
            Service::Kafka => "STREAMS_KAFKA_BROKERS",
            Service::Aws => "STREAMS_AWS_ENDPOINT",
            Service::Postgres => "STREAMS_POSTGRES_URL",
            Service::MariaDb => "STREAMS_MYSQL_URL",
            Service::Nats => "STREAMS_NATS_SERVERS",
            Service::Redis => "STREAMS_REDIS_URL",
            Service::RabbitMq => "STREAMS_AMQP_URL",
        }
    }

    /// The image this service runs from: its variable, else the official image.
    pub fn image(self) -> String {
        if let Ok(image) = std::env::var(self.image_variable()) {
            if !image.is_empty() {
                return image;
            }
        }
        let prefix = format!("{}=", self.image_variable());
        IMAGES
            .lines()
            .find_map(|line| line.trim().strip_prefix(prefix.as_str()))
            .unwrap_or_else(|| panic!("images/images.env names no {}", self.image_variable()))
            .trim()
            .to_owned()
    }

    /// The port the service listens on inside its container.
    fn container_port(self) -> u16 {
        match self {
            Service::Kafka => 9092,
            Service::Aws => 4566,
            Service::Postgres => 5432,
            Service::MariaDb => 3306,
            Service::Nats => 4222,
            Service::Redis => 6379,
            Service::RabbitMq => 5672,
        }
    }

    /// The line the service logs (on stdout or stderr) each time it is ready, also after a
    /// restart: the official image's and its stand-in's.
    fn ready_line(self) -> &'static str {
        match self {
            Service::Kafka => "Kafka Server started",
            Service::Aws => "Ready.",
            Service::Postgres => "database system is ready to accept connections",
            Service::MariaDb => "ready for connections",
            Service::Nats => "Server is ready",
            Service::Redis => "Ready to accept connections",
            Service::RabbitMq => "Server startup complete",
        }
    }

    /// The address of this service listening on 127.0.0.1:`port`.
    fn address(self, port: u16) -> String {
        match self {
            Service::Kafka => format!("127.0.0.1:{port}"),
            Service::Aws => format!("http://127.0.0.1:{port}"),
            Service::Postgres => format!("postgres://postgres@127.0.0.1:{port}/test"),
            Service::MariaDb => format!("mysql://root@127.0.0.1:{port}/test"),
            Service::Nats => format!("127.0.0.1:{port}"),
            Service::Redis => format!("redis://127.0.0.1:{port}"),
            Service::RabbitMq => format!("amqp://guest:guest@127.0.0.1:{port}/%2f"),
        }
    }

    /// The native service's address (the docker-compose ports).
    fn native_address(self) -> String {
        match self {
            Service::Kafka => "localhost:9092".to_owned(),
            _ => self.address(self.container_port()),
        }
    }
}

/// Whether the tests start their services in containers (`STREAMS_CONTAINERS=1`).
pub fn containers_enabled() -> bool {
    matches!(
        std::env::var("STREAMS_CONTAINERS").as_deref(),
        Ok("1") | Ok("true") | Ok("yes")
    )
}

/// PostgreSQL's URL (`postgres://postgres@127.0.0.1:PORT/test`); see the crate docs.
pub fn postgres_url() -> String {
    address(Service::Postgres)
}

/// MariaDB's URL (`mysql://root@127.0.0.1:PORT/test`); see the crate docs.
pub fn mysql_url() -> String {
    address(Service::MariaDb)
}

/// The Kafka bootstrap servers (`127.0.0.1:PORT`); see the crate docs.
pub fn kafka_brokers() -> String {
    address(Service::Kafka)
}

/// The AWS emulator's endpoint (`http://127.0.0.1:PORT`); see the crate docs.
pub fn aws_endpoint() -> String {
    address(Service::Aws)
}

/// The NATS servers (`127.0.0.1:PORT`); see the crate docs.
pub fn nats_servers() -> String {
    address(Service::Nats)
}

/// Redis's URL (`redis://127.0.0.1:PORT`); see the crate docs.
pub fn redis_url() -> String {
    address(Service::Redis)
}

/// RabbitMQ's URL (`amqp://guest:guest@127.0.0.1:PORT/%2f`); see the crate docs.
pub fn amqp_url() -> String {
    address(Service::RabbitMq)
}

/// The address of `service` for this test process (see the crate docs for the order).
///
/// # Panics
///
/// When containers are enabled and the container does not start: the message names the
/// image and Docker's error.
pub fn address(service: Service) -> String {
    if let Ok(address) = std::env::var(service.address_variable()) {
        if !address.is_empty() {
            return address;
        }
    }
    if containers_enabled() {
        return shared(service).clone();
    }
    service.native_address()
}

/// The shared containers of this process, one per service, started on first use.
fn shared(service: Service) -> &'static String {
    static SHARED: [OnceLock<String>; Service::ALL.len()] =
        [const { OnceLock::new() }; Service::ALL.len()];
    SHARED[service.index()].get_or_init(|| {
        let (tx, rx) = mpsc::channel();
        // The container lives on a thread of its own with its own runtime, so it outlives
        // the test (and the test's runtime) that started it. It is never dropped: the
        // watchdog removes it when the process exits.
        std::thread::Builder::new()
            .name(format!("streams-testkit-{service:?}"))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("a runtime for the shared container");
                runtime.block_on(async move {
                    match start(service, &[], &[]).await {
                        Ok((container, port)) => {
                            let _ = tx.send(Ok(service.address(port)));
                            std::future::pending::<()>().await;
                            drop(container);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })
            })
            .expect("spawn the container thread");
        match rx.recv() {
            Ok(Ok(address)) => address,
            Ok(Err(e)) => panic!("{e}"),
            Err(_) => panic!("the thread starting the {service:?} container died"),
        }
    })
}

/// A container of one test's own, for fault tests: stop and start it (a restart that
/// keeps its data), pause and unpause it (a network partition: connections stay open,
/// nothing answers), run a command in it. Removed when dropped, also when the test panics.
pub struct PrivateService {
    service: Service,
    port: u16,
    container: Box<dyn Control>,
}

impl std::fmt::Debug for PrivateService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrivateService")
            .field("service", &self.service)
            .field("address", &self.address())
            .field("container", &self.container.id())
            .finish()
    }
}

impl PrivateService {
    /// Starts a container for `service` with extra environment variables (such as
    /// `TANSU_STORAGE_ENGINE` for the tansu stand-in) and, when `args` is not empty, those
    /// arguments instead of the image's command (such as `--appendonly yes` for Redis),
    /// waiting until it is ready.
    ///
    /// # Panics
    ///
    /// When the container does not start: the message names the image and Docker's error.
    pub async fn start(service: Service, env: &[(&str, &str)], args: &[&str]) -> PrivateService {
        match start(service, env, args).await {
            Ok((container, port)) => PrivateService {
                service,
                port,
                container,
            },
            Err(e) => panic!("{e}"),
        }
    }

    /// The service's address, the same across stops and starts.
    pub fn address(&self) -> String {
        self.service.address(self.port)
    }

    /// The container's id.
    pub fn id(&self) -> &str {
        self.container.id()
    }

    /// Stops the container (SIGTERM, then SIGKILL after `grace`); its data stays.
    pub async fn stop(&self, grace: Duration) {
        let seconds = i32::try_from(grace.as_secs()).unwrap_or(i32::MAX);
        self.container.stop(seconds).await;
    }

    /// Kills the container's processes at once with SIGKILL (a crash: no shutdown runs);
    /// its data stays.
    pub async fn kill(&self) {
        self.container.kill().await;
    }

    /// Starts the stopped container again, on the same port, and waits until the service
    /// says it is ready again.
    ///
    /// # Panics
    ///
    /// When Docker fails, or the service is not ready within three minutes.
    pub async fn restart(&self) {
        let line = self.service.ready_line();
        let before = self.container.logs().await.matches(line).count();
        self.container.start().await;
        let deadline = std::time::Instant::now() + STARTUP;
        loop {
            let logs = self.container.logs().await;
            if logs.matches(line).count() > before {
                break;
            }
            if std::time::Instant::now() >= deadline {
                let tail: Vec<&str> = logs.lines().rev().take(20).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                panic!(
                    "{:?} container {} restarted but did not log {line:?} within {STARTUP:?}; \
                     its last log lines:\n{}",
                    self.service,
                    self.id(),
                    tail.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Freezes every process of the container: connections stay open, nothing answers.
    pub async fn pause(&self) {
        self.container.pause().await;
    }

    /// Resumes a paused container.
    pub async fn unpause(&self) {
        self.container.unpause().await;
    }

    /// Runs `command` in the container (such as `rabbitmqctl close_all_connections`) and
    /// returns its standard output.
    ///
    /// # Errors
    ///
    /// When the command cannot run or exits with another status than 0: one line naming
    /// the command and what happened.
    pub async fn exec(&self, command: &[&str]) -> Result<String, String> {
        self.container.exec(command).await
    }
}

/// A server of one fault test's own, whichever mode the tests run in: a [`PrivateService`]
/// with `STREAMS_CONTAINERS=1`, else a native process started from a command line the
/// test gives ([`Native`]). Either way it can be killed and started again with its data,
/// frozen and resumed (a partition), and is gone when dropped.
#[derive(Debug)]
pub struct PrivateServer {
    service: Service,
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    Container(PrivateService),
    Process {
        native: Native,
        port: u16,
        dir: std::path::PathBuf,
        child: Option<std::process::Child>,
    },
}

/// How to run a service natively for [`PrivateServer`]: a program and its arguments, in
/// which `{port}` becomes a free port of 127.0.0.1 and `{dir}` a fresh directory (the
/// data, kept across restarts, removed on drop).
#[derive(Debug, Clone)]
pub struct Native {
    program: String,
    args: Vec<String>,
}

impl Native {
    /// `program` (a path, or a name looked up on the PATH) with `args`.
    pub fn new(program: impl Into<String>, args: &[&str]) -> Native {
        Native {
            program: program.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
        }
    }
}

impl PrivateServer {
    /// Starts the test's own server: a container of `service` run with `args` (the
    /// image's command when empty) when containers are enabled, else `native`. Returns
    /// `None` after one warning (tracing) saying why the test does not run when neither is
    /// possible (no containers and no native command line).
    ///
    /// # Panics
    ///
    /// When the container or the process does not start.
    pub async fn start(
        test: &str,
        service: Service,
        args: &[&str],
        native: Option<Native>,
    ) -> Option<PrivateServer> {
        if containers_enabled() {
            let container = PrivateService::start(service, &[], args).await;
            return Some(PrivateServer {
                service,
                inner: Inner::Container(container),
            });
        }
        let Some(native) = native else {
            tracing::warn!(
                test,
                ?service,
                "SKIPPED: these fault tests run on a container of their own \
                 (STREAMS_CONTAINERS=1; scripts/test.sh sets it when a Docker engine answers)"
            );
            return None;
        };
        let port = free_port().unwrap_or_else(|e| panic!("a free port: {e}"));
        let dir = std::env::temp_dir().join(format!(
            "streams-{}-{}-{port}",
            format!("{service:?}").to_lowercase(),
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut server = PrivateServer {
            service,
            inner: Inner::Process {
                native,
                port,
                dir,
                child: None,
            },
        };
        server.restart().await;
        Some(server)
    }

    /// The server's address (as [`address`] gives the shared one), the same across
    /// restarts.
    pub fn address(&self) -> String {
        match &self.inner {
            Inner::Container(c) => c.address(),
            Inner::Process { port, .. } => self.service.address(*port),
        }
    }

    /// Kills the server at once (SIGKILL: a crash, no shutdown runs); its data stays.
    pub async fn kill(&mut self) {
        match &mut self.inner {
            Inner::Container(c) => c.kill().await,
            Inner::Process { child, .. } => {
                if let Some(mut child) = child.take() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
            }
        }
    }

    /// Stops the server gracefully (SIGTERM; SIGKILL after `grace`); its data stays.
    ///
    /// # Panics
    ///
    /// When Docker or `kill -TERM` fails.
    pub async fn stop(&mut self, grace: Duration) {
        match &mut self.inner {
            Inner::Container(c) => c.stop(grace).await,
            Inner::Process { child, .. } => {
                if let Some(mut child) = child.take() {
                    let pid = child.id().to_string();
                    let _ = Command::new("kill").args(["-TERM", &pid]).status();
                    let deadline = std::time::Instant::now() + grace;
                    while matches!(child.try_wait(), Ok(None)) {
                        if std::time::Instant::now() >= deadline {
                            let _ = child.kill();
                            let _ = child.wait();
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
            }
        }
    }

    /// Starts the killed or stopped server again on the same port with its data, and
    /// waits until it
    /// accepts connections.
    ///
    /// # Panics
    ///
    /// When it does not start within three minutes.
    pub async fn restart(&mut self) {
        match &mut self.inner {
            Inner::Container(c) => c.restart().await,
            Inner::Process {
                native,
                port,
                dir,
                child,
            } => {
                let fill = |a: &String| {
                    a.replace("{port}", &port.to_string())
                        .replace("{dir}", &dir.display().to_string())
                };
                let log = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("server.log"))
                    .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
                let spawned = Command::new(&native.program)
                    .args(native.args.iter().map(fill))
                    .current_dir(&*dir)
                    .stdin(Stdio::null())
                    .stdout(log.try_clone().expect("log file"))
                    .stderr(log)
                    .spawn()
                    .unwrap_or_else(|e| panic!("starting {}: {e}", native.program));
                *child = Some(spawned);
                let deadline = std::time::Instant::now() + STARTUP;
                while std::net::TcpStream::connect(("127.0.0.1", *port)).is_err() {
                    assert!(
                        std::time::Instant::now() < deadline,
                        "{} did not listen on 127.0.0.1:{port} (log: {})",
                        native.program,
                        dir.join("server.log").display()
                    );
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Freezes (`true`: a partition, connections stay open and nothing answers) or
    /// resumes (`false`) the server.
    ///
    /// # Panics
    ///
    /// When Docker or `kill -STOP`/`-CONT` fails.
    pub async fn freeze(&self, frozen: bool) {
        match &self.inner {
            Inner::Container(c) if frozen => c.pause().await,
            Inner::Container(c) => c.unpause().await,
            Inner::Process { child, .. } => {
                let pid = child.as_ref().map(|c| c.id()).expect("the server runs");
                let signal = if frozen { "-STOP" } else { "-CONT" };
                let status = Command::new("kill")
                    .args([signal, &pid.to_string()])
                    .status()
                    .unwrap_or_else(|e| panic!("kill {signal} {pid}: {e}"));
                assert!(status.success(), "kill {signal} {pid}: {status}");
            }
        }
    }

    /// The container, when the server is one (for [`PrivateService::exec`]).
    pub fn container(&self) -> Option<&PrivateService> {
        match &self.inner {
            Inner::Container(c) => Some(c),
            Inner::Process { .. } => None,
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        if let Inner::Process { child, dir, .. } = &mut self.inner {
            if let Some(mut child) = child.take() {
                // A frozen process dies of SIGKILL too.
                let _ = child.kill();
                let _ = child.wait();
            }
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// What a fault test does to a container, whatever its image type.
#[async_trait::async_trait]
trait Control: Send + Sync {
    fn id(&self) -> &str;
    async fn stop(&self, seconds: i32);
    async fn kill(&self);
    async fn start(&self);
    async fn pause(&self);
    async fn unpause(&self);
    /// stdout and stderr since the container was created, across restarts.
    async fn logs(&self) -> String;
    async fn exec(&self, command: &[&str]) -> Result<String, String>;
}

#[async_trait::async_trait]
impl<I: Image> Control for ContainerAsync<I> {
    fn id(&self) -> &str {
        std::ops::Deref::deref(self).id()
    }

    async fn stop(&self, seconds: i32) {
        let id = self.id().to_owned();
        self.stop_with_timeout(Some(seconds))
            .await
            .unwrap_or_else(|e| panic!("docker stop {id}: {e}"));
    }

    async fn kill(&self) {
        let id = self.id().to_owned();
        let docker = testcontainers::bollard::Docker::connect_with_defaults()
            .unwrap_or_else(|e| panic!("docker kill {id}: {e}"));
        docker
            .kill_container(&id, None)
            .await
            .unwrap_or_else(|e| panic!("docker kill {id}: {e}"));
        // Until Docker has seen the container exit, it cannot be started again.
        for _ in 0..100 {
            if !self.is_running().await.unwrap_or(false) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn start(&self) {
        let id = self.id().to_owned();
        ContainerAsync::start(self)
            .await
            .unwrap_or_else(|e| panic!("docker start {id}: {e}"));
    }

    async fn pause(&self) {
        let id = self.id().to_owned();
        ContainerAsync::pause(self)
            .await
            .unwrap_or_else(|e| panic!("docker pause {id}: {e}"));
    }

    async fn unpause(&self) {
        let id = self.id().to_owned();
        ContainerAsync::unpause(self)
            .await
            .unwrap_or_else(|e| panic!("docker unpause {id}: {e}"));
    }

    async fn logs(&self) -> String {
        let id = self.id().to_owned();
        let out = self
            .stdout_to_vec()
            .await
            .unwrap_or_else(|e| panic!("docker logs {id}: {e}"));
        let err = self
            .stderr_to_vec()
            .await
            .unwrap_or_else(|e| panic!("docker logs {id}: {e}"));
        format!(
            "{}{}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )
    }

    async fn exec(&self, command: &[&str]) -> Result<String, String> {
        let shown = command.join(" ");
        // The raw container's exec (this trait's method has the same name). Waiting for
        // exit code 0 here: the result's own exit_code() cannot be awaited in a Send future.
        let mut result = std::ops::Deref::deref(self)
            .exec(
                ExecCommand::new(command.iter().copied())
                    .with_cmd_ready_condition(CmdWaitFor::exit_code(0)),
            )
            .await
            .map_err(|e| format!("docker exec {shown}: {e}"))?;
        let out = result
            .stdout_to_vec()
            .await
            .map_err(|e| format!("docker exec {shown}: reading its output: {e}"))?;
        Ok(String::from_utf8_lossy(&out).into_owned())
    }
}

/// A free port on 127.0.0.1 (the container's port is published there, fixed so that a
/// restarted container keeps it and Kafka can advertise it).
fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts a container for `service`; returns it with its host port.
async fn start(
    service: Service,
    env: &[(&str, &str)],
    args: &[&str],
) -> Result<(Box<dyn Control>, u16), String> {
    let image = service.image();
    let fail = |e: &dyn std::fmt::Display| {
        format!(
            "{service:?} container from image {image} did not start: {e} \
             (scripts/images.sh builds the image; {} names another)",
            service.image_variable()
        )
    };
    let port = free_port().map_err(|e| fail(&e))?;
    let (name, tag) = split_image(&image);
    let container: Box<dyn Control> = match service {
        Service::Postgres => Box::new(
            run(
                Postgres::default()
                    .with_host_auth()
                    .with_db_name("test")
                    .with_name(name)
                    .with_tag(tag),
                service,
                port,
                env,
                args,
            )
            .await
            .map_err(|e| fail(&e))?,
        ),
        Service::MariaDb => Box::new(
            run(
                Mariadb::default().with_name(name).with_tag(tag),
                service,
                port,
                env,
                args,
            )
            .await
            .map_err(|e| fail(&e))?,
        ),
        Service::Aws => Box::new(
            run(
                LocalStack::default()
                    .with_name(name)
                    .with_tag(tag)
                    .with_env_var("SERVICES", "sqs,sns,dynamodb"),
                service,
                port,
                env,
                args,
            )
            .await
            .map_err(|e| fail(&e))?,
        ),
        Service::Kafka => Box::new(
            run(kafka(name, tag, port), service, port, env, args)
                .await
                .map_err(|e| fail(&e))?,
        ),
        Service::Nats => Box::new(
            run(
                Nats::default()
                    .with_name(name)
                    .with_tag(tag)
                    .with_cmd(["-js", "-sd", "/data"]),
                service,
                port,
                env,
                args,
            )
            .await
            .map_err(|e| fail(&e))?,
        ),
        Service::Redis => Box::new(
            run(
                Redis::default().with_name(name).with_tag(tag),
                service,
                port,
                env,
                args,
            )
            .await
            .map_err(|e| fail(&e))?,
        ),
        Service::RabbitMq => Box::new(
            run(
                GenericImage::new(name, tag)
                    .with_wait_for(WaitFor::message_on_stdout(service.ready_line())),
                service,
                port,
                env,
                args,
            )
            .await
            .map_err(|e| fail(&e))?,
        ),
    };
    Ok((container, port))
}

/// Apache Kafka in KRaft mode, single node, advertising 127.0.0.1:`port` (the tansu
/// stand-in reads the advertised listener and ignores the rest).
fn kafka(name: &str, tag: &str, port: u16) -> ContainerRequest<GenericImage> {
    GenericImage::new(name, tag)
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env_var(
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://127.0.0.1:{port}"),
        )
        .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env_var(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        )
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .with_env_var("KAFKA_NUM_PARTITIONS", "3")
}

/// Starts `request` with the service's port published on 127.0.0.1:`port`, labelled for
/// the sweep in scripts/test.sh, and watched so that it is removed when this process ends;
/// `env` adds to the request's variables, `args` (when not empty) replace its command.
async fn run<I: Image>(
    request: impl Into<ContainerRequest<I>>,
    service: Service,
    port: u16,
    env: &[(&str, &str)],
    args: &[&str],
) -> testcontainers::core::error::Result<ContainerAsync<I>> {
    let inner = service.container_port();
    let mut request = request
        .into()
        .with_mapped_port(port, ContainerPort::Tcp(inner))
        .with_label("org.streams.test", "1")
        .with_label("org.streams.test.session", session())
        .with_startup_timeout(STARTUP)
        .with_host_config_modifier(move |config: &mut HostConfig| {
            // testcontainers publishes on every interface; the tests need loopback only.
            config.publish_all_ports = Some(false);
            config.port_bindings = Some(
                [(
                    format!("{inner}/tcp"),
                    Some(vec![PortBinding {
                        host_ip: Some("127.0.0.1".to_owned()),
                        host_port: Some(port.to_string()),
                    }]),
                )]
                .into_iter()
                .collect(),
            );
        });
    for (key, value) in env {
        request = request.with_env_var(*key, *value);
    }
    if !args.is_empty() {
        request = request.with_cmd(args.iter().copied());
    }
    let container = request.start().await?;
    watch(container.id());
    Ok(container)
}

/// The session label: `STREAMS_TEST_SESSION` (set by scripts/test.sh, which removes
/// what is left with that label at its end), else this process's id.
fn session() -> String {
    std::env::var("STREAMS_TEST_SESSION").unwrap_or_else(|_| std::process::id().to_string())
}

/// A detached shell that removes the container once this process has exited, however it
/// exits (a shared container is never dropped; a killed test drops nothing).
fn watch(id: &str) {
    let script = format!(
        "while kill -0 {pid} 2>/dev/null; do sleep 1; done; docker rm -f -v {id} >/dev/null 2>&1",
        pid = std::process::id()
    );
    let spawn = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
    };
    // setsid keeps the watchdog alive when Ctrl-C stops the test's process group.
    if spawn("setsid", &["sh", "-c", &script]).is_err() {
        let _ = spawn("sh", &["-c", &script]);
    }
}

/// `repo/name:tag` split at the tag's colon (a registry's port is not a tag).
fn split_image(image: &str) -> (&str, &str) {
    match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => (image, "latest"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_has_an_official_image() {
        for service in Service::ALL {
            let prefix = format!("{}=", service.image_variable());
            let line = IMAGES.lines().find(|l| l.starts_with(&prefix));
            assert!(line.is_some(), "images.env lacks {prefix}");
        }
    }

    #[test]
    fn image_names_split_at_the_tag() {
        assert_eq!(split_image("postgres:16"), ("postgres", "16"));
        assert_eq!(
            split_image("registry:5000/streams-test/kafka:abc"),
            ("registry:5000/streams-test/kafka", "abc")
        );
        assert_eq!(
            split_image("registry:5000/kafka"),
            ("registry:5000/kafka", "latest")
        );
    }
}
