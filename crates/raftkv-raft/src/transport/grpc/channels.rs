//! `Channels`: one gRPC channel per peer address, shared by every client of
//! that peer (the raft transport's stream, an application's own clients).
//!
//! Two ways to get a channel:
//! - [`Channels::get`] hands out a lazily connected channel: the first call on
//!   it connects (bounded by the connect timeout), and tonic reconnects it
//!   behind later calls. The raft transport uses it: Raft resends what matters.
//! - [`Channels::connect`] hands out a channel whose connection was open when
//!   it was cached, connecting first if need be. A caller that must know
//!   whether a request left (a forwarded write, whose outcome is otherwise
//!   unknown) uses it, and calls [`Channels::evict`] after any failure on the
//!   channel, so that the next call connects explicitly again instead of
//!   letting the channel reconnect behind the request.
//!
//! Eviction names the channel handed out (not just the address), so a caller
//! reporting a failure of an old channel never evicts a newer one; and
//! [`Channels::evict_on_connect_error`] evicts only when a call failed to
//! connect, so that the next call starts from a fresh connection.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::locks::lock;
use crate::transport::tls::{Connector, Tls};

/// How [`Channels`] opens connections.
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    /// Bound on opening a TCP connection (and, for [`Channels::connect`], on
    /// the HTTP/2 handshake after it).
    pub connect_timeout: Duration,
    /// HTTP/2 keep-alive pings on idle connections, to notice a dead peer.
    pub keep_alive_interval: Option<Duration>,
    /// Mutual TLS with the peers (`transport::tls`); `None`: plain TCP.
    pub tls: Option<Tls>,
}

impl Default for ChannelOptions {
    fn default() -> ChannelOptions {
        ChannelOptions {
            connect_timeout: Duration::from_secs(1),
            keep_alive_interval: Some(Duration::from_secs(10)),
            tls: None,
        }
    }
}

/// Why no channel could be had.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ChannelError {
    /// The address is not a valid endpoint.
    #[error("bad address {address:?}: {reason}")]
    BadAddress {
        /// The address given.
        address: String,
        /// Why it is not valid.
        reason: String,
    },
    /// Connecting failed (refused, unreachable, TLS handshake failed, ...).
    #[error("cannot connect to {address}: {reason}")]
    Connect {
        /// The peer's address.
        address: String,
        /// Why the connection failed.
        reason: String,
    },
    /// No connection within the connect timeout.
    #[error("no connection to {address} within {timeout:?}")]
    Timeout {
        /// The peer's address.
        address: String,
        /// The connect timeout that passed.
        timeout: Duration,
    },
}

impl From<ChannelError> for tonic::Status {
    fn from(error: ChannelError) -> tonic::Status {
        match error {
            ChannelError::BadAddress { .. } => tonic::Status::invalid_argument(error.to_string()),
            ChannelError::Connect { .. } | ChannelError::Timeout { .. } => {
                tonic::Status::unavailable(error.to_string())
            }
        }
    }
}

/// A channel handed out by [`Channels`]; name it to [`Channels::evict`] it.
#[derive(Clone, Debug)]
pub struct CachedChannel {
    address: Arc<str>,
    serial: u64,
    channel: Channel,
}

impl CachedChannel {
    /// The channel, to build a client on (cheap: channels are handles).
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The address it connects to.
    pub fn address(&self) -> &str {
        &self.address
    }
}

struct Cached {
    serial: u64,
    channel: Channel,
    /// Whether it was connected before it was cached (by `connect`).
    connected: bool,
}

/// Address -> channel. Clones share the cache.
#[derive(Clone)]
pub struct Channels {
    options: ChannelOptions,
    cached: Arc<Mutex<BTreeMap<String, Cached>>>,
    serials: Arc<AtomicU64>,
}

impl Default for Channels {
    fn default() -> Channels {
        Channels::new(ChannelOptions::default())
    }
}

impl Channels {
    /// An empty cache whose channels open with `options`.
    pub fn new(options: ChannelOptions) -> Channels {
        Channels { options, cached: Arc::default(), serials: Arc::default() }
    }

    /// The options channels open with.
    pub fn options(&self) -> &ChannelOptions {
        &self.options
    }

    /// The endpoint for `address` ("host:port", or a URI with a scheme) with
    /// these options: Nagle's algorithm off, the connect timeout, keep-alive.
    /// (With TLS, connect it through `transport::tls::Connector`, as
    /// [`Channels::get`] and [`Channels::connect`] do.)
    pub fn endpoint(&self, address: &str) -> Result<Endpoint, ChannelError> {
        let uri = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
        let endpoint = Endpoint::from_shared(uri)
            .map_err(|e| ChannelError::BadAddress { address: address.to_string(), reason: e.to_string() })?
            .connect_timeout(self.options.connect_timeout)
            .tcp_nodelay(true);
        Ok(match self.options.keep_alive_interval {
            Some(interval) => endpoint.http2_keep_alive_interval(interval),
            None => endpoint,
        })
    }

    /// The cached channel to `address`, or a new lazily connected one. Must be
    /// called inside a tokio runtime (a channel runs a task).
    pub fn get(&self, address: &str) -> Result<CachedChannel, ChannelError> {
        let mut cached = lock(&self.cached);
        if let Some(entry) = cached.get(address) {
            return Ok(CachedChannel { address: address.into(), serial: entry.serial, channel: entry.channel.clone() });
        }
        let endpoint = self.endpoint(address)?;
        let channel = match &self.options.tls {
            Some(tls) => endpoint.connect_with_connector_lazy(Connector::new(tls.clone())),
            None => endpoint.connect_lazy(),
        };
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        cached.insert(address.to_string(), Cached { serial, channel: channel.clone(), connected: false });
        Ok(CachedChannel { address: address.into(), serial, channel })
    }

    /// The cached channel to `address` if it was connected when cached (and
    /// not evicted since), else a connection opened now, within the connect
    /// timeout, which replaces a lazy one in the cache.
    pub async fn connect(&self, address: &str) -> Result<CachedChannel, ChannelError> {
        if let Some(entry) = lock(&self.cached).get(address).filter(|entry| entry.connected) {
            return Ok(CachedChannel { address: address.into(), serial: entry.serial, channel: entry.channel.clone() });
        }
        let endpoint = self.endpoint(address)?;
        // The endpoint's timeout covers the TCP connect; this bounds the
        // HTTP/2 handshake after it too.
        let timeout = self.options.connect_timeout + Duration::from_millis(100);
        let connecting = async {
            match &self.options.tls {
                Some(tls) => endpoint.connect_with_connector(Connector::new(tls.clone())).await,
                None => endpoint.connect().await,
            }
        };
        let channel = match tokio::time::timeout(timeout, connecting).await {
            Ok(Ok(channel)) => channel,
            Ok(Err(error)) => {
                return Err(ChannelError::Connect { address: address.to_string(), reason: error_chain(&error) })
            }
            Err(_) => return Err(ChannelError::Timeout { address: address.to_string(), timeout }),
        };
        let serial = self.serials.fetch_add(1, Ordering::Relaxed);
        lock(&self.cached).insert(address.to_string(), Cached { serial, channel: channel.clone(), connected: true });
        Ok(CachedChannel { address: address.into(), serial, channel })
    }

    /// Forgets `channel` if it is still the cached one for its address (a
    /// newer one is kept); returns whether it was. The next call connects anew.
    pub fn evict(&self, channel: &CachedChannel) -> bool {
        let mut cached = lock(&self.cached);
        if cached.get(channel.address()).is_some_and(|entry| entry.serial == channel.serial) {
            cached.remove(channel.address());
            return true;
        }
        false
    }

    /// Forgets whatever channel is cached for `address` (it moved, say).
    pub fn evict_address(&self, address: &str) -> bool {
        lock(&self.cached).remove(address).is_some()
    }

    /// Evicts `channel` if `status` says a call on it could not connect;
    /// returns whether it did.
    pub fn evict_on_connect_error(&self, channel: &CachedChannel, status: &tonic::Status) -> bool {
        is_connect_error(status) && self.evict(channel)
    }

    /// How many addresses have a cached channel.
    pub fn len(&self) -> usize {
        lock(&self.cached).len()
    }

    /// Whether no address has a cached channel.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Whether a failed call never left because its channel could not connect
/// (tonic marks those with a `ConnectError` among the status's sources).
pub fn is_connect_error(status: &tonic::Status) -> bool {
    caused_by::<tonic::ConnectError>(status)
}

/// Whether an error of type `E` is among the status's sources (tonic wraps
/// transport failures: a connect error, a client-side timeout, ...).
pub fn caused_by<E: std::error::Error + 'static>(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<E>() {
            return true;
        }
        source = error.source();
    }
    false
}

/// An error and its sources, as one line ("transport error: connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text = format!("{text}: {cause_text}");
        }
        source = cause.source();
    }
    text
}
