//! The API's one error type and the one mapping from an agent's `Failure` to
//! an HTTP answer: `{"error": {"code", "message", "outcome"}}`, where
//! `outcome` tells the client whether the request took effect (`not_done`:
//! safe to retry; `unknown`: it may have; `done`).
//!
//! Statuses: 400 bad input, 404 no such key, 409 a refusal as things stand
//! (`refused`, `transfer_failed`, `cas_mismatch`, `restore_running`,
//! `restore_failed`, `nothing_new`, `not_caught_up`), 413 a write too large to forward, 500 a
//! bug, 503 not done and worth retrying soon (`no_leader`, `not_sent`,
//! `not_ready`, `leadership_transfer`, `shutting_down`, `node_failed`; with
//! `Retry-After`),
//! 504 no answer in time (`timeout`, `outcome_unknown`).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::agent::{Failure, Kind, Outcome};

/// An API error: status, machine-readable code, human message, outcome.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub outcome: Outcome,
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::from(Failure::bad_request(message))
    }

    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            message: message.into(),
            outcome: Outcome::NotDone,
        }
    }
}

impl From<Failure> for ApiError {
    fn from(failure: Failure) -> ApiError {
        let status = match failure.kind {
            Kind::BadRequest => StatusCode::BAD_REQUEST,
            Kind::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::Refused
            | Kind::TransferFailed
            | Kind::NothingNew
            | Kind::RestoreRunning
            | Kind::RestoreFailed
            | Kind::NotCaughtUp => StatusCode::CONFLICT,
            Kind::NoLeader
            | Kind::NotSent
            | Kind::NotReady
            | Kind::LeadershipTransfer
            | Kind::ShuttingDown
            | Kind::NodeFailed => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Timeout | Kind::OutcomeUnknown => StatusCode::GATEWAY_TIMEOUT,
            Kind::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
            Kind::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        };
        // A request that may have taken effect is never answered as one to
        // retry (503) or as the client's mistake (4xx): 504. The exception is
        // a transfer, which changes no data; its message says leadership may
        // still move.
        let (status, message) = match failure.outcome {
            Outcome::Unknown if failure.kind != Kind::TransferFailed => (
                StatusCode::GATEWAY_TIMEOUT,
                format!("{} (the request may or may not have taken effect)", failure.message),
            ),
            _ => (status, failure.message),
        };
        ApiError { status, code: failure.kind.code(), message, outcome: failure.outcome }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {"code": self.code, "message": self.message, "outcome": self.outcome.as_str()}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 503 promises that nothing was done: whatever may have been done is a
    /// 504 (a transfer, which changes no data, keeps its 409).
    #[test]
    fn statuses_tell_the_truth_about_outcomes() {
        for kind in Kind::ALL {
            let error = ApiError::from(Failure { kind, outcome: Outcome::Unknown, message: String::new() });
            assert_eq!((error.code, error.outcome), (kind.code(), Outcome::Unknown));
            let expected =
                if kind == Kind::TransferFailed { StatusCode::CONFLICT } else { StatusCode::GATEWAY_TIMEOUT };
            assert_eq!(error.status, expected, "{kind:?}");
        }
        let not_sent = ApiError::from(Failure::not_done(Kind::NotSent, "x"));
        assert_eq!((not_sent.status, not_sent.outcome), (StatusCode::SERVICE_UNAVAILABLE, Outcome::NotDone));
    }
}
