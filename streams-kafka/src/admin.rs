use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use streams_core::{Error, Result};

use crate::record::kafka_error;
use crate::{KafkaConfig, DRIVER};

fn admin(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>> {
    config
        .client_config(crate::config::Role::Admin, &[])
        .create()
        .map_err(|e| kafka_error("create admin client", e))
}

/// Creates a topic with `partitions` partitions and replication factor `replication`;
/// a topic that already exists is left as it is.
///
/// # Errors
///
/// A broker or configuration error.
pub async fn create_topic(
    config: &KafkaConfig,
    name: &str,
    partitions: i32,
    replication: i32,
) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("topic", "name is empty"));
    }
    let admin = admin(config)?;
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(replication));
    let opts = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
    let results = admin
        .create_topics([&topic], &opts)
        .await
        .map_err(|e| kafka_error("CreateTopics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::driver(
                    DRIVER,
                    "CreateTopics",
                    false,
                    format!("topic `{topic}`: {code}"),
                ))
            }
        }
    }
    Ok(())
}

/// Deletes a topic; a missing topic is not an error.
///
/// # Errors
///
/// A broker or configuration error.
pub async fn delete_topic(config: &KafkaConfig, name: &str) -> Result<()> {
    let admin = admin(config)?;
    let opts = AdminOptions::new().operation_timeout(Some(config.operation_timeout));
    let results = admin
        .delete_topics(&[name], &opts)
        .await
        .map_err(|e| kafka_error("DeleteTopics", e))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(Error::driver(
                    DRIVER,
                    "DeleteTopics",
                    false,
                    format!("topic `{topic}`: {}", KafkaError::AdminOp(code)),
                ))
            }
        }
    }
    Ok(())
}
