//! Checks of what a request carries, before anything runs: the JSON body,
//! keys and values within the limits, the read consistency.

use axum::extract::rejection::JsonRejection;
use axum::Json;
use raftkv_raft::ReadMode;

use crate::agent::{Failure, Kind};
use crate::api::error::ApiError;
use crate::state::Limits;

/// The JSON body, or a 400 that says what is wrong with it (413 for a body
/// over the limit).
pub fn body<T>(payload: Result<Json<T>, JsonRejection>) -> Result<T, ApiError> {
    payload.map(|Json(value)| value).map_err(|rejection| {
        if rejection.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
            return too_large(rejection.body_text());
        }
        ApiError::bad_request(rejection.body_text())
    })
}

fn too_large(message: String) -> ApiError {
    Failure::not_done(Kind::TooLarge, message).into()
}

/// An empty key is 400; one over the limit 413.
pub fn check_key(limits: &Limits, key: &str) -> Result<(), ApiError> {
    if key.len() > limits.max_key_bytes {
        return limits.check_key(key).map_err(too_large);
    }
    limits.check_key(key).map_err(ApiError::bad_request)
}

/// A value over the limit is 413.
pub fn check_value(limits: &Limits, value: &[u8]) -> Result<(), ApiError> {
    limits.check_value(value).map_err(too_large)
}

/// `?consistency=`: linearizable (the default), lease, or stale (`None`).
pub fn consistency(raw: Option<&str>) -> Result<Option<ReadMode>, ApiError> {
    match raw.unwrap_or("linearizable") {
        "linearizable" => Ok(Some(ReadMode::Linearizable)),
        "lease" => Ok(Some(ReadMode::Lease)),
        "stale" => Ok(None),
        other => Err(ApiError::bad_request(format!("consistency must be linearizable, lease or stale, not {other:?}"))),
    }
}
