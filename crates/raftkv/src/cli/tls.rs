//! `raftkv tls ca create`, `raftkv tls cert create` and `raftkv keygen`: a
//! secure cluster three commands away (as `consul tls` and `consul keygen`).
//!
//! Node certificates name the node (`node-ID.server.raftkv`) and carry
//! `server.raftkv`, which every node's certificate has, so that peers check
//! both "a member of this cluster" and "this member" (see
//! `raftkv_raft::transport::tls`); also `localhost`, 127.0.0.1 and ::1, and
//! any `--dns`/`--ip` given, for clients of the HTTP API. They serve and
//! connect (server and client authentication). Client certificates carry
//! `client.raftkv` and authenticate clients only. Keys are ECDSA P-256,
//! written with mode 0600; nothing is overwritten.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use base64::Engine;
use raftkv_raft::transport::tls::{node_name, CLIENT_NAME, SERVER_NAME};
use raftkv_raft::NodeId;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::cli::args::{CaCommand, CertCommand, CertCreate, TlsCommand};

pub fn run(command: TlsCommand) -> i32 {
    let result = match command {
        TlsCommand::Ca(CaCommand::Create { dir, days }) => create_ca(&dir, days),
        TlsCommand::Cert(CertCommand::Create(args)) => create_cert(&args),
    };
    match result {
        Ok(written) => {
            for path in written {
                println!("==> wrote {}", path.display());
            }
            0
        }
        Err(error) => {
            eprintln!("raftkv tls: {error}");
            1
        }
    }
}

/// `raftkv keygen`: a gossip encryption key.
pub fn keygen() -> i32 {
    let mut key = [0u8; 32];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut key).is_err() {
        eprintln!("raftkv keygen: no randomness available");
        return 1;
    }
    println!("{}", base64::engine::general_purpose::STANDARD.encode(key));
    0
}

pub const CA_FILE: &str = "raftkv-ca.pem";
pub const CA_KEY_FILE: &str = "raftkv-ca-key.pem";

fn validity(params: &mut CertificateParams, days: u32) {
    let now = std::time::SystemTime::now();
    // A little slack for clocks that run behind.
    params.not_before = (now - std::time::Duration::from_secs(3600)).into();
    params.not_after = (now + std::time::Duration::from_secs(u64::from(days) * 86_400)).into();
}

fn name(common: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "raftkv");
    name.push(DnType::CommonName, common);
    name
}

fn create_ca(dir: &Path, days: u32) -> Result<Vec<PathBuf>, String> {
    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name("raftkv CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    validity(&mut params, days);
    let cert = params.self_signed(&key).map_err(|e| format!("cannot make the CA certificate: {e}"))?;
    let (cert_path, key_path) = (dir.join(CA_FILE), dir.join(CA_KEY_FILE));
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(vec![cert_path, key_path])
}

fn create_cert(args: &CertCreate) -> Result<Vec<PathBuf>, String> {
    let ca_pem = std::fs::read_to_string(&args.ca).map_err(|e| format!("cannot read {}: {e}", args.ca.display()))?;
    let ca_key_pem =
        std::fs::read_to_string(&args.ca_key).map_err(|e| format!("cannot read {}: {e}", args.ca_key.display()))?;
    let ca_key = KeyPair::from_pem(&ca_key_pem).map_err(|e| format!("{}: {e}", args.ca_key.display()))?;
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).map_err(|e| format!("{}: {e}", args.ca.display()))?;

    let mut sans: Vec<SanType> = Vec::new();
    let dns = |name: &str| -> Result<SanType, String> {
        Ok(SanType::DnsName(name.try_into().map_err(|e| format!("bad DNS name {name:?}: {e}"))?))
    };
    let (stem, common) = match args.node {
        Some(0) => return Err("--node takes a positive node id".to_string()),
        Some(id) => {
            sans.push(dns(SERVER_NAME)?);
            sans.push(dns(&node_name(NodeId(id)))?);
            sans.push(dns("localhost")?);
            for ip in [IpAddr::from([127, 0, 0, 1]), IpAddr::from(std::net::Ipv6Addr::LOCALHOST)] {
                sans.push(SanType::IpAddress(ip));
            }
            (format!("node-{id}"), node_name(NodeId(id)))
        }
        None => {
            sans.push(dns(CLIENT_NAME)?);
            ("client".to_string(), CLIENT_NAME.to_string())
        }
    };
    for name in &args.dns {
        // Those names say which node a certificate speaks for: only --node gives them.
        let lower = name.to_ascii_lowercase();
        if lower == SERVER_NAME || lower.ends_with(&format!(".{SERVER_NAME}")) || lower == CLIENT_NAME {
            return Err(format!("--dns {name}: names under {SERVER_NAME} are reserved for node certificates (--node)"));
        }
        sans.push(dns(name)?);
    }
    sans.extend(args.ip.iter().copied().map(SanType::IpAddress));

    let key = KeyPair::generate().map_err(|e| format!("cannot make a key: {e}"))?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&common);
    params.subject_alt_names = sans;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = if args.node.is_some() {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, args.days);
    let cert = params.signed_by(&key, &issuer).map_err(|e| format!("cannot sign the certificate: {e}"))?;
    let (cert_path, key_path) = (args.dir.join(format!("{stem}.pem")), args.dir.join(format!("{stem}-key.pem")));
    write_new(&cert_path, cert.pem().as_bytes(), false)?;
    write_new(&key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(vec![cert_path, key_path])
}

/// Writes a file that must not exist yet; a key is readable by its owner only.
fn write_new(path: &Path, contents: &[u8], secret: bool) -> Result<(), String> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::AlreadyExists => format!("{} exists; not overwriting it", path.display()),
        _ => format!("cannot create {}: {e}", path.display()),
    })?;
    file.write_all(contents).and_then(|()| file.sync_all()).map_err(|e| format!("cannot write {}: {e}", path.display()))
}
