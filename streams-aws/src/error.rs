//! SDK errors as driver errors.

use std::fmt;

use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::result::SdkError;
use aws_smithy_types::error::display::DisplayErrorContext;
use aws_smithy_types::error::metadata::ProvideErrorMetadata;
use streams_core::Error;

/// Maps an SDK error of `operation` to a driver error of `driver`, retryable when
/// trying again may help: time-outs, connection failures, 5xx and 429 answers, and
/// answers whose error code is one of the service's `transient_codes` (throttling,
/// "try later") whatever their status. The message carries the full error context.
pub fn sdk_error<E>(
    driver: &'static str,
    operation: &'static str,
    transient_codes: &[&str],
    err: SdkError<E, HttpResponse>,
) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let retryable = match &err {
        SdkError::TimeoutError(_) | SdkError::ResponseError(_) => true,
        SdkError::DispatchFailure(f) => !f.is_user(),
        SdkError::ServiceError(ctx) => {
            let status = ctx.raw().status().as_u16();
            status >= 500
                || status == 429
                || ctx
                    .err()
                    .code()
                    .is_some_and(|c| transient_codes.contains(&c))
        }
        _ => false,
    };
    let text = DisplayErrorContext(&err).to_string();
    Error::driver(
        driver,
        operation,
        retryable,
        SdkFailure {
            text,
            source: Box::new(err),
        },
    )
}

/// An SDK error with its full context in the message.
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
    use aws_smithy_runtime_api::http::StatusCode;
    use aws_smithy_types::body::SdkBody;
    use aws_smithy_types::error::ErrorMetadata;

    fn answer(status: u16, code: &str) -> SdkError<ErrorMetadata, HttpResponse> {
        let raw = HttpResponse::new(
            StatusCode::try_from(status).expect("valid status"),
            SdkBody::empty(),
        );
        SdkError::service_error(ErrorMetadata::builder().code(code).build(), raw)
    }

    #[test]
    fn retryable_by_status_and_code() {
        let transient = &["Throttling"];
        let map = |err| sdk_error("test", "Call", transient, err);
        assert!(map(answer(503, "ServiceUnavailable")).is_retryable());
        assert!(map(answer(429, "TooMany")).is_retryable());
        assert!(map(answer(400, "Throttling")).is_retryable());
        assert!(!map(answer(400, "QueueDoesNotExist")).is_retryable());
        assert!(map(SdkError::timeout_error("slow")).is_retryable());
        assert!(!map(SdkError::construction_failure("bad input")).is_retryable());
        let text = map(answer(400, "QueueDoesNotExist")).to_string();
        assert!(
            text.contains("Call") && text.contains("QueueDoesNotExist"),
            "{text}"
        );
    }
}
