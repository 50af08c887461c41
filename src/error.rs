//! The error callers see, and the one place that decides its HTTP status.
//!
//! Every failure that reaches a caller becomes an [`Error`]; [`Error::status`] is the only
//! mapping from failure to status code (the HTTP face renders it as Vault's
//! `{"errors":[...]}`, with `Retry-After` from [`Error::retry_after_secs`]; the gRPC face
//! turns the same status into a gRPC code with [`Error::grpc_code`]). Bad input is always a
//! 4xx (input Vault would answer with a 500 is refused before Vault is asked); Vault
//! being unreachable is a 503; Vault failing on its own is a 502; Vault's rate limit is
//! passed on as its 429 with a `Retry-After`; an audit trail that cannot take a
//! signature's event is a 503 before Vault is asked.
//!
//! Caller-facing text ([`Error::messages`], used by both faces) never names an address:
//! every URL in it (Vault's nodes, a standby's redirect target) is replaced by
//! `<address>`. The log line of a 5xx keeps the full text (`Display`).

use http::StatusCode;

use crate::vault::VaultError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request is malformed or refused by Transit's rules (Vault's message).
    #[error("{0}")]
    BadRequest(String),
    /// The key is outside the allowlist, or the caller may not do this.
    #[error("permission denied")]
    PermissionDenied,
    /// The caller policy refused the request; the reason is told to the caller.
    #[error("permission denied: {0}")]
    Refused(String),
    /// The request-forgery guard: `X-Vault-Request: true` is missing (Vault Proxy's
    /// `require_request_header` answers the same 412).
    #[error("{0}")]
    PreconditionFailed(String),
    /// Over the caller's rate for this key; `retry_after` is when a token is back.
    #[error("rate limit exceeded for key {key:?}: retry in {} ms", retry_after.as_millis())]
    TooManyRequests {
        key: String,
        retry_after: std::time::Duration,
    },
    /// No route: Aegis serves Transit sign, verify and keys only.
    #[error("{0}")]
    NotFound(String),
    /// The body is over the configured limit.
    #[error("request body too large: the limit is {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// Taking this body would go over `AEGIS_MAX_BODY_BYTES_IN_FLIGHT` (all requests'
    /// bytes together): refused before it is read, to be retried shortly.
    #[error("too many request bytes in flight (the limit is {limit} bytes): retry later")]
    OverBodyBudget { limit: usize },
    /// The caller did not finish sending its body within `AEGIS_HTTP_READ_TIMEOUT`.
    #[error("timed out reading the request body: the limit is {} s", after.as_secs_f64())]
    RequestTimeout { after: std::time::Duration },
    /// Vault could not be reached in time; sign waits for it, cached verify does not.
    #[error("Vault is unavailable: {0}")]
    Unavailable(String),
    /// The cached keyset is older than `AEGIS_MAX_KEYSET_AGE` (which key, how old, since
    /// when and why reading it from Vault fails): verification of it is refused.
    #[error("{0}")]
    StaleKeyset(String),
    /// The audit trail had no room for the events of a sign within
    /// `AEGIS_AUDIT_QUEUE_TIMEOUT`: refused before Vault was asked, nothing was signed.
    #[error("audit trail unavailable, so nothing was signed: {0}")]
    AuditUnavailable(String),
    /// Vault answered with an error, passed on with Vault's status and messages.
    #[error("{}", .errors.join("; "))]
    Vault { status: u16, errors: Vec<String> },
    /// Vault's rate-limit quota refused the call: 429 with Vault's messages, and
    /// `Retry-After` from Vault's (or the sidecar's longer pause, `vault::pace`).
    #[error("{}", .errors.join("; "))]
    VaultRateLimited {
        errors: Vec<String>,
        retry_after: std::time::Duration,
    },
    /// A bug or an impossible state; logged once, returned opaque.
    #[error("internal error")]
    Internal(String),
}

/// A model verification's failure, for the sidecar's model endpoint: the caller's input
/// (a bundle, a path, a key version the validity rule refuses) is a 400; Vault is not
/// asked by the sidecar's model check, so its failures are unavailability.
impl From<crate::model::ModelError> for Error {
    fn from(e: crate::model::ModelError) -> Self {
        match e {
            crate::model::ModelError::Vault(v) => Error::Unavailable(v.to_string()),
            e => Error::BadRequest(e.to_string()),
        }
    }
}

impl Error {
    pub fn bad_request(msg: impl Into<String>) -> Self {
        Error::BadRequest(msg.into())
    }

    /// The one mapping from error to HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) => StatusCode::BAD_REQUEST,
            Error::PermissionDenied | Error::Refused(_) => StatusCode::FORBIDDEN,
            Error::PreconditionFailed(_) => StatusCode::PRECONDITION_FAILED,
            Error::TooManyRequests { .. } | Error::VaultRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            Error::Unavailable(_)
            | Error::StaleKeyset(_)
            | Error::AuditUnavailable(_)
            | Error::OverBodyBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Error::Vault { status, .. } => match StatusCode::from_u16(*status) {
                Ok(s) if s.is_client_error() => s,
                Ok(s) if s == StatusCode::SERVICE_UNAVAILABLE => StatusCode::SERVICE_UNAVAILABLE,
                // Input that makes Vault answer 500 (a batch_input that is not a list, a
                // key_version above the latest, ...) is refused before Vault is asked; a
                // 500 that still comes back is Vault's own failure.
                _ => StatusCode::BAD_GATEWAY,
            },
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Seconds for a `Retry-After` header (rounded up, at least 1), when the caller
    /// should come back later.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Error::TooManyRequests { retry_after, .. }
            | Error::VaultRateLimited { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
                    .map(|s| s.max(1))
            }
            // Bodies in flight are done within moments (or the read timeout).
            Error::OverBodyBudget { .. } => Some(1),
            _ => None,
        }
    }

    /// The messages for Vault's `{"errors":[...]}` body, without any address.
    pub fn messages(&self) -> Vec<String> {
        match self {
            Error::Vault { errors, .. } | Error::VaultRateLimited { errors, .. } => errors
                .iter()
                .map(|e| without_addresses(&crate::vault::clean_message(e)))
                .collect(),
            other => vec![without_addresses(&other.to_string())],
        }
    }
}

/// `text` with every URL (`scheme://…`, up to a space, quote, comma, semicolon, `)` or
/// `>`) replaced by `<address>`, for text a caller sees: Vault's addresses stay in
/// the sidecar's log.
pub fn without_addresses(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let scheme_len = rest[..at]
            .chars()
            .rev()
            .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '.' | '-'))
            .count();
        let start = at - scheme_len;
        let tail = &rest[at + 3..];
        let end = tail
            .find(|c: char| c.is_whitespace() || matches!(c, ')' | '>' | '"' | '\'' | ',' | ';'))
            .unwrap_or(tail.len());
        out.push_str(&rest[..start]);
        out.push_str(if scheme_len == 0 { "://" } else { "<address>" });
        if scheme_len == 0 {
            out.push_str(&tail[..end]);
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

impl Error {
    /// The gRPC code for this error, from the one HTTP status mapping above.
    pub fn grpc_code(&self) -> tonic::Code {
        use tonic::Code;
        match self.status().as_u16() {
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            408 => Code::DeadlineExceeded,
            412 => Code::FailedPrecondition,
            413 | 429 => Code::ResourceExhausted,
            400..=499 => Code::InvalidArgument,
            502..=504 => Code::Unavailable,
            _ => Code::Internal,
        }
    }
}

/// The gRPC face's rendering: the code from [`Error::grpc_code`], Vault's messages, and
/// `retry-after` (seconds) in the metadata when over a rate. A 5xx is logged once here.
impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        if e.status().is_server_error() {
            match &e {
                Error::Internal(detail) => tracing::error!(detail, "internal error"),
                other => {
                    tracing::warn!(status = other.status().as_u16(), error = %other, "request failed")
                }
            }
        }
        let message = match &e {
            Error::Internal(_) => "internal error".to_string(),
            other => other.messages().join("; "),
        };
        let mut status = tonic::Status::new(e.grpc_code(), message);
        if let Some(secs) = e.retry_after_secs() {
            status
                .metadata_mut()
                .insert("retry-after", tonic::metadata::MetadataValue::from(secs));
        }
        status
    }
}

impl From<VaultError> for Error {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Status { status, errors } => Error::Vault { status, errors },
            VaultError::RateLimited {
                errors,
                retry_after,
            } => Error::VaultRateLimited {
                errors,
                retry_after: retry_after.unwrap_or(std::time::Duration::from_secs(1)),
            },
            VaultError::Unreachable { message, .. } => Error::Unavailable(message),
            // The target stays in the log; `messages` withholds it from callers.
            VaultError::Redirect(to) => Error::Unavailable(format!(
                "no active Vault node answered (last redirect to {to})"
            )),
            e @ VaultError::Unauthenticated(_) => Error::Unavailable(e.to_string()),
            VaultError::Decode(msg) => {
                Error::Internal(format!("unexpected answer from Vault: {msg}"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vault_500_is_a_bad_gateway_with_a_clean_message() {
        let e = Error::Vault {
            status: 500,
            errors: vec!["1 error occurred:\n\t* requested version for signing is higher than the latest key version\n\n".into()],
        };
        assert_eq!(e.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(
            e.messages(),
            ["requested version for signing is higher than the latest key version"]
        );
    }

    #[test]
    fn caller_messages_name_no_address() {
        let down = Error::from(VaultError::Unreachable {
            message: "connection failed: error sending request for url (http://10.1.2.3:8200/v1/transit/sign/k): client error (Connect): tcp connect error: Connection refused (os error 111)".into(),
            sent: false,
        });
        assert_eq!(
            down.messages(),
            ["Vault is unavailable: connection failed: error sending request for url (<address>): client error (Connect): tcp connect error: Connection refused (os error 111)"]
        );
        assert!(down
            .to_string()
            .contains("http://10.1.2.3:8200/v1/transit/sign/k"));
        let redirect = Error::from(VaultError::Redirect(
            "https://vault-b.internal:8200/v1/x".into(),
        ));
        assert_eq!(
            redirect.messages(),
            ["Vault is unavailable: no active Vault node answered (last redirect to <address>)"]
        );
        let forwarded = Error::Vault {
            status: 500,
            errors: vec!["error forwarding to https://[fd00::1]:8201, giving up".into()],
        };
        assert_eq!(
            forwarded.messages(),
            ["error forwarding to <address>, giving up"]
        );
        assert_eq!(without_addresses("a :// b"), "a :// b");
        assert_eq!(
            without_addresses("ends with http://h"),
            "ends with <address>"
        );
        let status = tonic::Status::from(down);
        assert!(
            !status.message().contains("10.1.2.3"),
            "{}",
            status.message()
        );
    }

    #[test]
    fn statuses() {
        assert_eq!(Error::PermissionDenied.status(), 403);
        assert_eq!(Error::Unavailable("x".into()).status(), 503);
        assert_eq!(Error::StaleKeyset("x".into()).status(), 503);
        assert_eq!(Error::AuditUnavailable("x".into()).status(), 503);
        assert_eq!(
            Error::AuditUnavailable("x".into()).grpc_code(),
            tonic::Code::Unavailable
        );
        assert_eq!(
            Error::Vault {
                status: 403,
                errors: vec![]
            }
            .status(),
            403
        );
        assert_eq!(
            Error::Vault {
                status: 502,
                errors: vec![]
            }
            .status(),
            502
        );
        assert_eq!(Error::PayloadTooLarge { limit: 1 }.status(), 413);
        let busy = Error::OverBodyBudget { limit: 1 };
        assert_eq!(
            (
                busy.status().as_u16(),
                busy.retry_after_secs(),
                busy.grpc_code()
            ),
            (503, Some(1), tonic::Code::Unavailable)
        );
        let slow = Error::RequestTimeout {
            after: std::time::Duration::from_millis(1500),
        };
        assert_eq!(slow.status(), 408);
        assert_eq!(slow.grpc_code(), tonic::Code::DeadlineExceeded);
        assert_eq!(
            slow.to_string(),
            "timed out reading the request body: the limit is 1.5 s"
        );
        assert_eq!(Error::PreconditionFailed("x".into()).status(), 412);
        assert_eq!(Error::Refused("x".into()).status(), 403);
        let slow = Error::TooManyRequests {
            key: "k".into(),
            retry_after: std::time::Duration::from_millis(1200),
        };
        assert_eq!(slow.status(), 429);
        assert_eq!(slow.retry_after_secs(), Some(2));
        assert_eq!(Error::PermissionDenied.retry_after_secs(), None);
        assert_eq!(slow.grpc_code(), tonic::Code::ResourceExhausted);
        let status = tonic::Status::from(slow);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        let vault_busy = Error::from(VaultError::RateLimited {
            errors: vec!["request path \"transit/sign/k\": rate limit quota exceeded".into()],
            retry_after: Some(std::time::Duration::from_millis(1500)),
        });
        assert_eq!(
            (vault_busy.status().as_u16(), vault_busy.retry_after_secs()),
            (429, Some(2))
        );
        assert_eq!(
            vault_busy.messages(),
            ["request path \"transit/sign/k\": rate limit quota exceeded"]
        );
        let status = tonic::Status::from(vault_busy);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(status.metadata().get("retry-after").unwrap(), "2");
        assert_eq!(
            Error::PreconditionFailed("x".into()).grpc_code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            Error::bad_request("x").grpc_code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(
            Error::Unavailable("x".into()).grpc_code(),
            tonic::Code::Unavailable
        );
    }
}
