//! SDK errors as driver errors that read in one line.

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use streams_core::Error;

/// The most characters of the text after `{driver}: {operation} failed: `, so that a
/// whole driver error stays within about 300 characters.
pub const MAX_ERROR_TEXT: usize = 250;

/// The most characters of the resource in an error, so that AWS's code and message fit
/// after a long queue URL or topic ARN; a longer one keeps its end, where the name is.
const MAX_RESOURCE: usize = 120;

/// Error codes that mean "slow down" or "try again" on every AWS service, whatever the
/// HTTP status (AWS answers some of them with 400).
const TRANSIENT_CODES: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "SlowDown",
    "PriorRequestNotComplete",
    "RequestTimeout",
    "RequestTimeoutException",
    "ServiceUnavailable",
    "InternalError",
    "InternalFailure",
];

/// Maps the SDK errors of one AWS client to driver errors.
///
/// Each error reads as one line of at most about 300 characters, naming the operation,
/// the resource (queue, topic, table) and what went wrong: AWS's error code and message
/// with the HTTP status, or the endpoint that could not be reached or did not answer in
/// time. It is retryable when trying again may help: time-outs, connection failures,
/// 5xx and 429 answers, and throttling codes. Everything else AWS refuses is a
/// misconfiguration or a bad request that retrying cannot fix (a missing queue or topic,
/// denied access, invalid credentials or signature, an invalid parameter).
///
/// ```
/// let errors = streams_aws::SdkErrors::new("sqs").with_endpoint("http://127.0.0.1:4566");
/// assert_eq!(errors.endpoint_label(), "http://127.0.0.1:4566");
/// ```
#[derive(Debug, Clone)]
pub struct SdkErrors {
    driver: &'static str,
    endpoint: String,
    transient_codes: &'static [&'static str],
}

impl SdkErrors {
    /// Errors of `driver` (`sqs`, `sns`, `dynamodb`), from an unnamed AWS endpoint.
    pub fn new(driver: &'static str) -> Self {
        SdkErrors {
            driver,
            endpoint: format!("the {driver} endpoint"),
            transient_codes: &[],
        }
    }

    /// Names the endpoint in errors of unreachable or silent endpoints.
    pub fn with_endpoint(mut self, endpoint: impl Into<String>) -> Self {
        self.endpoint = endpoint.into();
        self
    }

    /// Names the endpoint from a client's settings: the endpoint override when there is
    /// one, else the service's endpoint in the region.
    pub fn with_endpoint_of(self, endpoint_url: Option<&str>, region: Option<&str>) -> Self {
        let label = match (endpoint_url, region) {
            (Some(url), _) => url.to_owned(),
            (None, Some(region)) => format!("the {} endpoint of {region}", self.driver),
            (None, None) => format!("the {} endpoint (no region set)", self.driver),
        };
        self.with_endpoint(label)
    }

    /// Error codes of this service that mean "try again" besides the throttling codes
    /// every AWS service shares.
    pub fn with_transient_codes(mut self, codes: &'static [&'static str]) -> Self {
        self.transient_codes = codes;
        self
    }

    /// The endpoint as errors name it.
    pub fn endpoint_label(&self) -> &str {
        &self.endpoint
    }

    /// Maps an SDK error of `operation` on `resource` (such as `queue orders` or
    /// `topic arn:aws:sns:...`; empty when the call has none) to a driver error.
    pub fn map<E>(
        &self,
        operation: &'static str,
        resource: &str,
        err: SdkError<E, HttpResponse>,
    ) -> Error
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let (retryable, cause) = match &err {
            SdkError::ServiceError(ctx) => {
                let status = ctx.raw().status().as_u16();
                let code = ctx.err().code();
                let retryable =
                    status >= 500 || status == 429 || code.is_some_and(|c| self.is_transient(c));
                let text = match (code, ctx.err().message()) {
                    (Some(code), Some(message)) => format!("{code}: {message} (HTTP {status})"),
                    (Some(code), None) => format!("{code} (HTTP {status})"),
                    (None, Some(message)) => format!("{message} (HTTP {status})"),
                    // Not an AWS answer: a proxy, or an endpoint that is not the service.
                    (None, None) => format!(
                        "HTTP {status} from {} without an AWS error code",
                        self.endpoint
                    ),
                };
                (retryable, text)
            }
            SdkError::TimeoutError(_) => (
                true,
                format!("no answer from {}: {}", self.endpoint, root_cause(&err)),
            ),
            SdkError::DispatchFailure(f) => {
                let what = if f.is_timeout() {
                    "no connection to"
                } else {
                    "cannot reach"
                };
                let cause = root_cause(&err);
                (!f.is_user(), format!("{what} {}: {cause}", self.endpoint))
            }
            SdkError::ResponseError(r) => {
                let status = r.raw().status().as_u16();
                (
                    !(400..500).contains(&status) || status == 429 || status == 408,
                    format!(
                        "unreadable answer from {} (HTTP {status}): {}",
                        self.endpoint,
                        root_cause(&err)
                    ),
                )
            }
            SdkError::ConstructionFailure(_) => {
                (false, format!("request not sent: {}", root_cause(&err)))
            }
            _ => (false, root_cause(&err)),
        };
        let text = if resource.is_empty() {
            cause
        } else {
            format!("{}: {cause}", keep_end(resource, MAX_RESOURCE))
        };
        Error::driver(
            self.driver,
            operation,
            retryable,
            SdkFailure {
                text: one_line(&text, MAX_ERROR_TEXT),
                source: Box::new(err),
            },
        )
    }

    fn is_transient(&self, code: &str) -> bool {
        TRANSIENT_CODES.contains(&code) || self.transient_codes.contains(&code)
    }
}

/// The innermost error of a chain, where the SDK puts the cause (`Connection refused`,
/// `operation timeout ... occurred after 20s`); the outer ones only say where it arose.
fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut last = err;
    while let Some(next) = last.source() {
        last = next;
    }
    last.to_string()
}

/// `text` on one line (line breaks and runs of white space become one space), cut to
/// `max` characters with an ellipsis.
pub fn one_line(text: &str, max: usize) -> String {
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    if joined.chars().count() <= max {
        return joined;
    }
    let mut cut: String = joined.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

/// `text` cut to its last `max` characters, marked with a leading ellipsis.
fn keep_end(text: &str, max: usize) -> String {
    let count = text.chars().count();
    if count <= max {
        return text.to_owned();
    }
    let tail: String = text.chars().skip(count - max + 1).collect();
    format!("…{tail}")
}

/// An SDK error, shown as its one-line summary (also in `Debug`, which would otherwise
/// dump the whole HTTP response).
struct SdkFailure {
    text: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Debug for SdkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Display for SdkFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::error::Error for SdkFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_smithy_runtime_api::client::result::ConnectorError;
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answer(status: u16, code: &str, message: &str) -> SdkError<ErrorMetadata, HttpResponse> {
        let raw = HttpResponse::new(
            StatusCode::try_from(status).expect("valid status"),
            SdkBody::from(format!(
                "{{\"__type\":\"{code}\",\"message\":\"{message}\"}}"
            )),
        );
        let meta = ErrorMetadata::builder().code(code).message(message).build();
        SdkError::service_error(meta, raw)
    }

    fn errors() -> SdkErrors {
        SdkErrors::new("sqs")
            .with_endpoint("http://127.0.0.1:1")
            .with_transient_codes(&["KmsThrottled"])
    }

    fn refused() -> SdkError<ErrorMetadata, HttpResponse> {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        SdkError::dispatch_failure(ConnectorError::io(Box::new(io)))
    }

    #[test]
    fn misconfigurations_are_not_retryable() {
        let map = |status, code| errors().map("Call", "queue q", answer(status, code, "no"));
        for (status, code) in [
            (400, "AWS.SimpleQueueService.NonExistentQueue"),
            (400, "QueueDoesNotExist"),
            (404, "NotFound"),
            (403, "AccessDenied"),
            (400, "AccessDeniedException"),
            (403, "AuthorizationError"),
            (403, "InvalidClientTokenId"),
            (403, "SignatureDoesNotMatch"),
            (400, "InvalidParameterValue"),
            (400, "InvalidParameter"),
        ] {
            let err = map(status, code);
            assert!(!err.is_retryable(), "{code}: {err}");
            assert!(!err.is_message_fault(), "{code}: {err}");
        }
    }

    #[test]
    fn transient_trouble_is_retryable() {
        let map = |status, code| errors().map("Call", "queue q", answer(status, code, "later"));
        for (status, code) in [
            (503, "ServiceUnavailable"),
            (500, "InternalError"),
            (502, "BadGateway"),
            (429, "TooMany"),
            (400, "Throttling"),
            (400, "ThrottlingException"),
            (400, "RequestThrottled"),
            (400, "KmsThrottled"),
        ] {
            assert!(map(status, code).is_retryable(), "{code}");
        }
        let err = errors().map(
            "Call",
            "queue q",
            SdkError::<ErrorMetadata, _>::timeout_error("slow"),
        );
        assert!(err.is_retryable());
        assert!(errors().map("Call", "queue q", refused()).is_retryable());
        let user = SdkError::<ErrorMetadata, HttpResponse>::dispatch_failure(ConnectorError::user(
            "bad request".into(),
        ));
        assert!(!errors().map("Call", "queue q", user).is_retryable());
        let built = SdkError::<ErrorMetadata, HttpResponse>::construction_failure("bad input");
        assert!(!errors().map("Call", "queue q", built).is_retryable());
    }

    #[test]
    fn a_service_error_names_operation_resource_code_message_and_status() {
        let err = errors().map(
            "ReceiveMessage",
            "queue http://127.0.0.1:4566/123456789012/orders",
            answer(
                400,
                "AWS.SimpleQueueService.NonExistentQueue",
                "The specified queue does not exist.",
            ),
        );
        assert_eq!(
            err.to_string(),
            "sqs: ReceiveMessage failed: queue http://127.0.0.1:4566/123456789012/orders: \
             AWS.SimpleQueueService.NonExistentQueue: The specified queue does not exist. \
             (HTTP 400)"
        );
        // Debug, which some callers print, does not dump the HTTP response either.
        let debug = format!("{err:?}");
        assert!(!debug.contains("__type"), "{debug}");
    }

    #[test]
    fn unreachable_and_silent_endpoints_are_named() {
        let err = errors().map("SendMessageBatch", "queue q", refused());
        assert_eq!(
            err.to_string(),
            "sqs: SendMessageBatch failed: queue q: cannot reach http://127.0.0.1:1: Connection refused"
        );
        let err = errors().map(
            "Publish",
            "",
            SdkError::<ErrorMetadata, _>::timeout_error("operation timed out after 20s"),
        );
        assert_eq!(
            err.to_string(),
            "sqs: Publish failed: no answer from http://127.0.0.1:1: operation timed out after 20s"
        );
        let raw = HttpResponse::new(StatusCode::try_from(404).unwrap(), SdkBody::from("<html>"));
        let not_aws = SdkError::service_error(ErrorMetadata::builder().build(), raw);
        assert_eq!(
            errors().map("GetQueueUrl", "queue q", not_aws).to_string(),
            "sqs: GetQueueUrl failed: queue q: HTTP 404 from http://127.0.0.1:1 without an AWS error code"
        );
        let label = SdkErrors::new("sns").with_endpoint_of(None, Some("eu-west-1"));
        assert_eq!(label.endpoint_label(), "the sns endpoint of eu-west-1");
    }

    #[test]
    fn errors_are_one_line_of_bounded_length() {
        let message = format!("line one\nline two\r\n\t{}", "very long ".repeat(200));
        let resource = format!(
            "queue https://sqs.us-east-1.amazonaws.com/123456789012/{}",
            "q".repeat(79) + "Z"
        );
        let err = errors().map(
            "ChangeMessageVisibilityBatch",
            &resource,
            answer(400, "InvalidParameterValue", &message),
        );
        let text = err.to_string();
        assert!(
            !text.contains('\n') && !text.contains('\r') && !text.contains('\t'),
            "{text}"
        );
        assert!(
            text.chars().count() <= 300,
            "{} chars: {text}",
            text.chars().count()
        );
        assert!(text.ends_with('…'), "{text}");
        // The resource keeps its end (the queue name); the code survives the cut.
        assert!(
            text.contains("ChangeMessageVisibilityBatch")
                && text.contains("qqqqZ: InvalidParameterValue: line one line two"),
            "{text}"
        );
        assert_eq!(keep_end("abcdef", 4), "…def");
        assert_eq!(one_line("a \n b", 10), "a b");
        assert_eq!(one_line("abcdef", 4), "abc…");
    }
}
