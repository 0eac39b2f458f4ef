//! The wire header: who sends a request, to whom, in which cluster, speaking
//! which protocol version. Every node-to-node gRPC request carries one, the
//! raft transport's and any service an application serves beside it. A
//! node's [`Identity`] (who it is on the wire) lives here too: headers are
//! stamped from it and checked against it.
//!
//! ## Why request metadata, not a proto message
//! The header travels as gRPC request metadata (HTTP/2 headers), not as a
//! field of each request message. Any service can then be stamped and checked
//! with the same code, without importing this crate's `.proto` (an
//! application compiles its own protos and cannot import ours from a published
//! crate); a client interceptor ([`Stamp`]) stamps every call of a client; and
//! a streaming RPC is checked once, when the stream opens, not per message.
//!
//! | key                     | value                                      |
//! |-------------------------|--------------------------------------------|
//! | `raftkv-protocol`       | [`PROTOCOL_VERSION`], decimal              |
//! | `raftkv-cluster-id-bin` | the cluster id, UTF-8 (binary metadata)    |
//! | `raftkv-from`           | the sender's node id, decimal              |
//! | `raftkv-to`             | the receiver's node id, decimal (optional) |
//! | `raftkv-from-addr-bin`  | where the sender serves, UTF-8 (optional)  |
//!
//! The two free-form strings are binary metadata (base64 on the wire), so any
//! cluster id or address can be stamped and stamping never fails; the numbers
//! are plain ASCII.
//!
//! ## The check
//! [`check`] is the one place a receiver decides whether to accept a request.
//! It refuses, before anything else is looked at: a missing or malformed
//! header (absent keys, repeated keys, non-UTF-8 strings, ids that are not
//! numbers; `INVALID_ARGUMENT`, or `FAILED_PRECONDITION` when the protocol key
//! is missing altogether, which is what a peer of an older protocol sends), a
//! protocol version other than this node's, an empty cluster id or another
//! cluster's, a request addressed to another node, and a request that claims
//! to come from this node (`FAILED_PRECONDITION`). Its messages name both
//! sides.
//!
//! With TLS ([`Identity::require_certificate`], set when the node serves its
//! raft port with mutual TLS), [`check`] also authenticates the sender: the
//! connection's verified certificate (which the listener puts in the
//! request's extensions, see `transport::listen`) must name the node the
//! header claims (`transport::tls`); a request without one is refused
//! `UNAUTHENTICATED`, one whose certificate names another node
//! `PERMISSION_DENIED`. Every service that calls [`check`] gains it at once.

use raftkv_core::NodeId;
use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue, MetadataMap};

use crate::transport::listen::ConnInfo;
use crate::transport::tls::node_name;

/// Who this node is on the wire.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The cluster this node belongs to; requests from another are refused.
    pub cluster_id: String,
    /// This node's id.
    pub id: NodeId,
    /// The address other nodes reach this node's raft service at.
    pub advertise_addr: String,
    /// Whether a request's sender must be named by the certificate of its
    /// connection (mutual TLS on the raft port).
    pub require_certificate: bool,
}

impl Identity {
    /// The identity of node `id` of cluster `cluster_id`, served at
    /// `advertise_addr`, without certificate checks.
    pub fn new(cluster_id: impl Into<String>, id: NodeId, advertise_addr: impl Into<String>) -> Identity {
        Identity {
            cluster_id: cluster_id.into(),
            id,
            advertise_addr: advertise_addr.into(),
            require_certificate: false,
        }
    }

    /// This identity, checking that each sender's certificate names it.
    pub fn requiring_certificates(self) -> Identity {
        Identity { require_certificate: true, ..self }
    }

    /// The header this node stamps on requests to `to` (`None`: the
    /// receiver's id is not known, as for a request sent to an address).
    pub fn header(&self, to: Option<NodeId>) -> WireHeader {
        WireHeader::new(self, to)
    }

    /// Checks a request's header against this node (see [`check`]).
    pub fn check<T>(&self, request: &tonic::Request<T>) -> Result<CheckedHeader, tonic::Status> {
        check(self, request)
    }
}

/// Bumped when the messages change incompatibly; peers must match. One
/// version covers the raft RPCs and the header; an application's own RPCs
/// stamped with this header are covered by it too (bump it with them, or
/// version them apart).
///
/// 2: the header moved from the `Batch` message into request metadata.
pub const PROTOCOL_VERSION: u32 = 2;

/// Metadata key of the protocol version.
pub const PROTOCOL_KEY: &str = "raftkv-protocol";
/// Metadata key (binary) of the cluster id.
pub const CLUSTER_ID_KEY: &str = "raftkv-cluster-id-bin";
/// Metadata key of the sender's node id.
pub const FROM_KEY: &str = "raftkv-from";
/// Metadata key of the receiver's node id.
pub const TO_KEY: &str = "raftkv-to";
/// Metadata key (binary) of the sender's address.
pub const FROM_ADDR_KEY: &str = "raftkv-from-addr-bin";

/// The header of a node-to-node request, as sent (see the module doc).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WireHeader {
    /// The sender's [`PROTOCOL_VERSION`].
    pub protocol_version: u32,
    /// The sender's cluster id.
    pub cluster_id: String,
    /// The sender's node id.
    pub from: NodeId,
    /// The node the request is for, when the sender knows it (raft messages
    /// always do; a request sent to an address, such as a join, may not).
    pub to: Option<NodeId>,
    /// Where the sender serves, so that the receiver learns it.
    pub from_addr: Option<String>,
}

/// A header that passed [`check`]: who sent the request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedHeader {
    /// The sender's node id (with TLS, the one its certificate names).
    pub from: NodeId,
    /// Present only when the request named its receiver (and then it is this node).
    pub to: Option<NodeId>,
    /// Where the sender says it serves, if it said.
    pub from_addr: Option<String>,
}

impl WireHeader {
    /// The header `identity` sends, to `to` when the receiver's id is known.
    /// An empty advertised address is left out.
    pub fn new(identity: &Identity, to: Option<NodeId>) -> WireHeader {
        WireHeader {
            protocol_version: PROTOCOL_VERSION,
            cluster_id: identity.cluster_id.clone(),
            from: identity.id,
            to,
            from_addr: (!identity.advertise_addr.is_empty()).then(|| identity.advertise_addr.clone()),
        }
    }

    /// Puts the header into a request's metadata, replacing any header there.
    pub fn stamp<T>(&self, request: &mut tonic::Request<T>) {
        self.write_to(request.metadata_mut());
    }

    /// Puts the header into `metadata`, replacing any header there.
    pub fn write_to(&self, metadata: &mut MetadataMap) {
        metadata.insert(PROTOCOL_KEY, AsciiMetadataValue::from(self.protocol_version));
        metadata.insert_bin(CLUSTER_ID_KEY, BinaryMetadataValue::from_bytes(self.cluster_id.as_bytes()));
        metadata.insert(FROM_KEY, AsciiMetadataValue::from(self.from.0));
        match self.to {
            Some(to) => {
                metadata.insert(TO_KEY, AsciiMetadataValue::from(to.0));
            }
            None => {
                metadata.remove(TO_KEY);
            }
        }
        match &self.from_addr {
            Some(address) => {
                metadata.insert_bin(FROM_ADDR_KEY, BinaryMetadataValue::from_bytes(address.as_bytes()));
            }
            None => {
                metadata.remove_bin(FROM_ADDR_KEY);
            }
        }
    }

    /// Reads a header out of `metadata`. Any malformed part is refused (never
    /// a panic); nothing is compared with this node yet (that is [`check`]).
    pub fn read(metadata: &MetadataMap) -> Result<WireHeader, tonic::Status> {
        let protocol_version = match ascii(metadata, PROTOCOL_KEY)? {
            Some(text) => number(PROTOCOL_KEY, text)?,
            None => {
                return Err(tonic::Status::failed_precondition(format!(
                    "request without the {PROTOCOL_KEY} header: the peer speaks no raftkv protocol, or one \
                     older than 2; this node speaks {PROTOCOL_VERSION}"
                )))
            }
        };
        let cluster_id = binary(metadata, CLUSTER_ID_KEY)?.unwrap_or_default();
        let from = match ascii(metadata, FROM_KEY)? {
            Some(text) => NodeId(number(FROM_KEY, text)?),
            None => return Err(tonic::Status::invalid_argument(format!("request without the {FROM_KEY} header"))),
        };
        let to = ascii(metadata, TO_KEY)?.map(|text| number(TO_KEY, text).map(NodeId)).transpose()?;
        let from_addr = binary(metadata, FROM_ADDR_KEY)?.filter(|address| !address.is_empty());
        Ok(WireHeader { protocol_version, cluster_id, from, to, from_addr })
    }

    /// A client interceptor that stamps every call with this header.
    pub fn interceptor(self) -> Stamp {
        Stamp(self)
    }
}

/// Checks a request's header against this node's identity: the single
/// admission decision for node-to-node requests (see the module doc).
pub fn check<T>(identity: &Identity, request: &tonic::Request<T>) -> Result<CheckedHeader, tonic::Status> {
    let header = check_metadata(identity, request.metadata())?;
    if identity.require_certificate {
        let info = request.extensions().get::<ConnInfo>();
        let Some(certificate) = info.and_then(|info| info.certificate.as_ref()) else {
            return Err(tonic::Status::unauthenticated(format!(
                "node {} requires a cluster certificate; the request claiming node {} came without one",
                identity.id, header.from
            )));
        };
        if !certificate.names_node(header.from) {
            return Err(tonic::Status::permission_denied(format!(
                "the request claims node {}, but its connection's certificate does not name {} (this is node {})",
                header.from,
                node_name(header.from),
                identity.id
            )));
        }
    }
    Ok(header)
}

/// [`check`] on bare metadata, without the certificate check.
pub fn check_metadata(identity: &Identity, metadata: &MetadataMap) -> Result<CheckedHeader, tonic::Status> {
    let header = WireHeader::read(metadata)?;
    let refuse = |message: String| Err(tonic::Status::failed_precondition(message));
    let (me, from) = (identity.id, header.from);
    if header.protocol_version != PROTOCOL_VERSION {
        return refuse(format!(
            "protocol version mismatch: node {from} speaks {}, node {me} speaks {PROTOCOL_VERSION}",
            header.protocol_version
        ));
    }
    if identity.cluster_id.is_empty() {
        return refuse(format!("node {me} has no cluster id, so it accepts no requests (from node {from})"));
    }
    if header.cluster_id.is_empty() {
        return refuse(format!(
            "node {from} sent no cluster id; node {me} belongs to cluster {:?}",
            identity.cluster_id
        ));
    }
    if header.cluster_id != identity.cluster_id {
        return refuse(format!(
            "cluster id mismatch: node {from} belongs to cluster {:?}, node {me} to cluster {:?}",
            header.cluster_id, identity.cluster_id
        ));
    }
    if from.0 == 0 || header.to.is_some_and(|to| to.0 == 0) {
        return refuse(format!(
            "node ids are positive: a request from node {from} to {:?} (this is node {me})",
            header.to
        ));
    }
    if let Some(to) = header.to {
        if to != me {
            return refuse(format!("node {from} addressed node {to}, but this is node {me}"));
        }
    }
    if from == me {
        return refuse(format!(
            "a request claims to come from node {me}, the node receiving it (two nodes share id {me}?)"
        ));
    }
    Ok(CheckedHeader { from, to: header.to, from_addr: header.from_addr })
}

/// A tonic client interceptor stamping every call with its header:
/// `RaftClient::with_interceptor(channel, header.interceptor())`.
#[derive(Clone, Debug)]
pub struct Stamp(pub WireHeader);

impl tonic::service::Interceptor for Stamp {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.stamp(&mut request);
        Ok(request)
    }
}

/// At most this much of a malformed value is quoted back in an error.
const QUOTE_LIMIT: usize = 64;

fn quote(bytes: &[u8]) -> String {
    let shown = &bytes[..bytes.len().min(QUOTE_LIMIT)];
    let more = if bytes.len() > QUOTE_LIMIT { "..." } else { "" };
    format!("{:?}{more}", String::from_utf8_lossy(shown))
}

/// The one value of an ASCII key, if present; repeated keys are malformed.
fn ascii<'a>(metadata: &'a MetadataMap, key: &'static str) -> Result<Option<&'a str>, tonic::Status> {
    let mut values = metadata.get_all(key).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(tonic::Status::invalid_argument(format!("the {key} header is repeated")));
    }
    value.to_str().map(Some).map_err(|_| {
        tonic::Status::invalid_argument(format!("the {key} header is not text: {}", quote(value.as_bytes())))
    })
}

/// The one value of a binary key as UTF-8 text, if present.
fn binary(metadata: &MetadataMap, key: &'static str) -> Result<Option<String>, tonic::Status> {
    let mut values = metadata.get_all_bin(key).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err(tonic::Status::invalid_argument(format!("the {key} header is repeated")));
    }
    let bytes = value.to_bytes().map_err(|_| {
        tonic::Status::invalid_argument(format!("the {key} header is not base64: {}", quote(value.as_encoded_bytes())))
    })?;
    String::from_utf8(bytes.to_vec())
        .map(Some)
        .map_err(|_| tonic::Status::invalid_argument(format!("the {key} header is not UTF-8: {}", quote(&bytes))))
}

fn number<N: std::str::FromStr>(key: &'static str, text: &str) -> Result<N, tonic::Status> {
    // `parse` alone would take a leading '+'.
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(tonic::Status::invalid_argument(format!(
            "the {key} header is not a number: {}",
            quote(text.as_bytes())
        )));
    }
    text.parse().map_err(|_| {
        tonic::Status::invalid_argument(format!("the {key} header is out of range: {}", quote(text.as_bytes())))
    })
}

#[cfg(test)]
mod tests {
    use tonic::metadata::MetadataValue;

    use super::*;

    fn identity(cluster: &str, id: u64) -> Identity {
        Identity::new(cluster, NodeId(id), format!("10.0.0.{id}:7000"))
    }

    fn stamped(header: &WireHeader) -> tonic::Request<()> {
        let mut request = tonic::Request::new(());
        header.stamp(&mut request);
        request
    }

    fn refused(request: &tonic::Request<()>) -> tonic::Status {
        check(&identity("prod", 1), request).expect_err("the header must be refused")
    }

    #[test]
    fn a_stamped_header_reads_back_and_passes() {
        let header = WireHeader::new(&identity("prod", 2), Some(NodeId(1)));
        let request = stamped(&header);
        assert_eq!(WireHeader::read(request.metadata()).unwrap(), header);
        let checked = check(&identity("prod", 1), &request).unwrap();
        assert_eq!(
            checked,
            CheckedHeader { from: NodeId(2), to: Some(NodeId(1)), from_addr: Some("10.0.0.2:7000".into()) }
        );
        // Without a receiver id, and without an address.
        let mut header = WireHeader::new(&Identity { advertise_addr: String::new(), ..identity("prod", 2) }, None);
        assert_eq!(header.from_addr, None);
        let checked = check(&identity("prod", 1), &stamped(&header)).unwrap();
        assert_eq!((checked.to, checked.from_addr), (None, None));
        // Any text in a cluster id or address goes through.
        header.cluster_id = "ünïcode clüster\n".into();
        header.from_addr = Some("[::1]:7000".into());
        let request = stamped(&header);
        assert_eq!(WireHeader::read(request.metadata()).unwrap(), header);
        assert!(check(&identity("ünïcode clüster\n", 1), &request).is_ok());
    }

    #[test]
    fn stamping_twice_replaces_the_header() {
        let mut request = stamped(&WireHeader::new(&identity("prod", 2), Some(NodeId(1))));
        WireHeader::new(&Identity { advertise_addr: String::new(), ..identity("prod", 3) }, None).stamp(&mut request);
        let header = WireHeader::read(request.metadata()).unwrap();
        assert_eq!((header.from, header.to, header.from_addr), (NodeId(3), None, None));
    }

    #[test]
    fn an_empty_cluster_id_is_refused_on_either_side() {
        let status = refused(&stamped(&WireHeader::new(&identity("", 2), Some(NodeId(1)))));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("node 2 sent no cluster id"), "{}", status.message());
        assert!(status.message().contains("node 1") && status.message().contains("prod"), "{}", status.message());
        // No cluster id key at all reads as empty, and is refused the same way.
        let mut request = stamped(&WireHeader::new(&identity("prod", 2), None));
        request.metadata_mut().remove_bin(CLUSTER_ID_KEY);
        assert!(refused(&request).message().contains("sent no cluster id"));
        // A node without a cluster id accepts nothing, not even an empty one.
        let request = stamped(&WireHeader::new(&identity("", 2), None));
        let status = check(&identity("", 1), &request).unwrap_err();
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("node 1 has no cluster id"), "{}", status.message());
    }

    #[test]
    fn a_wrong_cluster_id_is_refused_naming_both() {
        let status = refused(&stamped(&WireHeader::new(&identity("staging", 2), Some(NodeId(1)))));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let message = status.message();
        assert!(message.contains("cluster id mismatch"), "{message}");
        assert!(message.contains("node 2") && message.contains("\"staging\""), "{message}");
        assert!(message.contains("node 1") && message.contains("\"prod\""), "{message}");
    }

    #[test]
    fn a_wrong_protocol_version_is_refused_naming_both() {
        let mut header = WireHeader::new(&identity("prod", 2), Some(NodeId(1)));
        header.protocol_version = PROTOCOL_VERSION + 1;
        let status = refused(&stamped(&header));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        let expected = format!("node 2 speaks {}, node 1 speaks {PROTOCOL_VERSION}", PROTOCOL_VERSION + 1);
        assert!(status.message().contains(&expected), "{}", status.message());
        // A peer of an older protocol sends no metadata header at all.
        let status = refused(&tonic::Request::new(()));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains(PROTOCOL_KEY), "{}", status.message());
    }

    #[test]
    fn a_request_for_another_node_is_refused() {
        let status = refused(&stamped(&WireHeader::new(&identity("prod", 2), Some(NodeId(3)))));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("node 2 addressed node 3, but this is node 1"), "{}", status.message());
    }

    #[test]
    fn a_request_from_this_node_itself_is_refused() {
        let status = refused(&stamped(&WireHeader::new(&identity("prod", 1), Some(NodeId(1)))));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("from node 1"), "{}", status.message());
        let status = refused(&stamped(&WireHeader::new(&identity("prod", 1), None)));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
    }

    #[test]
    fn node_id_zero_is_refused_as_sender_or_receiver() {
        let status = refused(&stamped(&WireHeader::new(&identity("prod", 0), Some(NodeId(1)))));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.message().contains("node ids are positive"), "{}", status.message());
        let status = refused(&stamped(&WireHeader::new(&identity("prod", 2), Some(NodeId(0)))));
        assert!(status.message().contains("node ids are positive"), "{}", status.message());
    }

    #[test]
    fn malformed_metadata_is_refused_without_a_panic() {
        let good = || stamped(&WireHeader::new(&identity("prod", 2), Some(NodeId(1))));
        let with = |key: &'static str, value: &'static str| {
            let mut request = good();
            request.metadata_mut().insert(key, MetadataValue::from_static(value));
            request
        };
        for (key, value) in [
            (FROM_KEY, "two"),
            (FROM_KEY, ""),
            (FROM_KEY, "+2"),
            (FROM_KEY, "-2"),
            (FROM_KEY, "18446744073709551616"),
            (TO_KEY, "0x1"),
            (PROTOCOL_KEY, "2.0"),
            (PROTOCOL_KEY, "4294967296"),
        ] {
            let status = refused(&with(key, value));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{key}={value:?}: {}", status.message());
            assert!(status.message().contains(key), "{}", status.message());
        }
        // Bytes that are not text in an ASCII key.
        let mut request = good();
        let value = MetadataValue::try_from(&b"\xff\xfe"[..]).unwrap();
        request.metadata_mut().insert(FROM_KEY, value);
        assert_eq!(refused(&request).code(), tonic::Code::InvalidArgument);
        // A cluster id that is not UTF-8, and one that is not base64.
        let mut request = good();
        request.metadata_mut().insert_bin(CLUSTER_ID_KEY, BinaryMetadataValue::from_bytes(b"\xff\xfe"));
        let status = refused(&request);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("not UTF-8"), "{}", status.message());
        let (metadata, extensions, ()) = good().into_parts();
        let mut headers = metadata.into_headers();
        headers.insert(CLUSTER_ID_KEY, tonic::codegen::http::HeaderValue::from_static("***"));
        let request = tonic::Request::from_parts(MetadataMap::from_headers(headers), extensions, ());
        let status = refused(&request);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("not base64"), "{}", status.message());
        // A repeated key.
        let mut request = good();
        request.metadata_mut().append(FROM_KEY, MetadataValue::from(3u64));
        let status = refused(&request);
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert!(status.message().contains("repeated"), "{}", status.message());
        // No sender.
        let mut request = good();
        request.metadata_mut().remove(FROM_KEY);
        assert_eq!(refused(&request).code(), tonic::Code::InvalidArgument);
        // A long malformed value is quoted only in part.
        let mut request = good();
        request.metadata_mut().insert(TO_KEY, MetadataValue::try_from("9".repeat(500) + "x").unwrap());
        assert!(refused(&request).message().len() < 200);
    }

    #[test]
    fn the_interceptor_stamps_every_call() {
        use tonic::service::Interceptor;
        let header = WireHeader::new(&identity("prod", 2), None);
        let mut stamp = header.clone().interceptor();
        let request = stamp.call(tonic::Request::new(())).unwrap();
        assert_eq!(WireHeader::read(request.metadata()).unwrap(), header);
    }
}
