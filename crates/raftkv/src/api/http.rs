//! Serving the API: connections come from a bounded listener
//! (`raftkv_raft::transport::listen`: caps per listener and per client
//! address, TLS handshakes under a deadline), and each is served by hyper
//! with bounds of its own:
//!
//! - the request head must arrive within `header_timeout` (a slowloris
//!   client sending a byte at a time is cut off);
//! - a connection on which no request began for `idle_timeout` is closed
//!   (after the requests in flight, given one more `idle_timeout` to end:
//!   a client that never reads its answer is cut off too), and one that has
//!   not sent a whole request head yet gets only `header_timeout`;
//! - at most 256 concurrent HTTP/2 streams per connection.
//!
//! A connection over a cap is answered 503 with the JSON error envelope and
//! closed, without reading its request.
//!
//! `Drain` stops a server gracefully: the listener closes (new connections
//! are refused, so clients fail over to another node), every connection is
//! asked to close once its requests are answered (HTTP/2: GOAWAY), and the
//! caller waits for them, within a bound.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use raftkv_raft::transport::listen::{self, Conn, ListenLimits, ListenTls};
use tokio::net::TcpListener;
use tokio_stream::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How the API listener serves.
#[derive(Clone, Debug)]
pub struct HttpOptions {
    pub limits: ListenLimits,
    pub tls: ListenTls,
    /// Bound on receiving a request's head.
    pub header_timeout: Duration,
    /// A connection without traffic this long is closed.
    pub idle_timeout: Duration,
}

impl Default for HttpOptions {
    fn default() -> HttpOptions {
        HttpOptions {
            limits: ListenLimits { refusal: OVER_CAP, ..ListenLimits::default() },
            tls: ListenTls::None,
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
        }
    }
}

/// The answer to a connection over a cap.
pub const OVER_CAP: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
connection: close\r\nretry-after: 1\r\ncontent-length: 113\r\n\r\n\
{\"error\":{\"code\":\"too_many_connections\",\"message\":\"too many open connections; retry later\",\"outcome\":\"not_done\"}}";

/// Ends a server's serving gracefully (see the module doc).
#[derive(Clone, Debug, Default)]
pub struct Drain {
    stop: CancellationToken,
    connections: TaskTracker,
}

impl Drain {
    pub fn new() -> Drain {
        Drain::default()
    }

    /// Closes the listener, asks every connection to close after the
    /// requests it is serving, and waits for them for at most `within`.
    /// Returns whether all of them closed in time (the rest are cut off
    /// when the process ends).
    pub async fn drain(&self, within: Duration) -> bool {
        self.stop.cancel();
        self.connections.close();
        tokio::time::timeout(within, self.connections.wait()).await.is_ok()
    }
}

/// Serves `router` on `listener` until `drain` is drained or the returned
/// task is aborted.
pub fn serve(router: Router, listener: TcpListener, options: HttpOptions, drain: Drain) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut incoming = listen::incoming(listener, options.limits.clone(), options.tls.clone());
        let options = Arc::new(options);
        loop {
            let accepted = tokio::select! {
                accepted = incoming.next() => accepted,
                () = drain.stop.cancelled() => break,
            };
            let Some(accepted) = accepted else { break };
            let Ok(conn) = accepted else { continue };
            drain.connections.spawn(serve_connection(router.clone(), conn, options.clone(), drain.stop.clone()));
        }
        // Dropping the listener refuses new connections from here on.
    })
}

async fn serve_connection(router: Router, conn: Conn, options: Arc<HttpOptions>, stop: CancellationToken) {
    let info = conn.info().clone();
    let activity = Arc::new(Activity { since: Instant::now(), last: AtomicU64::new(0), heads: AtomicBool::new(false) });
    let seen = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
        seen.request_started();
        request.extensions_mut().insert(info.clone());
        let router = router.clone();
        async move { tower::ServiceExt::oneshot(router, request.map(axum::body::Body::new)).await }
    });
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(options.header_timeout).keep_alive(true);
    builder.http2().timer(TokioTimer::new()).max_concurrent_streams(256).keep_alive_interval(Duration::from_secs(30));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(conn), service);
    tokio::pin!(connection);
    let check = (options.header_timeout / 4).max(Duration::from_millis(100));
    let mut closing: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = connection.as_mut() => return,
            () = stop.cancelled(), if closing.is_none() => {
                // Draining: idle connections end now, busy ones after
                // their answers.
                connection.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = tokio::time::sleep(check) => match closing {
                None => {
                    let limit = if activity.heads.load(Ordering::Relaxed) { options.idle_timeout } else { options.header_timeout };
                    if activity.since_last_request() >= limit {
                        // Ends an idle connection now, a busy one after its
                        // requests (HTTP/2: a GOAWAY, then the open streams).
                        connection.as_mut().graceful_shutdown();
                        closing = Some(Instant::now());
                    }
                }
                // A client that does not read its answer does not hold the
                // connection for longer than another idle period.
                Some(since) if since.elapsed() >= options.idle_timeout => return,
                Some(_) => {}
            },
        }
    }
}

/// When the connection's last request began (or the connection, before its
/// first): a connection is idle for as long as no request begins, whatever
/// bytes move (HTTP/2 pings, a slow upload, a slow reader).
struct Activity {
    since: Instant,
    /// Milliseconds after `since`.
    last: AtomicU64,
    heads: AtomicBool,
}

impl Activity {
    fn request_started(&self) {
        self.heads.store(true, Ordering::Relaxed);
        self.last.store(self.since.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn since_last_request(&self) -> Duration {
        self.since.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_over_cap_answer_is_well_formed() {
        let text = std::str::from_utf8(super::OVER_CAP).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length: ")).unwrap().parse().unwrap();
        assert_eq!(body.len(), length);
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["error"]["code"], "too_many_connections");
    }
}
