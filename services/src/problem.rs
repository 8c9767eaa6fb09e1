//! RFC 7807 problem documents: the body of every error response, so clients parse one shape.

use serde::{Deserialize, Serialize};

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Stable, machine-readable error codes (the `code` member of a [`Problem`]).
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The request is malformed (400).
    BadRequest,
    /// No valid credentials (401).
    Unauthorized,
    /// Valid credentials, not allowed (403).
    Forbidden,
    /// No such resource (404).
    NotFound,
    /// The resource does not take this method (405).
    MethodNotAllowed,
    /// The request body stalled or came too slowly (408).
    RequestTimeout,
    /// Conflicts with the resource's state (409).
    Conflict,
    /// The resource existed and was destroyed (410).
    Gone,
    /// The body exceeds a limit (413).
    PayloadTooLarge,
    /// Well-formed but unacceptable (422).
    Unprocessable,
    /// Back-pressure: retry later (429).
    TooManyRequests,
    /// Unsupported media type (415).
    UnsupportedMediaType,
    /// A server-side failure; details are in the server's logs (500).
    Internal,
    /// A dependency refused this service's own credentials (502): an operator must act.
    BadGateway,
    /// A dependency is unavailable (503).
    Unavailable,
}

impl ErrorCode {
    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::NotFound => 404,
            ErrorCode::MethodNotAllowed => 405,
            ErrorCode::RequestTimeout => 408,
            ErrorCode::Conflict => 409,
            ErrorCode::Gone => 410,
            ErrorCode::PayloadTooLarge => 413,
            ErrorCode::UnsupportedMediaType => 415,
            ErrorCode::Unprocessable => 422,
            ErrorCode::TooManyRequests => 429,
            ErrorCode::Internal => 500,
            ErrorCode::BadGateway => 502,
            ErrorCode::Unavailable => 503,
        }
    }

    /// The code for an HTTP error status (the nearest one for statuses without their own).
    pub fn from_status(status: u16) -> Self {
        match status {
            401 => ErrorCode::Unauthorized,
            403 => ErrorCode::Forbidden,
            404 => ErrorCode::NotFound,
            405 => ErrorCode::MethodNotAllowed,
            408 => ErrorCode::RequestTimeout,
            409 => ErrorCode::Conflict,
            410 => ErrorCode::Gone,
            413 => ErrorCode::PayloadTooLarge,
            415 => ErrorCode::UnsupportedMediaType,
            422 => ErrorCode::Unprocessable,
            429 => ErrorCode::TooManyRequests,
            502 => ErrorCode::BadGateway,
            503 | 504 => ErrorCode::Unavailable,
            500..=599 => ErrorCode::Internal,
            _ => ErrorCode::BadRequest,
        }
    }

    /// Short human title (RFC 7807 `title`).
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "Bad request",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::NotFound => "Not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::RequestTimeout => "Request timeout",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::Gone => "Gone",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::Unprocessable => "Unprocessable request",
            ErrorCode::TooManyRequests => "Too many requests",
            ErrorCode::Internal => "Internal error",
            ErrorCode::BadGateway => "Bad gateway",
            ErrorCode::Unavailable => "Service unavailable",
        }
    }
}

/// An RFC 7807 problem document, with CryptFlow's extension members `code`, `field` and
/// `limit` so a client can tell which input was wrong and what was allowed.
///
/// ```
/// use cryptflow_services::{ErrorCode, Problem};
/// let p = Problem::new(ErrorCode::PayloadTooLarge, "upload exceeds the round's size")
///     .with_field("body")
///     .with_limit(4_718_704);
/// let json = serde_json::to_value(&p).unwrap();
/// assert_eq!(json["status"], 413);
/// assert_eq!(json["type"], "https://cryptflow.dev/problems/payload_too_large");
/// assert_eq!(json["limit"], 4_718_704);
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Problem {
    /// A URI naming the problem type.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened, for humans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Machine-readable code.
    pub code: ErrorCode,
    /// The request field (JSON path, header or `body`) at fault, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// The limit that was exceeded, when there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    /// The server's clock (seconds since the Unix epoch) when it refused a credential for its
    /// time claims (`exp`, `nbf`, `iat`): a client whose clock differs mints its next token
    /// against this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_time: Option<u64>,
}

impl Problem {
    /// A problem of the given code with a human-readable detail.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Self {
            type_uri: format!(
                "https://cryptflow.dev/problems/{}",
                serde_json::to_value(code)
                    .ok()
                    .and_then(|v| v.as_str().map(String::from))
                    .unwrap_or_default()
            ),
            title: code.title().to_owned(),
            status: code.status(),
            detail: Some(detail.into()),
            code,
            field: None,
            limit: None,
            server_time: None,
        }
    }

    /// Names the field at fault.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// States the limit that was exceeded.
    pub fn with_limit(mut self, limit: u64) -> Self {
        self.limit = Some(limit);
        self
    }

    /// States the server's clock (seconds since the Unix epoch).
    pub fn with_server_time(mut self, now: u64) -> Self {
        self.server_time = Some(now);
        self
    }
}
