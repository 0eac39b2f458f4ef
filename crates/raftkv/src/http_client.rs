//! What a client of the HTTP API needs to be let in: the CA to check the
//! node's certificate against (then it speaks HTTPS), optionally a client
//! certificate, and a bearer token. The CLI and the load generator build
//! their HTTP clients here.

use std::path::PathBuf;
use std::sync::Arc;

/// A client's TLS material and token.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    /// CA certificate(s) the server's certificate must chain to; given: HTTPS.
    pub cacert: Option<PathBuf>,
    /// Client certificate and key, for a server that requires one.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Sent as `Authorization: Bearer`.
    pub token: Option<String>,
}

impl std::fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("cacert", &self.cacert)
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("token", &self.token.as_ref().map(|_| "<hidden>"))
            .finish()
    }
}

impl ClientSecurity {
    /// The base URL of the node at `addr`: as given if it has a scheme,
    /// else HTTPS when a CA is given and HTTP otherwise.
    pub fn base_url(&self, addr: &str) -> String {
        if addr.contains("://") {
            return addr.trim_end_matches('/').to_string();
        }
        let scheme = if self.cacert.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// `builder` with this TLS material and token.
    pub fn apply(&self, builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.cacert {
            Some(path) => raftkv_raft::transport::tls::load_roots(path).map_err(|e| e.to_string())?,
            None => rustls::RootCertStore::empty(),
        };
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_root_certificates(roots);
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                use rustls::pki_types::pem::PemObject;
                let chain = rustls::pki_types::CertificateDer::pem_file_iter(cert)
                    .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| format!("cannot read the certificate {}: {e}", cert.display()))?;
                let key = rustls::pki_types::PrivateKeyDer::from_pem_file(key)
                    .map_err(|e| format!("cannot read the key {}: {e}", key.display()))?;
                config.with_client_auth_cert(chain, key).map_err(|e| format!("TLS client certificate: {e}"))?
            }
            (None, None) => config.with_no_client_auth(),
            _ => return Err("--cert and --key go together".to_string()),
        };
        let mut builder = builder.tls_backend_preconfigured(config);
        if let Some(token) = &self.token {
            let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
                .map_err(|_| "the token holds characters a header cannot carry".to_string())?;
            value.set_sensitive(true);
            let mut headers = reqwest::header::HeaderMap::new();
            headers.insert(reqwest::header::AUTHORIZATION, value);
            builder = builder.default_headers(headers);
        }
        Ok(builder)
    }
}
