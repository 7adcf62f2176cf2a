//! Error classification and one-line errors.
//!
//! Every error of this crate names the operation, the topic where there is one, and
//! librdkafka's error code and message, in one line: `kafka: produce failed: topic
//! `orders`: UnknownTopicOrPartition (Broker: Unknown topic or partition)`.

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use streams_core::Error;

use crate::DRIVER;

/// The longest detail put into an error, so that an error stays one readable line.
const MAX_DETAIL: usize = 280;

/// Who is at fault for a Kafka error code, which decides what the caller may do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The producer or broker refused this message for what it is (too large, invalid
    /// record or timestamp): writing it again unchanged fails again, the other messages
    /// are not concerned.
    Message,
    /// The setup is wrong (unknown topic or partition, denied access, failed
    /// authentication, invalid configuration or request): trying again does not help
    /// until someone changes it.
    Config,
    /// Trouble that may pass: a broker down or slow, a leader moving, a time-out.
    Transient,
}

/// Classifies a librdkafka or broker error code.
pub(crate) fn fault(code: RDKafkaErrorCode) -> Fault {
    use RDKafkaErrorCode as C;
    match code {
        C::MessageSizeTooLarge | C::InvalidMessage | C::InvalidRecord | C::InvalidTimestamp => {
            Fault::Message
        }
        C::UnknownTopicOrPartition
        | C::UnknownTopic
        | C::UnknownPartition
        | C::UnknownTopicId
        | C::InvalidTopic
        | C::TopicAuthorizationFailed
        | C::GroupAuthorizationFailed
        | C::ClusterAuthorizationFailed
        | C::TransactionalIdAuthorizationFailed
        | C::DelegationTokenAuthorizationFailed
        | C::SaslAuthenticationFailed
        | C::UnsupportedSASLMechanism
        | C::IllegalSASLState
        | C::Authentication
        | C::SSL
        | C::SecurityDisabled
        | C::InvalidConfig
        | C::InvalidArgument
        | C::InvalidRequest
        | C::InvalidRequiredAcks
        | C::InvalidGroupId
        | C::InvalidSessionTimeout
        | C::InvalidPartitions
        | C::InvalidReplicationFactor
        | C::InvalidReplicaAssignment
        | C::PolicyViolation
        | C::TopicDeletionDisabled
        | C::UnsupportedVersion
        | C::UnsupportedForMessageFormat
        | C::UnsupportedCompressionType
        | C::UnsupportedFeature
        | C::NotImplemented
        | C::NotConfigured
        | C::Fatal => Fault::Config,
        _ => Fault::Transient,
    }
}

/// The code of a client error, when it has one.
pub(crate) fn code_of(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    e.rdkafka_error_code()
}

/// `Code (librdkafka's message)` for errors with a code, rdkafka's text otherwise; one
/// line, at most [`MAX_DETAIL`] characters.
pub(crate) fn describe(e: &KafkaError) -> String {
    match code_of(e) {
        Some(code) => one_line(&code.to_string()),
        None => one_line(&e.to_string()),
    }
}

/// Whether the same call may succeed if tried again.
pub(crate) fn retryable(e: &KafkaError) -> bool {
    match code_of(e) {
        Some(code) => fault(code) == Fault::Transient,
        None => !matches!(
            e,
            KafkaError::ClientConfig(..)
                | KafkaError::ClientCreation(..)
                | KafkaError::Subscription(..)
                | KafkaError::Nul(..)
        ),
    }
}

/// A client error of `operation`, on `topic` where there is one.
pub(crate) fn kafka_error(operation: &'static str, topic: Option<&str>, e: KafkaError) -> Error {
    let retryable = retryable(&e);
    driver_error(operation, topic, retryable, describe(&e))
}

/// A broker's answer `code` to `operation` on `topic`.
pub(crate) fn code_error(operation: &'static str, topic: &str, code: RDKafkaErrorCode) -> Error {
    driver_error(
        operation,
        Some(topic),
        fault(code) == Fault::Transient,
        code.to_string(),
    )
}

/// An [`Error::Driver`] whose message is `topic `t`: detail`, one line.
pub(crate) fn driver_error(
    operation: &'static str,
    topic: Option<&str>,
    retryable: bool,
    detail: impl AsRef<str>,
) -> Error {
    let detail = one_line(detail.as_ref());
    let text = match topic {
        Some(t) => format!("topic `{}`: {detail}", one_line(t)),
        None => detail,
    };
    Error::driver(DRIVER, operation, retryable, text)
}

/// `s` on one line, shortened to [`MAX_DETAIL`] characters.
pub(crate) fn one_line(s: &str) -> String {
    let mut out: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(MAX_DETAIL)
        .collect();
    if s.chars().count() > MAX_DETAIL {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use RDKafkaErrorCode as C;

    #[test]
    fn codes_are_classified_by_fault() {
        for code in [
            C::MessageSizeTooLarge,
            C::InvalidRecord,
            C::InvalidTimestamp,
        ] {
            assert_eq!(fault(code), Fault::Message, "{code:?}");
        }
        for code in [
            C::UnknownTopicOrPartition,
            C::UnknownTopic,
            C::UnknownPartition,
            C::TopicAuthorizationFailed,
            C::GroupAuthorizationFailed,
            C::ClusterAuthorizationFailed,
            C::SaslAuthenticationFailed,
            C::Authentication,
            C::InvalidConfig,
            C::InvalidArgument,
            C::Fatal,
        ] {
            assert_eq!(fault(code), Fault::Config, "{code:?}");
        }
        for code in [
            C::RequestTimedOut,
            C::NotLeaderForPartition,
            C::LeaderNotAvailable,
            C::MessageTimedOut,
            C::BrokerTransportFailure,
            C::AllBrokersDown,
            C::OperationTimedOut,
            C::QueueFull,
            C::NotEnoughReplicas,
            C::Resolve,
        ] {
            assert_eq!(fault(code), Fault::Transient, "{code:?}");
        }
    }

    #[test]
    fn errors_name_operation_topic_code_and_message() {
        let e = kafka_error(
            "produce",
            Some("orders"),
            KafkaError::MessageProduction(C::UnknownTopicOrPartition),
        );
        assert!(!e.is_retryable());
        assert!(!e.is_message_fault());
        assert_eq!(
            e.to_string(),
            "kafka: produce failed: topic `orders`: UnknownTopicOrPartition \
             (Broker: Unknown topic or partition)"
        );
        let e = kafka_error(
            "produce",
            Some("orders"),
            KafkaError::MessageProduction(C::MessageTimedOut),
        );
        assert!(e.is_retryable());
        assert!(e
            .to_string()
            .contains("MessageTimedOut (Local: Message timed out)"));
        let e = code_error("CreateTopics", "t", C::TopicAuthorizationFailed);
        assert!(!e.is_retryable());
        assert!(e.to_string().starts_with(
            "kafka: CreateTopics failed: topic `t`: TopicAuthorizationFailed (Broker: Topic authorization failed)"
        ));
    }

    #[test]
    fn configuration_errors_are_not_retryable() {
        let e = kafka_error(
            "create producer",
            None,
            KafkaError::ClientConfig(
                rdkafka::types::RDKafkaConfRes::RD_KAFKA_CONF_UNKNOWN,
                "No such configuration property: \"nope\"".into(),
                "nope".into(),
                "1".into(),
            ),
        );
        assert!(!e.is_retryable());
        assert!(e.to_string().starts_with("kafka: create producer failed: "));
    }

    #[test]
    fn errors_stay_on_one_short_line() {
        let long = format!("line one\nline two {}", "x".repeat(1000));
        let e = driver_error("consume", Some("t"), true, long);
        let text = e.to_string();
        assert!(!text.contains('\n'), "{text}");
        assert!(
            text.chars().count() <= 330,
            "{} chars",
            text.chars().count()
        );
    }
}
