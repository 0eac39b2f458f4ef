//! The CLI's one HTTP client of a node's API: JSON calls, and the streamed
//! download and upload of backups.

use std::time::Duration;

use serde_json::Value;

use crate::http_client::ClientSecurity;

/// How long the CLI tries to connect to a node.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an ordinary call may take (not a backup's transfer).
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

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
