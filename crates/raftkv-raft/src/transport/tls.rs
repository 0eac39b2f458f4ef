//! TLS between nodes, mutual: every node presents a certificate signed by the
//! cluster's CA and accepts connections only from holders of one.
//!
//! ## Names
//! A node's certificate carries two DNS names (subject alternative names):
//! [`SERVER_NAME`], which a client checks when it connects to any node (so
//! that it talks to a member of this cluster's CA, whatever the address),
//! and [`node_name`] of its node id. A receiver checks that the id a request
//! claims in its wire header is one its connection's certificate names
//! ([`PeerCertificate::names_node`], called by the header check), so that a
//! holder of a cluster certificate (a removed node, a client) cannot speak
//! as another node. Client certificates (for the HTTP API) carry
//! [`CLIENT_NAME`] and no node name.
//!
//! ## Rotation
//! [`Tls`] holds the files' current contents. [`Tls::reload`] reads the three
//! files again and swaps them in if they form a valid set (a bad set is
//! refused and the old one kept); [`Tls::watch`] does so whenever a file's
//! modification time or size changes. Connections open at the time keep the
//! certificates they were opened with; new ones, either way, use the new
//! set. To rotate the CA, put the old and the new CA in the CA file (it may
//! hold several), roll the nodes' certificates, then drop the old CA.
//!
//! rustls with the `ring` provider; TLS 1.3 and 1.2.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use raftkv_core::NodeId;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The name every node's certificate carries, checked by a client
/// connecting to a node.
pub const SERVER_NAME: &str = "server.raftkv";
/// The name a client certificate carries (it names no node).
pub const CLIENT_NAME: &str = "client.raftkv";

/// The name a certificate of node `id` carries.
pub fn node_name(id: NodeId) -> String {
    format!("node-{}.{SERVER_NAME}", id.0)
}

/// Where a node's TLS material lives (PEM files).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) peers' certificates must chain to.
    pub ca: PathBuf,
    /// This node's certificate (and any intermediates after it).
    pub cert: PathBuf,
    /// This node's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why TLS material could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A file could not be read or parsed.
    #[error("cannot read {what} {path}: {reason}")]
    Read {
        /// Which file (`"CA file"`, `"key file"`, ...).
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// Why it could not be read.
        reason: String,
    },
    /// A file holds nothing usable.
    #[error("{what} {path} holds no {expected}")]
    Empty {
        /// Which file.
        what: &'static str,
        /// Its path.
        path: PathBuf,
        /// What it should have held.
        expected: &'static str,
    },
    /// The files were read but do not make a usable configuration (a key
    /// that does not match the certificate, a certificate that does not name
    /// the node, ...).
    #[error("invalid TLS material ({ca}, {cert}, {key}): {reason}")]
    Invalid {
        /// The CA file.
        ca: PathBuf,
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// One consistent set of material and the configurations made from it.
struct Loaded {
    /// Peers must present a certificate (the raft port).
    mutual: Arc<ServerConfig>,
    /// Clients may present one (an HTTP API that takes tokens instead).
    open: Arc<ServerConfig>,
    /// Clients must present one, HTTP/1.1 and HTTP/2 (an HTTP API that requires client certificates).
    mutual_http: Arc<ServerConfig>,
    /// This node connecting to another, presenting its certificate.
    client: Arc<ClientConfig>,
    /// Modification time and length of each file when read.
    stamps: [Option<(SystemTime, u64)>; 3],
    /// This node's own certificate.
    leaf: CertificateDer<'static>,
}

/// A node's TLS material, reloadable. Clones share it.
#[derive(Clone)]
pub struct Tls {
    files: Arc<TlsFiles>,
    loaded: Arc<RwLock<Arc<Loaded>>>,
    /// The node whose certificate this must be, if any.
    node: Option<NodeId>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls").field("files", &self.files).finish_non_exhaustive()
    }
}

impl Tls {
    /// Reads and checks the three files.
    pub fn load(files: TlsFiles) -> Result<Tls, TlsError> {
        let loaded = load(&files)?;
        Ok(Tls { files: Arc::new(files), loaded: Arc::new(RwLock::new(Arc::new(loaded))), node: None })
    }

    /// [`Tls::load`] for node `id`: its certificate must name it (and
    /// [`SERVER_NAME`]), now and on every reload.
    pub fn load_for_node(files: TlsFiles, id: NodeId) -> Result<Tls, TlsError> {
        let mut tls = Tls::load(files)?;
        tls.node = Some(id);
        tls.check_node(&tls.current().leaf)?;
        Ok(tls)
    }

    fn check_node(&self, leaf: &CertificateDer<'static>) -> Result<(), TlsError> {
        let Some(id) = self.node else { return Ok(()) };
        if names_exactly(leaf, SERVER_NAME) && names_exactly(leaf, &node_name(id)) {
            return Ok(());
        }
        Err(TlsError::Invalid {
            ca: self.files.ca.clone(),
            cert: self.files.cert.clone(),
            key: self.files.key.clone(),
            reason: format!(
                "the certificate does not name node {} ({} and {}): make one with `raftkv tls cert create --node {}`",
                id.0,
                node_name(id),
                SERVER_NAME,
                id.0
            ),
        })
    }

    /// The files the material is read from.
    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    fn current(&self) -> Arc<Loaded> {
        // A poisoned lock still holds a complete `Arc` (writers only swap it).
        self.loaded.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// The server side of the raft port: client certificates required,
    /// HTTP/2 only.
    pub fn mutual_server_config(&self) -> Arc<ServerConfig> {
        self.current().mutual.clone()
    }

    /// The server side of an HTTP API: client certificates required or
    /// optional (then never asked for), HTTP/2 and HTTP/1.1.
    pub fn http_server_config(&self, require_client_certificate: bool) -> Arc<ServerConfig> {
        let loaded = self.current();
        if require_client_certificate {
            loaded.mutual_http.clone()
        } else {
            loaded.open.clone()
        }
    }

    /// The client side: this node's certificate, the cluster's CA, HTTP/2.
    pub fn client_config(&self) -> Arc<ClientConfig> {
        self.current().client.clone()
    }

    /// Reads the files again and swaps them in if they form a valid set;
    /// `Ok(false)` if nothing changed on disk. A set that does not load is
    /// refused and the old one stays.
    pub fn reload(&self) -> Result<bool, TlsError> {
        if stamps(&self.files) == self.current().stamps {
            return Ok(false);
        }
        let loaded = load(&self.files)?;
        self.check_node(&loaded.leaf)?;
        *self.loaded.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Reloads whenever the files change, checking every `every`, until the
    /// returned task is aborted. Failures are logged and retried.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let tls = self.clone();
        let what = format!("TLS files ({})", tls.files.cert.display());
        watch_reloads(every, what, move || tls.reload())
    }
}

/// When a file last changed, as far as reloading cares: its modification
/// time and length (`None` if it cannot be read).
pub fn file_stamp(path: &Path) -> Option<(SystemTime, u64)> {
    std::fs::metadata(path).ok().and_then(|m| Some((m.modified().ok()?, m.len())))
}

/// Calls `reload` every `every` until the returned task is aborted: the one
/// loop behind every reload-on-change (TLS material, an application's token
/// file). `reload` says whether anything changed; `what` names the files in
/// the log, where a failure is reported once until a reload succeeds again.
pub fn watch_reloads<E: std::fmt::Display>(
    every: Duration,
    what: String,
    mut reload: impl FnMut() -> Result<bool, E> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failing = false;
        loop {
            tokio::time::sleep(every).await;
            match reload() {
                Ok(true) => {
                    failing = false;
                    tracing::info!(files = %what, "reloaded");
                }
                Ok(false) => {}
                Err(error) if !failing => {
                    failing = true;
                    tracing::warn!(files = %what, %error, "changed but do not load; keeping the previous ones");
                }
                Err(_) => {}
            }
        }
    })
}

fn stamps(files: &TlsFiles) -> [Option<(SystemTime, u64)>; 3] {
    [file_stamp(&files.ca), file_stamp(&files.cert), file_stamp(&files.key)]
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the CA certificates of `path` into a root store.
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let certs = read_certs("CA file", path)?;
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(TlsError::Empty { what: "CA file", path: path.to_path_buf(), expected: "usable CA certificate" });
    }
    if ignored > 0 {
        tracing::warn!(path = %path.display(), ignored, "CA file holds certificates that do not parse");
    }
    Ok(roots)
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let read_error = |reason: String| TlsError::Read { what, path: path.to_path_buf(), reason };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| read_error(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| read_error(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::Empty { what, path: path.to_path_buf(), expected: "PEM certificate" });
    }
    Ok(certs)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::Read {
        what: "key file",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn load(files: &TlsFiles) -> Result<Loaded, TlsError> {
    let stamps = stamps(files);
    let roots = Arc::new(load_roots(&files.ca)?);
    let chain = read_certs("certificate file", &files.cert)?;
    // `read_certs` returns at least one certificate.
    let leaf = chain[0].clone();
    let key = read_key(&files.key)?;
    let invalid = |reason: String| TlsError::Invalid {
        ca: files.ca.clone(),
        cert: files.cert.clone(),
        key: files.key.clone(),
        reason,
    };
    // The node's own certificate must chain to the CA it trusts: a node
    // whose certificate its peers would refuse is a configuration error,
    // found here rather than as failing connections.
    check_chain(&roots, &chain).map_err(invalid)?;

    let versions = [&rustls::version::TLS13, &rustls::version::TLS12];
    let server = |verifier: Option<Arc<dyn rustls::server::danger::ClientCertVerifier>>, alpn: &[&[u8]]| {
        let builder = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&versions)
            .map_err(|e| e.to_string())?;
        let builder = match verifier {
            Some(verifier) => builder.with_client_cert_verifier(verifier),
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain.clone(), key.clone_key()).map_err(|e| e.to_string())?;
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok::<_, String>(Arc::new(config))
    };
    let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .build()
        .map_err(|e| invalid(e.to_string()))?;
    let mutual = server(Some(Arc::new(NodesOnly(verifier.clone()))), &[b"h2"]).map_err(invalid)?;
    let mutual_http = server(Some(verifier), &[b"h2", b"http/1.1"]).map_err(invalid)?;
    let open = server(None, &[b"h2", b"http/1.1"]).map_err(invalid)?;
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&versions)
        .map_err(|e| invalid(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| invalid(e.to_string()))?;
    client.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Loaded { mutual, open, mutual_http, client: Arc::new(client), stamps, leaf })
}

/// Whether `chain` (leaf first) chains to `roots` as a server certificate
/// for [`SERVER_NAME`] or as a client certificate, now.
fn check_chain(roots: &RootCertStore, chain: &[CertificateDer<'static>]) -> Result<(), String> {
    use rustls::client::danger::ServerCertVerifier;
    let (leaf, intermediates) = chain.split_first().ok_or("the certificate file holds no certificate")?;
    let now = rustls_pki_types::UnixTime::now();
    let server = rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
        .build()
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(SERVER_NAME).map_err(|e| e.to_string())?;
    match server.verify_server_cert(leaf, intermediates, &name, &[], now) {
        Ok(_) => Ok(()),
        Err(server_error) => {
            // A client certificate (no server name) is fine for a client.
            let client = WebPkiClientVerifier::builder_with_provider(Arc::new(roots.clone()), provider())
                .build()
                .map_err(|e| e.to_string())?;
            client
                .verify_client_cert(leaf, intermediates, now)
                .map(|_| ())
                .map_err(|_| format!("the certificate is not valid with this CA: {server_error}"))
        }
    }
}

/// The verified certificate a peer presented on a connection.
#[derive(Clone, Debug)]
pub struct PeerCertificate(pub CertificateDer<'static>);

impl PeerCertificate {
    /// Whether the certificate names node `id` (see the module doc). The
    /// chain was verified during the handshake; this checks the name only.
    pub fn names_node(&self, id: NodeId) -> bool {
        names_exactly(&self.0, &node_name(id))
    }
}

/// Whether `cert` carries the DNS name `name` itself: a wildcard
/// (`*.server.raftkv`) names no node, so that no one certificate can speak
/// for every node.
pub fn names_exactly(cert: &CertificateDer<'_>, name: &str) -> bool {
    match webpki::EndEntityCert::try_from(cert) {
        Ok(cert) => cert.valid_dns_names().any(|dns| dns.eq_ignore_ascii_case(name)),
        Err(_) => false,
    }
}

/// The raft port's client verifier: a certificate of the CA that names
/// [`SERVER_NAME`] exactly (a node's), so that a client certificate meant for
/// the HTTP API is refused at the handshake, before any service sees it.
#[derive(Debug)]
struct NodesOnly(Arc<dyn rustls::server::danger::ClientCertVerifier>);

impl rustls::server::danger::ClientCertVerifier for NodesOnly {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[rustls::DistinguishedName] {
        self.0.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::server::danger::ClientCertVerified, rustls::Error> {
        let verified = self.0.verify_client_cert(end_entity, intermediates, now)?;
        if !names_exactly(end_entity, SERVER_NAME) {
            return Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName));
        }
        Ok(verified)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Connects to `uri`'s host and port over TCP (Nagle off), then TLS as a
/// client presenting this node's certificate and expecting a node's; the
/// connector of a tonic endpoint (`Endpoint::connect_with_connector`).
#[derive(Clone, Debug)]
pub struct Connector {
    tls: Tls,
}

impl Connector {
    /// A connector presenting `tls`'s certificate.
    pub fn new(tls: Tls) -> Connector {
        Connector { tls }
    }
}

type Connected = hyper_util::rt::TokioIo<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;
type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl tower_service::Service<tonic::codegen::http::Uri> for Connector {
    type Response = Connected;
    type Error = BoxError;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Connected, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: tonic::codegen::http::Uri) -> Self::Future {
        let config = self.tls.client_config();
        Box::pin(async move {
            let host = uri.host().ok_or_else(|| format!("no host in {uri}"))?;
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let port = uri.port_u16().ok_or_else(|| format!("no port in {uri}"))?;
            let tcp = tokio::net::TcpStream::connect((host, port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(SERVER_NAME)?;
            let stream = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await?;
            Ok(hyper_util::rt::TokioIo::new(stream))
        })
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    use super::*;

    struct Ca {
        cert: String,
        issuer: Issuer<'static, KeyPair>,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap().pem();
        Ca { cert, issuer: Issuer::new(params, key) }
    }

    /// A certificate for `names`, valid for servers and clients, and its key.
    fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        (params.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
    }

    fn write(dir: &Path, ca: &str, (cert, key): &(String, String)) -> TlsFiles {
        let files = TlsFiles { ca: dir.join("ca.pem"), cert: dir.join("cert.pem"), key: dir.join("key.pem") };
        std::fs::write(&files.ca, ca).unwrap();
        std::fs::write(&files.cert, cert).unwrap();
        std::fs::write(&files.key, key).unwrap();
        files
    }

    #[test]
    fn a_node_certificate_names_its_node_only() {
        let ca = ca();
        let (cert, _) = leaf(&ca, &[SERVER_NAME, &node_name(NodeId(3))]);
        let der = CertificateDer::from_pem_slice(cert.as_bytes()).unwrap();
        let peer = PeerCertificate(der);
        assert!(peer.names_node(NodeId(3)));
        assert!(!peer.names_node(NodeId(33)));
        assert!(!peer.names_node(NodeId(4)));
        let (client, _) = leaf(&ca, &[CLIENT_NAME]);
        let client = PeerCertificate(CertificateDer::from_pem_slice(client.as_bytes()).unwrap());
        assert!(!client.names_node(NodeId(3)));
        // A wildcard names no node.
        let (wild, _) = leaf(&ca, &[SERVER_NAME, "*.server.raftkv"]);
        let wild = PeerCertificate(CertificateDer::from_pem_slice(wild.as_bytes()).unwrap());
        assert!(!wild.names_node(NodeId(3)));
    }

    #[test]
    fn material_that_does_not_fit_together_is_refused_and_a_bad_reload_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let (ours, theirs) = (ca(), ca());
        let good = leaf(&ours, &[SERVER_NAME, &node_name(NodeId(1))]);
        let files = write(dir.path(), &ours.cert, &good);
        let tls = Tls::load(files.clone()).unwrap();
        assert!(!tls.reload().unwrap(), "nothing changed");
        // A certificate of another CA.
        let foreign = leaf(&theirs, &[SERVER_NAME, &node_name(NodeId(1))]);
        std::fs::write(&files.cert, &foreign.0).unwrap();
        std::fs::write(&files.key, &foreign.1).unwrap();
        let error = tls.reload().unwrap_err();
        assert!(error.to_string().contains("not valid with this CA"), "{error}");
        assert!(Tls::load(files.clone()).is_err());
        // A key that is not the certificate's.
        std::fs::write(&files.cert, &good.0).unwrap();
        std::fs::write(&files.key, &foreign.1).unwrap();
        assert!(Tls::load(files.clone()).is_err());
        // Garbage, and an empty CA file.
        std::fs::write(&files.key, "not a key").unwrap();
        assert!(tls.reload().is_err());
        std::fs::write(&files.ca, "").unwrap();
        assert!(matches!(Tls::load(files.clone()), Err(TlsError::Read { .. } | TlsError::Empty { .. })));
        // The old material still serves.
        let _ = tls.mutual_server_config();
        // Fixed files load again, and a CA file may hold several CAs.
        std::fs::write(&files.ca, format!("{}{}", theirs.cert, ours.cert)).unwrap();
        std::fs::write(&files.key, &good.1).unwrap();
        assert!(tls.reload().unwrap());
        // A node's material must name that node, on load and on reload.
        assert!(Tls::load_for_node(files.clone(), NodeId(1)).is_ok());
        let error = Tls::load_for_node(files.clone(), NodeId(2)).unwrap_err();
        assert!(error.to_string().contains("does not name node 2"), "{error}");
        let node = Tls::load_for_node(files.clone(), NodeId(1)).unwrap();
        let other = leaf(&ours, &[SERVER_NAME, &node_name(NodeId(2))]);
        std::fs::write(&files.cert, format!("{}\n", other.0)).unwrap();
        std::fs::write(&files.key, &other.1).unwrap();
        assert!(node.reload().is_err(), "a reload to another node's certificate");
    }
}
