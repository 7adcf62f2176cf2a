use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::error::RDKafkaErrorCode;
use streams_core::{Error, Result};

use crate::client::{first_contact, KafkaContext};
use crate::error::{code_error, kafka_error};
use crate::KafkaConfig;

type Admin = AdminClient<KafkaContext>;

/// An admin client that reached the cluster within the connect time-out. Creating it,
/// the first contact and dropping it block, so they run off the async runtime.
async fn connect(config: &KafkaConfig, topic: &str) -> Result<Admin> {
    let config = config.clone();
    let topic = topic.to_owned();
    spawn_blocking(move || {
        let context = KafkaContext::default();
        // A metadata request must not create the topic it asks about.
        let admin: Admin = config
            .client_config(
                crate::config::Role::Admin,
                &[("allow.auto.create.topics", "false")],
            )
            .create_with_context(context.clone())
            .map_err(|e| kafka_error("create admin client", None, e))?;
        // Only whether a broker answers: the admin request itself reports on the topic.
        first_contact(admin.inner(), &context, &config, &topic, || {})?;
        Ok(admin)
    })
    .await
}

async fn spawn_blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::driver(crate::DRIVER, "admin", false, e))?
}

/// Drops an admin client off the async runtime (dropping joins its threads).
fn close(admin: Admin) {
    tokio::task::spawn_blocking(move || drop(admin));
}

/// Creates a topic with `partitions` partitions and replication factor `replication`;
/// a topic that already exists is left as it is.
///
/// # Errors
///
/// `kafka: connect failed: no broker answered at ...` when no broker answers within
/// [`KafkaConfig::with_connect_timeout`]; the broker's refusal with its code (denied
/// access, an invalid partition count or replication factor: not retryable).
pub async fn create_topic(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("topic", "name is empty"));
    }
    let admin = connect(config, name).await?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
    let results = admin.create_topics([&topic], &opts).await;
    close(admin);
    for r in results.map_err(|e| kafka_error("CreateTopics", Some(name), e))? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(code_error("CreateTopics", &topic, code)),
        }
    }
    Ok(())
}

/// Deletes a topic; a missing topic is not an error.
///
/// # Errors
///
/// As [`create_topic`].
pub async fn delete_topic(config: &KafkaConfig, name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("topic", "name is empty"));
    }
    let admin = connect(config, name).await?;
    let opts = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
    let results = admin.delete_topics(&[name], &opts).await;
    close(admin);
    for r in results.map_err(|e| kafka_error("DeleteTopics", Some(name), e))? {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => return Err(code_error("DeleteTopics", &topic, code)),
        }
    }
    Ok(())
}
