//! The CLI's one HTTP client of the nodes' API: `Cluster` sends each call to
//! the endpoints in turn until one takes it (failover), within the command's
//! deadline; `Client` talks to one node (JSON calls, and the streamed
//! download and upload of backups).
//!
//! Failover is safe by construction: a call goes on to the next endpoint only
//! when the one asked did not take it (it could not be connected to, or it
//! answered 503 with outcome `not_done`). A write that may have taken effect
//! (no answer after it was sent, a 504, outcome `unknown`) is reported as
//! such, never sent again. A read changes nothing and is tried everywhere.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

use crate::http_client::ClientSecurity;

/// How long the CLI tries to connect to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary call may take (not a backup's transfer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The default endpoint.
pub const DEFAULT_ENDPOINT: &str = "127.0.0.1:8001";

/// Whether a call may change anything: that decides where it may be retried.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Effect {
    /// Changes nothing: retried on the next endpoint after any failure.
    Read,
    /// May change the state: retried only where it surely did not.
    Write,
}

/// When the calls of one command must be done by.
#[derive(Clone, Copy, Debug)]
pub struct Deadline {
    /// The whole command's end (`--timeout`), if any.
    end: Option<Instant>,
    /// How long one call (with its failover) may take at most.
    per_call: Duration,
}

impl Deadline {
    /// `--timeout` if given (the whole command), else `per_call` for each call.
    pub fn new(timeout: Option<Duration>, per_call: Duration) -> Deadline {
        match timeout {
            Some(timeout) => Deadline { end: Some(Instant::now() + timeout), per_call: timeout },
            None => Deadline { end: None, per_call },
        }
    }

    /// The time one call has from now; `None` once the command's deadline passed.
    pub fn budget(&self) -> Option<Duration> {
        match self.end {
            Some(end) => {
                Some(end.saturating_duration_since(Instant::now()).min(self.per_call)).filter(|d| !d.is_zero())
            }
            None => Some(self.per_call),
        }
    }

    /// The whole command's deadline, if `--timeout` gave one.
    pub fn end(&self) -> Option<Instant> {
        self.end
    }
}

/// One endpoint: as given, and its base URL.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub name: String,
    base: String,
}

/// What a request carries.
#[derive(Clone, Copy, Debug)]
pub enum Payload<'a> {
    Empty,
    Json(&'a Value),
    /// Bytes as they are (`application/octet-stream`).
    Raw(&'a bytes::Bytes),
}

impl<'a> From<Option<&'a Value>> for Payload<'a> {
    fn from(body: Option<&'a Value>) -> Payload<'a> {
        body.map_or(Payload::Empty, Payload::Json)
    }
}

/// An answer a call ends with (success or a final error status).
#[derive(Debug)]
pub struct Answer {
    /// The endpoint that answered.
    pub endpoint: String,
    pub status: StatusCode,
    pub text: String,
}

impl Answer {
    /// The JSON of a successful answer, or the error it stands for.
    pub fn json(&self) -> Result<Value, CallError> {
        if !self.status.is_success() {
            return Err(self.error());
        }
        serde_json::from_str(&self.text)
            .map_err(|e| CallError::NotDone(format!("{}: the answer is not JSON ({e}): {}", self.endpoint, self.text)))
    }

    /// The error a failed answer stands for: unknown if it may have taken effect.
    pub fn error(&self) -> CallError {
        let message = format!("{} (HTTP {} from {})", error_message(&self.text), self.status.as_u16(), self.endpoint);
        if self.status == StatusCode::GATEWAY_TIMEOUT || outcome(&self.text).as_deref() == Some("unknown") {
            CallError::Unknown(message)
        } else {
            CallError::NotDone(message)
        }
    }
}

/// A call that ended without an answer to show.
#[derive(Debug)]
pub enum CallError {
    /// Nothing took effect: refused, or no endpoint could be reached.
    NotDone(String),
    /// A write may or may not have taken effect.
    Unknown(String),
}

impl CallError {
    pub fn message(&self) -> &str {
        match self {
            CallError::NotDone(message) | CallError::Unknown(message) => message,
        }
    }

    /// The CLI's exit status for this error (see `args::EXIT_STATUSES`).
    pub fn exit_status(&self) -> i32 {
        match self {
            CallError::NotDone(_) => 1,
            CallError::Unknown(_) => 4,
        }
    }
}

impl From<String> for CallError {
    fn from(message: String) -> CallError {
        CallError::NotDone(message)
    }
}

/// The endpoints of one command, reached through one HTTP client.
pub struct Cluster {
    http: reqwest::Client,
    endpoints: Vec<Endpoint>,
    pub deadline: Deadline,
}

impl Cluster {
    /// A client of `endpoints` (host:port or URLs), let in with `security`.
    pub fn new(endpoints: &[String], security: &ClientSecurity, deadline: Deadline) -> Result<Cluster, String> {
        if endpoints.is_empty() {
            return Err("no endpoint given".to_string());
        }
        let endpoints = endpoints
            .iter()
            .map(|name| Ok(Endpoint { name: name.clone(), base: base_url(security, name)? }))
            .collect::<Result<Vec<_>, String>>()?;
        let connect = deadline.budget().unwrap_or(CONNECT_TIMEOUT).min(CONNECT_TIMEOUT);
        let http = security
            .apply(reqwest::Client::builder().connect_timeout(connect))?
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Cluster { http, endpoints, deadline })
    }

    pub fn endpoints(&self) -> &[Endpoint] {
        &self.endpoints
    }

    /// Sends one request to the endpoints in turn until one takes it (see
    /// the module doc); returns that endpoint's answer, success or a final
    /// error status.
    pub async fn call<'a>(
        &self,
        effect: Effect,
        method: reqwest::Method,
        path: &str,
        body: impl Into<Payload<'a>>,
    ) -> Result<Answer, CallError> {
        let body = body.into();
        let Some(budget) = self.deadline.budget() else {
            return Err(CallError::NotDone("timed out before the request was sent (--timeout)".to_string()));
        };
        let end = Instant::now() + budget;
        let mut tried = Vec::new();
        let count = self.endpoints.len();
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let left = end.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // A read shares the time left among the endpoints not tried yet,
            // so that one hung node does not use it all; a write sent is not
            // sent again, so it has all of it.
            let attempt = match effect {
                Effect::Read => left / (count - i) as u32,
                Effect::Write => left,
            };
            match self.attempt(endpoint, method.clone(), path, body, attempt).await {
                Ok(answer) => {
                    let not_done = answer.status == StatusCode::SERVICE_UNAVAILABLE
                        && outcome(&answer.text).as_deref() == Some("not_done");
                    let retry = not_done || (effect == Effect::Read && answer.status.is_server_error());
                    if !retry {
                        return Ok(answer);
                    }
                    tried.push(format!(
                        "{}: {} (HTTP {})",
                        endpoint.name,
                        error_message(&answer.text),
                        answer.status.as_u16()
                    ));
                }
                Err(Failed::NotSent(reason)) => tried.push(format!("{}: {reason}", endpoint.name)),
                Err(Failed::Sent(reason)) if effect == Effect::Read => {
                    tried.push(format!("{}: {reason}", endpoint.name))
                }
                Err(Failed::Sent(reason)) => {
                    return Err(CallError::Unknown(format!(
                        "{}: {reason} after the write was sent: it may or may not have taken effect, \
                         so it was not sent to another endpoint",
                        endpoint.name
                    )))
                }
            }
        }
        let why = if tried.len() < count || Instant::now() >= end {
            format!("timed out after {}", show_duration(budget))
        } else {
            "no endpoint took the request".to_string()
        };
        Err(CallError::NotDone(format!("{why}; nothing was done: {}", tried.join("; "))))
    }

    /// One request to one endpoint, within `timeout`.
    async fn attempt(
        &self,
        endpoint: &Endpoint,
        method: reqwest::Method,
        path: &str,
        body: Payload<'_>,
        timeout: Duration,
    ) -> Result<Answer, Failed> {
        let mut request = self
            .http
            .request(method, format!("{}{path}", endpoint.base))
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        match body {
            Payload::Empty => {}
            Payload::Json(body) => request = request.json(body),
            Payload::Raw(bytes) => {
                request = request.header(reqwest::header::CONTENT_TYPE, "application/octet-stream").body(bytes.clone())
            }
        }
        let response = request.send().await.map_err(|e| transport_failure(&e, timeout))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| Failed::Sent(format!("the answer broke off: {}", chain(&e))))?;
        Ok(Answer { endpoint: endpoint.name.clone(), status, text })
    }

    /// Sends one request to every endpoint at once; each endpoint's answer
    /// or why there is none.
    pub async fn each(&self, path: &str) -> Vec<(String, Result<Answer, String>)> {
        let timeout = self.deadline.budget().unwrap_or(Duration::from_millis(1));
        let calls = self.endpoints.iter().map(|endpoint| async move {
            let answer = self.attempt(endpoint, reqwest::Method::GET, path, Payload::Empty, timeout).await;
            let answer = answer.map_err(|failed| match failed {
                Failed::NotSent(reason) | Failed::Sent(reason) => reason,
            });
            (endpoint.name.clone(), answer)
        });
        join_all(calls).await
    }

    /// A `Client` of the endpoint at `index`.
    pub fn client(&self, security: &ClientSecurity, index: usize) -> Result<Client, String> {
        let endpoint = self.endpoints.get(index).ok_or("no such endpoint")?;
        Client::new(&endpoint.name, security)
    }
}

/// Runs `futures` concurrently; their outputs in order.
async fn join_all<F: std::future::Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for future in futures {
        set.push(Box::pin(future));
    }
    let mut outputs: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in set.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

/// Why one request got no answer.
enum Failed {
    /// It never reached the node (no connection).
    NotSent(String),
    /// It may have reached the node.
    Sent(String),
}

fn transport_failure(error: &reqwest::Error, timeout: Duration) -> Failed {
    if error.is_connect() {
        return Failed::NotSent(format!("cannot connect: {}", chain(error)));
    }
    if error.is_timeout() {
        return Failed::Sent(format!("no answer within {}", show_duration(timeout)));
    }
    Failed::Sent(chain(error))
}

/// An error with its causes, `a: b: c`.
/// reqwest's own outermost message ("error sending request for url ...")
/// is left out when there is a cause: the endpoint is named already.
fn chain(error: &dyn std::error::Error) -> String {
    let (mut text, mut source) = match error.source() {
        Some(cause) => (cause.to_string(), cause.source()),
        None => (error.to_string(), None),
    };
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}

/// `1.5s`, `250ms`.
pub fn show_duration(duration: Duration) -> String {
    if duration < Duration::from_secs(1) {
        format!("{}ms", duration.as_millis())
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}

/// The base URL of `endpoint`: a URL with scheme http or https as given, or
/// host:port (then HTTPS with a CA, else HTTP).
fn base_url(security: &ClientSecurity, endpoint: &str) -> Result<String, String> {
    let (rest, needs_port) = match endpoint.split_once("://") {
        Some(("http" | "https", rest)) => (rest, false),
        Some((scheme, _)) => {
            return Err(format!("endpoint {endpoint:?}: the scheme must be http or https, not {scheme:?}"))
        }
        None => (endpoint, true),
    };
    let host_port = rest.trim_end_matches('/');
    if host_port.is_empty() || host_port.contains('/') || (needs_port && !host_port.contains(':')) {
        return Err(format!("endpoint {endpoint:?}: expected host:port or http(s)://host:port"));
    }
    Ok(security.base_url(endpoint))
}

/// The `outcome` of an API error body, if it has one.
pub fn outcome(text: &str) -> Option<String> {
    serde_json::from_str::<Value>(text).ok()?["error"]["outcome"].as_str().map(str::to_string)
}

pub struct Client {
    addr: String,
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the node at `addr` (host:port or a URL), let in with `security`.
    pub fn new(addr: &str, security: &ClientSecurity) -> Result<Client, String> {
        let http = security
            .apply(reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT))?
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        Ok(Client { addr: addr.to_string(), base: security.base_url(addr), http })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one JSON request; returns the status and the body's text.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        timeout: Duration,
    ) -> Result<(reqwest::StatusCode, String), String> {
        let mut request = self
            .http
            .request(method, self.url(path))
            .timeout(timeout)
            .header(reqwest::header::ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| format!("cannot reach {}: {e}", self.addr))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("bad response from {}: {e}", self.addr))?;
        Ok((status, text))
    }

    /// Starts a download of `path`; a failure status is an error with the
    /// server's message.
    pub async fn download(&self, path: &str) -> Result<reqwest::Response, String> {
        let response =
            self.http.get(self.url(path)).send().await.map_err(|e| format!("cannot reach {}: {e}", self.addr))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(failed(status, &text));
        }
        Ok(response)
    }

    /// Uploads `size` bytes from `body` to `path`; returns the JSON answer.
    pub async fn upload(&self, path: &str, body: reqwest::Body, size: u64) -> Result<Value, String> {
        let response = self
            .http
            .post(self.url(path))
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("cannot reach {}: {e}", self.addr))?;
        let status = response.status();
        let text = response.text().await.map_err(|e| format!("bad response from {}: {e}", self.addr))?;
        if !status.is_success() {
            return Err(failed(status, &text));
        }
        serde_json::from_str(&text).map_err(|e| format!("bad response from {}: {e}", self.addr))
    }
}

/// A failed call as the CLI reports it: the server's message and the status.
pub fn failed(status: reqwest::StatusCode, text: &str) -> String {
    format!("{} (HTTP {})", error_message(text), status.as_u16())
}

/// The `message` of an API error body, or the text as it is.
pub fn error_message(text: &str) -> String {
    serde_json::from_str::<Value>(text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| text.to_string())
}

/// Percent-encodes a query value.
pub fn encode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

/// Percent-encodes a path segment: every byte but RFC 3986's unreserved
/// ones (so `/`, `?`, `#`, `%` and spaces in a key stay in the key).
pub fn encode_segment(value: &str) -> String {
    let mut encoded = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(byte as char);
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
