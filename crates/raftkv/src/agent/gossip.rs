//! Gossip: SWIM membership with suspicion (the `foca` crate) over UDP, like
//! Consul's serf. Nodes find each other and each other's raft and HTTP
//! addresses, and learn which are alive, suspect or down, without any
//! configuration in force: a node started with only one member's gossip
//! address finds the rest, and `--bootstrap-expect` founders find each other.
//!
//! Each datagram is `MAGIC`, the sender's cluster id (empty before it has
//! one) and foca's packet. A node that has a cluster id drops datagrams of
//! another cluster; a node without one (a new server) accepts any, and
//! notes which cluster ids it has heard (so it joins a cluster that exists
//! rather than bootstrap another). Datagrams are bounded by
//! `MAX_DATAGRAM`, and queued input is bounded (excess is dropped, as the
//! network might).
//!
//! With a key (`--encrypt`, 32 bytes, the same on every member), each
//! datagram is sealed whole with AES-256-GCM: `SEALED_MAGIC`, a random
//! 96-bit nonce, then the sealed frame and its tag; a datagram that does not
//! open with the key (no key, another key, altered, plain) is dropped, so
//! only holders of the key can gossip. Without a key there is no
//! authentication beyond the cluster id: anyone who can reach the gossip port
//! can claim membership.
//!
//! One task owns the foca instance; the socket's reader and the timers send
//! it inputs; what it knows is published in a `watch` as a `GossipView`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::num::{NonZeroU32, NonZeroUsize};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use foca::{AccumulatingRuntime, Codec, Foca, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot, watch};

const MAGIC: &[u8; 4] = b"RKG1";
/// The magic of a sealed datagram (see the module doc).
const SEALED_MAGIC: &[u8; 4] = b"RKE1";
const NONCE: usize = 12;
/// Longest datagram sent or read (foca's packets stay within 1,400 bytes),
/// sealed or not.
pub const MAX_DATAGRAM: usize = 1400 + 4 + 1 + MAX_CLUSTER_ID + SEALED_MAGIC.len() + NONCE + 16;
const MAX_CLUSTER_ID: usize = 64;
/// Inputs waiting for the gossip task; more are dropped.
const QUEUE: usize = 1024;
/// How long a member declared down is remembered.
const REMOVE_DOWN_AFTER: Duration = Duration::from_secs(120);
/// The view is published at once on a membership notification, else at
/// most this often (building it is O(members)).
const PUBLISH_EVERY: Duration = Duration::from_millis(100);
/// How long a cluster id heard counts as a cluster that exists.
const HEARD_FOR: Duration = Duration::from_secs(10);

/// A node as gossip names it: its raft id and addresses, and a generation
/// that grows with each start (and each rejoin after being declared down),
/// so that the newest identity for an address wins.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct GossipId {
    pub node: u64,
    pub gossip_addr: SocketAddr,
    pub raft_addr: String,
    pub http_addr: String,
    pub generation: u64,
}

impl GossipId {
    /// Stands for whoever answers at `addr` (a `--join` address), until its
    /// real identity, of any later generation, replaces it.
    fn placeholder(addr: SocketAddr) -> GossipId {
        GossipId { node: 0, gossip_addr: addr, raft_addr: String::new(), http_addr: String::new(), generation: 0 }
    }
}

impl foca::Identity for GossipId {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<GossipId> {
        // Now, or one past the last if the clock went back: a rejoin wins
        // over any identity whose generation `CheckedCodec` let in.
        Some(GossipId { generation: self.generation.saturating_add(1).max(now_nanos()), ..self.clone() })
    }

    fn addr(&self) -> SocketAddr {
        self.gossip_addr
    }

    fn win_addr_conflict(&self, adversary: &GossipId) -> bool {
        self.generation > adversary.generation
    }
}

/// Wall-clock nanoseconds: identities' generations are drawn from it.
pub fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos().min(u128::from(u64::MAX)) as u64)
        .max(1)
}

/// How far in the future (by this node's clock) another identity's
/// generation may be: clock skew between nodes, not more. A forged
/// identity with a generation far ahead would otherwise win every conflict
/// for its address for as long as gossip remembers it, and send the real
/// node into rejoining forever.
const GENERATION_SKEW: Duration = Duration::from_secs(60);

/// Members gossip keeps at most (alive, suspect and down): beyond it, no
/// membership update is taken until down members are forgotten. raftkv
/// clusters have a handful of servers; the bound is for made-up members.
const MAX_MEMBERS: usize = 1024;

/// foca's postcard codec, refusing identities from the future (see
/// `GENERATION_SKEW`) and membership updates once `MAX_MEMBERS` are known
/// (`members` is kept up to date by the member task).
#[derive(Clone, Debug, Default)]
struct CheckedCodec {
    members: Arc<std::sync::atomic::AtomicUsize>,
}

#[derive(Debug, thiserror::Error)]
enum CodecError {
    #[error("{0}")]
    Postcard(<PostcardCodec as Codec<GossipId>>::Error),
    #[error("node {node} at {addr} claims a generation {ahead_s} s ahead of this node's clock")]
    FromTheFuture { node: u64, addr: SocketAddr, ahead_s: u64 },
    #[error("{MAX_MEMBERS} members known already; membership updates are refused")]
    TooManyMembers,
}

impl CheckedCodec {
    fn check(id: &GossipId) -> Result<(), CodecError> {
        let limit = now_nanos().saturating_add(GENERATION_SKEW.as_nanos() as u64);
        if id.generation > limit {
            let ahead_s = (id.generation - limit) / 1_000_000_000 + GENERATION_SKEW.as_secs();
            return Err(CodecError::FromTheFuture { node: id.node, addr: id.gossip_addr, ahead_s });
        }
        Ok(())
    }
}

impl Codec<GossipId> for CheckedCodec {
    type Error = CodecError;

    fn encode_header(&mut self, header: &foca::Header<GossipId>, buf: impl bytes::BufMut) -> Result<(), CodecError> {
        PostcardCodec.encode_header(header, buf).map_err(CodecError::Postcard)
    }

    fn decode_header(&mut self, buf: impl bytes::Buf) -> Result<foca::Header<GossipId>, CodecError> {
        let header = PostcardCodec.decode_header(buf).map_err(CodecError::Postcard)?;
        CheckedCodec::check(&header.src)?;
        CheckedCodec::check(&header.dst)?;
        Ok(header)
    }

    fn encode_member(&mut self, member: &foca::Member<GossipId>, buf: impl bytes::BufMut) -> Result<(), CodecError> {
        PostcardCodec.encode_member(member, buf).map_err(CodecError::Postcard)
    }

    fn decode_member(&mut self, buf: impl bytes::Buf) -> Result<foca::Member<GossipId>, CodecError> {
        if self.members.load(std::sync::atomic::Ordering::Relaxed) >= MAX_MEMBERS {
            return Err(CodecError::TooManyMembers);
        }
        let member = PostcardCodec.decode_member(buf).map_err(CodecError::Postcard)?;
        CheckedCodec::check(member.id())?;
        Ok(member)
    }
}

/// A member's liveness as gossip sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Liveness {
    Alive,
    /// Someone failed to reach it; it is declared down unless it refutes
    /// the suspicion in time.
    Suspect,
    /// Declared down (failed, or left).
    Down,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipMember {
    pub id: GossipId,
    pub liveness: Liveness,
}

/// What gossip knows now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GossipView {
    /// Every member known, this node included, lowest node id first.
    pub members: Vec<GossipMember>,
    /// Cluster ids heard from other nodes in the last `HEARD_FOR`, with an
    /// address that sent each.
    pub clusters: BTreeMap<String, SocketAddr>,
}

impl GossipView {
    /// The liveness of raft node `node` (its newest identity), if known.
    pub fn liveness(&self, node: u64) -> Option<Liveness> {
        self.members.iter().filter(|m| m.id.node == node).max_by_key(|m| m.id.generation).map(|m| m.liveness)
    }

    pub fn alive(&self) -> impl Iterator<Item = &GossipId> {
        self.members.iter().filter(|m| m.liveness != Liveness::Down && m.id.node != 0).map(|m| &m.id)
    }
}

/// Timing of the failure detector.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GossipConfig {
    /// Where gossip listens; other nodes send here, so it must be reachable.
    pub addr: SocketAddr,
    /// How often each node probes one other (memberlist's LAN default: 1 s).
    pub probe_period: Duration,
    /// How long a suspect has to refute the suspicion before it is declared
    /// down.
    pub suspect_to_down: Duration,
    /// Seals every datagram; members without it are not heard.
    pub key: Option<GossipKey>,
}

/// The key gossip datagrams are sealed with (AES-256-GCM).
#[derive(Clone)]
pub struct GossipKey(Arc<ring::aead::LessSafeKey>, [u8; 8]);

impl PartialEq for GossipKey {
    /// Keys compare by a fingerprint (a SHA-256 prefix) of their bytes.
    fn eq(&self, other: &GossipKey) -> bool {
        self.1 == other.1
    }
}

impl Eq for GossipKey {}

impl std::fmt::Debug for GossipKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GossipKey(<hidden>)")
    }
}

impl GossipKey {
    /// A key from its base64 text (`raftkv keygen`): 32 bytes.
    pub fn from_base64(text: &str) -> Result<GossipKey, String> {
        use base64::Engine;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| "the gossip key is not base64 (make one with `raftkv keygen`)".to_string())?;
        GossipKey::from_bytes(&bytes)
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<GossipKey, String> {
        let unbound = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, bytes)
            .map_err(|_| format!("the gossip key must be 32 bytes, not {}", bytes.len()))?;
        let mut fingerprint = [0u8; 8];
        fingerprint.copy_from_slice(&ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..8]);
        Ok(GossipKey(Arc::new(ring::aead::LessSafeKey::new(unbound)), fingerprint))
    }

    /// `SEALED_MAGIC`, a random nonce, `frame` sealed; `None` if no
    /// randomness could be had.
    fn seal(&self, frame: &[u8]) -> Option<Bytes> {
        let mut nonce = [0u8; NONCE];
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut nonce).ok()?;
        let mut sealed = frame.to_vec();
        let aad = ring::aead::Aad::from(SEALED_MAGIC);
        self.0.seal_in_place_append_tag(ring::aead::Nonce::assume_unique_for_key(nonce), aad, &mut sealed).ok()?;
        let mut datagram = BytesMut::with_capacity(SEALED_MAGIC.len() + NONCE + sealed.len());
        datagram.put_slice(SEALED_MAGIC);
        datagram.put_slice(&nonce);
        datagram.put_slice(&sealed);
        Some(datagram.freeze())
    }

    /// The frame inside a sealed datagram, if it opens with this key.
    fn open<'a>(&self, datagram: &'a mut [u8]) -> Option<&'a [u8]> {
        let rest = datagram.strip_prefix(SEALED_MAGIC.as_slice())?;
        if rest.len() < NONCE {
            return None;
        }
        let start = SEALED_MAGIC.len() + NONCE;
        let nonce = ring::aead::Nonce::try_assume_unique_for_key(&datagram[SEALED_MAGIC.len()..start]).ok()?;
        let aad = ring::aead::Aad::from(SEALED_MAGIC);
        let opened = self.0.open_in_place(nonce, aad, &mut datagram[start..]).ok()?;
        Some(opened)
    }
}

impl GossipConfig {
    pub fn new(addr: SocketAddr) -> GossipConfig {
        GossipConfig { addr, probe_period: Duration::from_secs(1), suspect_to_down: Duration::from_secs(5), key: None }
    }

    fn foca_config(&self) -> foca::Config {
        let mut config = foca::Config::new_lan(NonZeroU32::MIN.saturating_add(7));
        config.probe_period = self.probe_period;
        // A member declared down is forgotten after a while (foca's default
        // is a day), so that made-up members cannot pile up: a real one that
        // returns does so with a newer generation anyway.
        config.remove_down_after = Some(REMOVE_DOWN_AFTER);
        // A probe's answer must come well within a period.
        config.probe_rtt = self.probe_period / 2;
        config.suspect_to_down_after = self.suspect_to_down;
        config.max_packet_size = NonZeroUsize::new(1400).unwrap_or(NonZeroUsize::MIN);
        config
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.probe_period < Duration::from_millis(10) || self.suspect_to_down < self.probe_period {
            return Err("the gossip probe period must be at least 10 ms and at most the suspicion time".into());
        }
        Ok(())
    }
}

enum Input {
    /// A packet from `from`, sent by a member of `cluster` ("" before it has one).
    Data {
        from: SocketAddr,
        cluster: String,
        packet: Bytes,
    },
    Timer(Timer<GossipId>),
    Announce(SocketAddr),
    Leave(oneshot::Sender<()>),
}

/// The handle of a running gossip member.
#[derive(Clone)]
pub struct Gossip {
    inputs: mpsc::Sender<Input>,
    view: watch::Receiver<GossipView>,
    me: GossipId,
}

impl Gossip {
    /// Binds `config.addr` and joins nobody yet (`announce` does). The
    /// datagrams it sends carry the cluster id in `cluster_id` at the time.
    pub async fn start(
        config: &GossipConfig,
        me: GossipId,
        cluster_id: watch::Receiver<String>,
    ) -> std::io::Result<(Gossip, tokio::task::JoinHandle<()>)> {
        let socket = UdpSocket::bind(config.addr).await?;
        Ok(Gossip::start_on(socket, config, me, cluster_id))
    }

    /// Like `start`, on a socket bound already (at `config.addr`).
    pub fn start_on(
        socket: UdpSocket,
        config: &GossipConfig,
        me: GossipId,
        cluster_id: watch::Receiver<String>,
    ) -> (Gossip, tokio::task::JoinHandle<()>) {
        let socket = Arc::new(socket);
        let (inputs, receiver) = mpsc::channel(QUEUE);
        let (publish, view) = watch::channel(GossipView::default());
        let seed = fastrand::u64(..);
        let codec = CheckedCodec::default();
        let known = codec.members.clone();
        let foca = Foca::new(me.clone(), config.foca_config(), SmallRng::seed_from_u64(seed), codec);
        let member = Member {
            known,
            foca,
            runtime: AccumulatingRuntime::new(),
            socket: socket.clone(),
            inputs: inputs.clone(),
            publish,
            cluster_id: cluster_id.clone(),
            heard: BTreeMap::new(),
            rejoins: (None, 0),
            published: std::time::Instant::now(),
            key: config.key.clone(),
        };
        let reader = tokio::spawn(read(socket, inputs.clone(), cluster_id, config.key.clone()));
        let task = tokio::spawn(async move {
            member.run(receiver).await;
            reader.abort();
        });
        (Gossip { inputs, view, me }, task)
    }

    pub fn me(&self) -> &GossipId {
        &self.me
    }

    /// Introduces this node to whoever gossips at `addr`.
    pub fn announce(&self, addr: SocketAddr) {
        let _full = self.inputs.try_send(Input::Announce(addr));
    }

    /// `announce` to each of `addrs` but this node's own address.
    pub fn announce_all(&self, addrs: impl IntoIterator<Item = SocketAddr>) {
        for addr in addrs.into_iter().filter(|addr| *addr != self.me.gossip_addr) {
            self.announce(addr);
        }
    }

    /// Tells the others that this node leaves (it is declared down at once
    /// rather than after a suspicion); resolves once the news went out.
    pub async fn leave(&self) {
        let (done, left) = oneshot::channel();
        if self.inputs.send(Input::Leave(done)).await.is_ok() {
            let _ = left.await;
        }
    }

    pub fn view(&self) -> GossipView {
        self.view.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<GossipView> {
        self.view.clone()
    }
}

/// Reads datagrams: checks the frame and the cluster id, then hands foca's
/// packet (with the sender's cluster id) to the member task.
async fn read(
    socket: Arc<UdpSocket>,
    inputs: mpsc::Sender<Input>,
    cluster_id: watch::Receiver<String>,
    key: Option<GossipKey>,
) {
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    loop {
        let (len, from) = match socket.recv_from(&mut buffer).await {
            Ok(received) => received,
            Err(error) => {
                tracing::debug!(%error, "gossip receive failed");
                continue;
            }
        };
        let framed = match &key {
            Some(key) => match key.open(&mut buffer[..len]) {
                Some(frame) => frame,
                None => {
                    tracing::debug!(%from, len, "gossip datagram refused: does not open with our key");
                    continue;
                }
            },
            None => &buffer[..len],
        };
        let Some((theirs, packet)) = unframe(framed) else {
            tracing::debug!(%from, len, "gossip datagram refused: not ours or malformed");
            continue;
        };
        let ours = cluster_id.borrow().clone();
        if !ours.is_empty() && !theirs.is_empty() && ours != theirs {
            tracing::debug!(%from, cluster = theirs, "gossip datagram of another cluster dropped");
            continue;
        }
        let input = Input::Data { from, cluster: theirs.to_string(), packet: Bytes::copy_from_slice(packet) };
        // Queue full: dropped, as the network may drop it.
        let _ = inputs.try_send(input);
    }
}

/// The frame of a datagram: magic, cluster id (length-prefixed, UTF-8),
/// packet. `None` for anything else.
fn unframe(datagram: &[u8]) -> Option<(&str, &[u8])> {
    let rest = datagram.strip_prefix(MAGIC)?;
    let (&len, rest) = rest.split_first()?;
    let len = usize::from(len);
    if len > MAX_CLUSTER_ID || rest.len() < len {
        return None;
    }
    let (id, packet) = rest.split_at(len);
    let id = std::str::from_utf8(id).ok()?;
    (!packet.is_empty()).then_some((id, packet))
}

fn frame(cluster_id: &str, packet: &[u8]) -> Bytes {
    let id = if cluster_id.len() <= MAX_CLUSTER_ID { cluster_id.as_bytes() } else { &[] };
    let mut datagram = BytesMut::with_capacity(MAGIC.len() + 1 + id.len() + packet.len());
    datagram.put_slice(MAGIC);
    datagram.put_u8(id.len() as u8);
    datagram.put_slice(id);
    datagram.put_slice(packet);
    datagram.freeze()
}

struct Member {
    /// How many members foca holds, for `CheckedCodec`'s bound.
    known: Arc<std::sync::atomic::AtomicUsize>,
    foca: Foca<GossipId, CheckedCodec, SmallRng, foca::NoCustomBroadcast>,
    runtime: AccumulatingRuntime<GossipId>,
    socket: Arc<UdpSocket>,
    inputs: mpsc::Sender<Input>,
    publish: watch::Sender<GossipView>,
    cluster_id: watch::Receiver<String>,
    /// Cluster ids heard from others, with an address and when last.
    heard: BTreeMap<String, (SocketAddr, std::time::Instant)>,
    /// When this node last said it rejoined, and how often since.
    rejoins: (Option<std::time::Instant>, u64),
    /// When the view was last built.
    published: std::time::Instant,
    /// Seals what is sent.
    key: Option<GossipKey>,
}

impl Member {
    async fn run(mut self, mut receiver: mpsc::Receiver<Input>) {
        // The first probe and the periodic gossip start with foca's own timers.
        if let Err(error) = self.foca.gossip(&mut self.runtime) {
            tracing::debug!(%error, "gossip: first round");
        }
        self.flush().await;
        while let Some(input) = receiver.recv().await {
            let result = match input {
                Input::Data { from, cluster, packet } => {
                    let handled = self.foca.handle_data(&packet, &mut self.runtime);
                    // Only a packet foca took says a cluster exists there.
                    if handled.is_ok()
                        && !cluster.is_empty()
                        && (self.heard.len() < 64 || self.heard.contains_key(&cluster))
                    {
                        self.heard.insert(cluster, (from, std::time::Instant::now()));
                    }
                    handled
                }
                Input::Timer(timer) => self.foca.handle_timer(timer, &mut self.runtime),
                Input::Announce(addr) => self.foca.announce(GossipId::placeholder(addr), &mut self.runtime),
                Input::Leave(done) => {
                    let left = self.foca.leave_cluster(&mut self.runtime);
                    self.flush().await;
                    let _ = done.send(());
                    left
                }
            };
            if let Err(error) = result {
                // Malformed or unexpected packets: the sender is wrong, not us.
                tracing::debug!(%error, "gossip input ignored");
            }
            self.flush().await;
        }
    }

    /// Sends what foca queued, schedules its timers, publishes the view.
    async fn flush(&mut self) {
        self.known.store(self.foca.iter_membership_state().len(), std::sync::atomic::Ordering::Relaxed);
        self.heard.retain(|_, (_, at)| at.elapsed() < HEARD_FOR);
        let cluster_id = self.cluster_id.borrow().clone();
        while let Some((to, packet)) = self.runtime.to_send() {
            let mut datagram = frame(&cluster_id, &packet);
            if let Some(key) = &self.key {
                let Some(sealed) = key.seal(&datagram) else {
                    tracing::warn!("no randomness to seal a gossip datagram with; not sent");
                    continue;
                };
                datagram = sealed;
            }
            if let Err(error) = self.socket.send_to(&datagram, to.gossip_addr).await {
                tracing::debug!(%error, to = %to.gossip_addr, "gossip send failed");
            }
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            let inputs = self.inputs.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                // Timers must be delivered; this queue only fills if the task stops.
                let _ = inputs.send(Input::Timer(timer)).await;
            });
        }
        let mut changed = false;
        while let Some(notification) = self.runtime.to_notify() {
            changed = true;
            match notification {
                OwnedNotification::MemberUp(id) => {
                    tracing::info!(node = id.node, addr = %id.gossip_addr, "gossip: member up")
                }
                OwnedNotification::MemberDown(id) => {
                    tracing::warn!(node = id.node, addr = %id.gossip_addr, "gossip: member down")
                }
                OwnedNotification::Rejoin(id) => {
                    // Said at most every 5 s: a forged verdict can repeat it.
                    let (last, count) = &mut self.rejoins;
                    *count += 1;
                    if last.is_none_or(|at| at.elapsed() >= Duration::from_secs(5)) {
                        tracing::warn!(generation = id.generation, times = *count, "gossip: declared down; rejoined");
                        *last = Some(std::time::Instant::now());
                        *count = 0;
                    }
                }
                OwnedNotification::Defunct => tracing::warn!("gossip: this node is declared down"),
                _ => {}
            }
        }
        if changed || self.published.elapsed() >= PUBLISH_EVERY {
            let view = self.view();
            self.published = std::time::Instant::now();
            if *self.publish.borrow() != view {
                self.publish.send_replace(view);
            }
        }
    }

    fn view(&self) -> GossipView {
        let me = self.foca.identity().clone();
        let mut members: Vec<GossipMember> = self
            .foca
            .iter_membership_state()
            .filter(|m| m.id().node != 0 && m.id().gossip_addr != me.gossip_addr)
            .map(|m| GossipMember {
                id: m.id().clone(),
                liveness: match m.state() {
                    foca::State::Alive => Liveness::Alive,
                    foca::State::Suspect => Liveness::Suspect,
                    foca::State::Down => Liveness::Down,
                },
            })
            .collect();
        members.push(GossipMember { id: me, liveness: Liveness::Alive });
        members.sort_by_key(|m| (m.id.node, m.id.generation));
        let fresh = |at: &std::time::Instant| at.elapsed() < HEARD_FOR;
        let clusters =
            self.heard.iter().filter(|(_, (_, at))| fresh(at)).map(|(id, (from, _))| (id.clone(), *from)).collect();
        GossipView { members, clusters }
    }
}

/// The receive path of a member without its socket, for the fuzz tests
/// (the workspace's and cargo-fuzz's): what a datagram from the network
/// goes through, in the same order as `read` and `Member::run`.
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    type Node = (
        Foca<GossipId, CheckedCodec, SmallRng, foca::NoCustomBroadcast>,
        AccumulatingRuntime<GossipId>,
        Arc<std::sync::atomic::AtomicUsize>,
    );

    fn node(id: u64) -> Node {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16));
        let me = GossipId {
            node: id,
            gossip_addr: addr,
            raft_addr: format!("127.0.0.1:{}", 8000 + id),
            http_addr: format!("127.0.0.1:{}", 9000 + id),
            // Fixed (November 2023), so that the samples are addressed to
            // the member that `receive` builds.
            generation: 1_700_000_000_000_000_000,
        };
        let config = GossipConfig::new(addr).foca_config();
        let codec = CheckedCodec::default();
        let known = codec.members.clone();
        (Foca::new(me, config, SmallRng::seed_from_u64(id), codec), AccumulatingRuntime::new(), known)
    }

    /// Runs the timers foca asked for so far, once each, and drops what it
    /// sends and notifies; returns the packets it sent.
    fn settle((foca, runtime, known): &mut Node) -> Vec<(GossipId, Bytes)> {
        let mut sent = Vec::new();
        let mut timers = Vec::new();
        while let Some((_, timer)) = runtime.to_schedule() {
            timers.push(timer);
        }
        for timer in timers {
            let _ = foca.handle_timer(timer, &mut *runtime);
        }
        while let Some(packet) = runtime.to_send() {
            sent.push(packet);
        }
        while runtime.to_notify().is_some() {}
        while runtime.to_schedule().is_some() {}
        known.store(foca.iter_membership_state().len(), std::sync::atomic::Ordering::Relaxed);
        sent
    }

    /// The key a fuzzed member holds.
    fn key() -> GossipKey {
        // Invariant: 32 bytes always make an AES-256 key.
        GossipKey::from_bytes(&[7u8; 32]).expect("a 32-byte key")
    }

    /// Hands each datagram to one member (node 1 of cluster "fuzz"), as its
    /// socket would: cut at `MAX_DATAGRAM`, opened with the member's key
    /// (sealed with it first if `sealed`, else as sent), unframed, checked
    /// against the cluster id, decoded and applied by foca, its timers run.
    /// Returns how many members it then knows (itself not counted).
    pub fn receive(datagrams: &[Vec<u8>], sealed: bool) -> usize {
        let key = key();
        let mut member = node(1);
        for datagram in datagrams {
            let mut datagram = datagram[..datagram.len().min(MAX_DATAGRAM)].to_vec();
            if sealed {
                match key.seal(&datagram) {
                    Some(sealed) if sealed.len() <= MAX_DATAGRAM + SEALED_MAGIC.len() + NONCE + 16 => {
                        datagram = sealed.to_vec()
                    }
                    _ => continue,
                }
            }
            let opened = key.open(&mut datagram.clone()).map(<[u8]>::to_vec);
            assert!(!sealed || opened.is_some(), "a datagram sealed with the key does not open with it");
            let framed = opened.unwrap_or(datagram);
            let Some((theirs, packet)) = unframe(&framed) else { continue };
            if !theirs.is_empty() && theirs != "fuzz" {
                continue;
            }
            let _ = member.0.handle_data(packet, &mut member.1);
            settle(&mut member);
        }
        let members = member.0.iter_membership_state().len();
        members
    }

    /// Datagrams real members exchange (framed for cluster "fuzz", not
    /// sealed): node 2 announces itself to node 1, and a few rounds of
    /// their answers. Seeds for the fuzzers.
    pub fn samples() -> Vec<Vec<u8>> {
        let (mut one, mut two) = (node(1), node(2));
        let mut datagrams = Vec::new();
        let _ = two.0.announce(one.0.identity().clone(), &mut two.1);
        let mut to_one = settle(&mut two);
        for _ in 0..3 {
            let mut to_two = Vec::new();
            for (_, packet) in to_one.drain(..) {
                datagrams.push(frame("fuzz", &packet).to_vec());
                let _ = one.0.handle_data(&packet, &mut one.1);
                to_two.extend(settle(&mut one));
            }
            for (_, packet) in to_two {
                datagrams.push(frame("fuzz", &packet).to_vec());
                let _ = two.0.handle_data(&packet, &mut two.1);
                to_one.extend(settle(&mut two));
            }
        }
        datagrams
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_strangers_are_refused() {
        let datagram = frame("abc", b"packet");
        assert_eq!(unframe(&datagram), Some(("abc", &b"packet"[..])));
        assert_eq!(unframe(&frame("", b"p")), Some(("", &b"p"[..])));
        assert_eq!(unframe(b"XXXX\x00packet"), None, "another magic");
        assert_eq!(unframe(b"RKG1\x09abc"), None, "a cluster id longer than the datagram");
        assert_eq!(unframe(b"RKG1\x00"), None, "no packet");
        assert_eq!(unframe(b"RKG1\x02\xff\xfepacket"), None, "not UTF-8");
        assert_eq!(unframe(b""), None);
    }

    #[test]
    fn sealed_datagrams_open_only_with_their_key_and_unaltered() {
        let key = GossipKey::from_bytes(&[7u8; 32]).unwrap();
        let other = GossipKey::from_bytes(&[8u8; 32]).unwrap();
        let plain = frame("abc", b"packet");
        let sealed = key.seal(&plain).unwrap();
        assert_ne!(&sealed[..], &plain[..]);
        assert!(sealed.len() <= MAX_DATAGRAM);
        assert_eq!(key.open(&mut sealed.to_vec()), Some(&plain[..]));
        assert_eq!(other.open(&mut sealed.to_vec()), None, "another key");
        for i in [0, 5, 20, sealed.len() - 1] {
            let mut altered = sealed.to_vec();
            altered[i] ^= 1;
            assert_eq!(key.open(&mut altered), None, "byte {i} altered");
        }
        assert_eq!(key.open(&mut plain.to_vec()), None, "not sealed");
        assert_eq!(key.open(&mut sealed[..10].to_vec()), None, "truncated");
        assert_ne!(key.seal(&plain), key.seal(&plain), "a fresh nonce each time");
        assert!(GossipKey::from_base64("c2hvcnQ=").unwrap_err().contains("32 bytes"));
        assert!(GossipKey::from_base64("***").is_err());
        assert!(!format!("{key:?}").contains('7'));
    }

    /// An identity from the future (a forged one, which would win every
    /// conflict for its address for as long as gossip remembers it) is
    /// refused on decoding; one within clock skew is taken; a node's rejoin
    /// generation is never behind its clock.
    #[test]
    fn identities_from_the_future_are_refused() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7001));
        let now = id(3, addr);
        let now = GossipId { generation: now_nanos(), ..now };
        let mut bytes = BytesMut::new();
        let encode = |id: &GossipId, out: &mut BytesMut| {
            CheckedCodec::default().encode_member(&foca::Member::down(id.clone()), &mut *out).unwrap();
        };
        encode(&now, &mut bytes);
        assert!(CheckedCodec::default().decode_member(bytes.split().freeze()).is_ok());
        let forged = GossipId { generation: u64::MAX, ..now.clone() };
        encode(&forged, &mut bytes);
        let refused = CheckedCodec::default().decode_member(bytes.split().freeze());
        assert!(matches!(refused, Err(CodecError::FromTheFuture { node: 3, .. })), "{refused:?}");
        let renewed = foca::Identity::renew(&GossipId { generation: 1, ..now }).unwrap();
        assert!(renewed.generation >= now_nanos() - 1_000_000_000);
    }

    fn id(node: u64, addr: SocketAddr) -> GossipId {
        GossipId { node, gossip_addr: addr, raft_addr: format!("raft-{node}"), http_addr: String::new(), generation: 1 }
    }

    async fn member(node: u64, cluster: &str) -> (Gossip, watch::Sender<String>) {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = socket.local_addr().unwrap();
        drop(socket);
        let config = GossipConfig {
            addr,
            probe_period: Duration::from_millis(50),
            suspect_to_down: Duration::from_millis(300),
            key: None,
        };
        let (cluster_tx, cluster_rx) = watch::channel(cluster.to_string());
        let (gossip, _task) = Gossip::start(&config, id(node, addr), cluster_rx).await.unwrap();
        (gossip, cluster_tx)
    }

    async fn until(gossip: &Gossip, what: &str, check: impl Fn(&GossipView) -> bool) {
        let mut watch = gossip.watch();
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while !check(&watch.borrow_and_update()) {
                if watch.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        assert!(waited.is_ok(), "timed out waiting for {what}: {:?}", gossip.view());
    }

    /// Three members that only know the first find each other; one that
    /// leaves is seen down; a member of another cluster is never let in.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn members_find_each_other_through_one_and_see_a_leave() {
        let (a, _ka) = member(1, "c1").await;
        let (b, _kb) = member(2, "c1").await;
        let (c, _kc) = member(3, "").await;
        let (stranger, _ks) = member(9, "c2").await;
        for other in [&b, &c, &stranger] {
            other.announce(a.me().gossip_addr);
        }
        for (gossip, name) in [(&a, "a"), (&b, "b"), (&c, "c")] {
            until(gossip, name, |view| {
                let alive: Vec<u64> = view.alive().map(|m| m.node).collect();
                alive == [1, 2, 3]
            })
            .await;
        }
        assert!(c.view().clusters.contains_key("c1"), "a new node learns the cluster it heard");
        assert_eq!(
            c.view().members.iter().find(|m| m.id.node == 2).map(|m| m.id.raft_addr.clone()),
            Some("raft-2".into())
        );
        b.leave().await;
        until(&a, "b down", |view| view.liveness(2) == Some(Liveness::Down)).await;
        assert!(a.view().liveness(9).is_none(), "another cluster's member was admitted");
    }
}
