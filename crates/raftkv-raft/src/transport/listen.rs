//! Accepting connections within bounds: at most so many open connections
//! per listener and per client address (one client cannot lock the others
//! out), TLS handshakes in their own tasks under a deadline (a client that
//! stalls its handshake holds one slot, not the accept loop), and accept
//! errors (out of descriptors, say) waited out instead of spun on.
//!
//! [`incoming`] turns a `TcpListener` into a stream of [`Conn`]s, each holding
//! its slot until it is dropped; a tonic server takes the stream as is
//! (`serve_with_incoming`), and the connection's [`ConnInfo`] (the client's
//! address and, with TLS, its verified certificate) reaches every request's
//! extensions, where the header check finds it.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::tls::{PeerCertificate, Tls};
use crate::locks::lock;

/// Which TLS a listener speaks.
#[derive(Clone, Debug)]
pub enum ListenTls {
    /// Plain TCP.
    None,
    /// The raft port: peers must present a cluster certificate.
    Mutual(Tls),
    /// An HTTP API: TLS, client certificates required or not asked for.
    Http {
        /// The server's material.
        tls: Tls,
        /// Whether clients must present a certificate the CA signed; if not,
        /// none is asked for.
        require_client_certificate: bool,
    },
}

/// How many connections a listener keeps, and how long a handshake may take.
#[derive(Clone, Debug)]
pub struct ListenLimits {
    /// Open connections on the listener, all clients together.
    pub max_connections: usize,
    /// Open connections from one IP address.
    pub max_per_address: usize,
    /// A TLS handshake not done by then is dropped, and so is a connection
    /// whose first bytes (after any handshake) do not arrive by then.
    pub handshake_timeout: Duration,
    /// Written to a connection refused for being over a cap, before it is
    /// closed (an HTTP listener answers a 503 this way); empty: just closed.
    pub refusal: &'static [u8],
}

impl Default for ListenLimits {
    fn default() -> ListenLimits {
        ListenLimits {
            max_connections: 4096,
            max_per_address: 1024,
            handshake_timeout: Duration::from_secs(10),
            refusal: b"",
        }
    }
}

/// What a connection is known by: where it comes from, and the certificate
/// its peer presented (verified against the CA), if any.
#[derive(Clone, Debug)]
pub struct ConnInfo {
    /// The client's address.
    pub remote: SocketAddr,
    /// The certificate the client presented, verified against the CA.
    pub certificate: Option<PeerCertificate>,
}

/// Open connections, counted per address; a [`Slot`] gives its count back
/// when dropped.
#[derive(Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

struct Slot {
    counts: Arc<Mutex<Counts>>,
    address: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(count) = counts.per_address.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.per_address.remove(&self.address);
            }
        }
    }
}

/// Takes a slot for `address`, or says which cap is full.
fn take_slot(counts: &Arc<Mutex<Counts>>, limits: &ListenLimits, address: IpAddr) -> Result<Slot, &'static str> {
    let mut guard = lock(counts);
    if guard.total >= limits.max_connections {
        return Err("the listener's connection cap");
    }
    let mine = guard.per_address.entry(address).or_insert(0);
    if *mine >= limits.max_per_address {
        return Err("the per-address connection cap");
    }
    *mine += 1;
    guard.total += 1;
    Ok(Slot { counts: counts.clone(), address })
}

enum Stream {
    Plain(TcpStream),
    Client(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// An accepted connection: plain or TLS, holding its slot.
pub struct Conn {
    stream: Stream,
    info: ConnInfo,
    _slot: Slot,
    /// Until the first bytes arrive: when the connection is given up on.
    first_bytes: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl Conn {
    fn new(stream: Stream, info: ConnInfo, slot: Slot, timeout: Duration) -> Conn {
        Conn { stream, info, _slot: slot, first_bytes: Some(Box::pin(tokio::time::sleep(timeout))) }
    }
}

impl Conn {
    /// What the connection is known by.
    pub fn info(&self) -> &ConnInfo {
        &self.info
    }
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = match &mut this.stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Client(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        };
        if let Some(deadline) = &mut this.first_bytes {
            if buf.filled().len() > before {
                this.first_bytes = None;
            } else if polled.is_pending() && deadline.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "no request within the deadline")));
            }
        }
        polled
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Client(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Client(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match &self.stream {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Client(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Client(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &mut self.get_mut().stream {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Client(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;

    fn connect_info(&self) -> ConnInfo {
        self.info.clone()
    }
}

/// The connections `listener` accepts, within `limits`, with `tls`. The
/// accept loop runs in a task that ends when the stream is dropped.
pub fn incoming(
    listener: TcpListener,
    limits: ListenLimits,
    tls: ListenTls,
) -> tokio_stream::wrappers::ReceiverStream<io::Result<Conn>> {
    // Each queued connection holds a slot, so the queue is bounded by the caps.
    let (accepted, stream) = mpsc::channel(limits.max_connections.clamp(1, 1 << 16));
    tokio::spawn(accept_loop(listener, limits, tls, accepted));
    tokio_stream::wrappers::ReceiverStream::new(stream)
}

async fn accept_loop(
    listener: TcpListener,
    limits: ListenLimits,
    tls: ListenTls,
    accepted: mpsc::Sender<io::Result<Conn>>,
) {
    let counts = Arc::new(Mutex::new(Counts::default()));
    let local = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mut refusals = super::Ratelimited::new(Duration::from_secs(10));
    loop {
        let (tcp, remote) = tokio::select! {
            () = accepted.closed() => return,
            result = listener.accept() => match result {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of descriptors (EMFILE/ENFILE), or a connection reset
                    // before it was taken: wait a little rather than spin.
                    if refusals.allow() {
                        tracing::warn!(listener = %local, %error, suppressed = refusals.take_suppressed(), "cannot accept a connection");
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let slot = match take_slot(&counts, &limits, remote.ip()) {
            Ok(slot) => slot,
            Err(cap) => {
                if refusals.allow() {
                    tracing::warn!(listener = %local, client = %remote, cap, suppressed = refusals.take_suppressed(), "connection refused: over a cap");
                }
                if !limits.refusal.is_empty() {
                    // A fresh socket's send buffer takes a short answer at
                    // once. Written on the plain socket: tokio's `try_write`
                    // refuses (WouldBlock) until the reactor has seen the
                    // new socket writable, and a busy reactor had not, so
                    // the answer was lost.
                    if let Ok(mut socket) = tcp.into_std() {
                        let _ = std::io::Write::write(&mut socket, limits.refusal);
                    }
                } else {
                    drop(tcp);
                }
                continue;
            }
        };
        let config = match &tls {
            ListenTls::None => {
                let info = ConnInfo { remote, certificate: None };
                let conn = Conn::new(Stream::Plain(tcp), info, slot, limits.handshake_timeout);
                if accepted.send(Ok(conn)).await.is_err() {
                    return;
                }
                continue;
            }
            ListenTls::Mutual(tls) => tls.mutual_server_config(),
            ListenTls::Http { tls, require_client_certificate } => tls.http_server_config(*require_client_certificate),
        };
        let (accepted, timeout, local) = (accepted.clone(), limits.handshake_timeout, local.clone());
        tokio::spawn(async move {
            let handshake = tokio_rustls::TlsAcceptor::from(config).accept(tcp);
            let stream = match tokio::time::timeout(timeout, handshake).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(error)) => {
                    tracing::debug!(listener = %local, client = %remote, %error, "TLS handshake refused");
                    return;
                }
                Err(_) => {
                    tracing::debug!(listener = %local, client = %remote, ?timeout, "TLS handshake not done in time");
                    return;
                }
            };
            let certificate = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| PeerCertificate(leaf.clone().into_owned()));
            let info = ConnInfo { remote, certificate };
            let _ = accepted.send(Ok(Conn::new(Stream::Client(Box::new(stream)), info, slot, timeout))).await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_capped_per_address_and_in_all_and_given_back() {
        let limits = ListenLimits { max_connections: 3, max_per_address: 2, ..ListenLimits::default() };
        let counts = Arc::new(Mutex::new(Counts::default()));
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let first = take_slot(&counts, &limits, a).unwrap();
        let _second = take_slot(&counts, &limits, a).unwrap();
        assert_eq!(take_slot(&counts, &limits, a).err(), Some("the per-address connection cap"));
        let _third = take_slot(&counts, &limits, b).unwrap();
        assert_eq!(take_slot(&counts, &limits, b).err(), Some("the listener's connection cap"));
        drop(first);
        let _again = take_slot(&counts, &limits, a).unwrap();
        assert_eq!(lock(&counts).total, 3);
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_given_up_and_one_that_sends_is_read() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let limits = ListenLimits { handshake_timeout: Duration::from_millis(100), ..ListenLimits::default() };
        let mut incoming = incoming(listener, limits, ListenTls::None);
        let _silent = TcpStream::connect(address).await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        let mut buffer = [0u8; 8];
        let error = conn.read(&mut buffer).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        let mut talker = TcpStream::connect(address).await.unwrap();
        talker.write_all(b"hello").await.unwrap();
        let mut conn = incoming.next().await.unwrap().unwrap();
        assert_eq!(conn.read(&mut buffer).await.unwrap(), 5);
        // Once it has spoken, a pause is no longer the first bytes' deadline.
        tokio::time::sleep(Duration::from_millis(300)).await;
        talker.write_all(b"!").await.unwrap();
        assert_eq!(conn.read(&mut buffer).await.unwrap(), 1);
    }
}
