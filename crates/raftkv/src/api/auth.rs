//! Who may do what on the HTTP API: bearer tokens with roles.
//!
//! Three roles, each with everything of the ones before it: `read` (get,
//! list, members, health, stats), `write` (set, delete, compare-and-set),
//! `admin` (membership, leadership, leaving, backups and restores, settings,
//! snapshots). Every route belongs to one role where the router is built
//! (`api::router`), so a route cannot be added without one.
//!
//! Tokens live in a JSON file the agent reads at start and again on SIGHUP
//! or when the file changes:
//!
//! ```json
//! {"tokens": [{"name": "ops", "role": "admin", "secret": "…"}]}
//! ```
//!
//! A request carries `Authorization: Bearer <secret>`. No or an unknown
//! token: 401 `unauthenticated`; a token whose role is too weak: 403
//! `forbidden`; neither ran anything (`not_done`). Secrets are kept only as
//! SHA-256 digests in memory and never logged; a token is known by its name.
//! Admin requests are logged on the `raftkv::audit` target with the token's
//! name, the client's address, the route and the answer's status.
//!
//! A request forwarded to the leader is authorized here, where it enters the
//! cluster; nodes trust each other through mutual TLS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use raftkv_raft::transport::tls::file_stamp;

use crate::agent::Outcome;
use crate::api::error::ApiError;

/// What a token may do; each role includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Read,
    Write,
    Admin,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenFile {
    tokens: Vec<TokenEntry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenEntry {
    name: String,
    role: Role,
    secret: String,
}

/// Shortest secret taken: 16 characters (a random hex or base64 string of
/// at least 64 bits).
const MIN_SECRET: usize = 16;

#[derive(Clone, Debug)]
struct Known {
    name: Arc<str>,
    role: Role,
}

struct Loaded {
    by_digest: HashMap<[u8; 32], Known>,
    stamp: Option<(SystemTime, u64)>,
}

/// The tokens the API accepts, reloadable. Clones share them.
#[derive(Clone)]
pub struct Tokens {
    path: Arc<PathBuf>,
    loaded: Arc<RwLock<Arc<Loaded>>>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secrets.
        f.debug_struct("Tokens").field("path", &self.path).finish_non_exhaustive()
    }
}

fn digest(secret: &str) -> [u8; 32] {
    let hash = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    let mut out = [0u8; 32];
    out.copy_from_slice(hash.as_ref());
    out
}

fn load(path: &Path) -> Result<Loaded, String> {
    let stamp = file_stamp(path);
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("cannot read the token file {}: {e}", path.display()))?;
    let file: TokenFile =
        serde_json::from_str(&text).map_err(|e| format!("the token file {} is not valid: {e}", path.display()))?;
    let mut by_digest = HashMap::new();
    let mut names = std::collections::BTreeSet::new();
    for (i, entry) in file.tokens.into_iter().enumerate() {
        if entry.name.is_empty() || !names.insert(entry.name.clone()) {
            return Err(format!("token {i} in {}: names must be present and unique", path.display()));
        }
        if entry.secret.chars().count() < MIN_SECRET || entry.secret.chars().any(|c| c.is_whitespace()) {
            return Err(format!(
                "token {:?} in {}: a secret has at least {MIN_SECRET} characters and no spaces",
                entry.name,
                path.display()
            ));
        }
        let known = Known { name: entry.name.as_str().into(), role: entry.role };
        if by_digest.insert(digest(&entry.secret), known).is_some() {
            return Err(format!("token {:?} in {}: two tokens share a secret", entry.name, path.display()));
        }
    }
    Ok(Loaded { by_digest, stamp })
}

impl Tokens {
    /// Reads the token file; a file that does not load is an error.
    pub fn load(path: impl Into<PathBuf>) -> Result<Tokens, String> {
        let path = path.into();
        let loaded = load(&path)?;
        Ok(Tokens { path: Arc::new(path), loaded: Arc::new(RwLock::new(Arc::new(loaded))) })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn current(&self) -> Arc<Loaded> {
        // Writers only swap the `Arc`: a poisoned lock still holds a whole one.
        self.loaded.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// How many tokens are known.
    pub fn len(&self) -> usize {
        self.current().by_digest.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reads the file again if it changed; a file that does not load is
    /// refused and the tokens stay as they were.
    pub fn reload(&self) -> Result<bool, String> {
        if file_stamp(&self.path) == self.current().stamp {
            return Ok(false);
        }
        let loaded = load(&self.path)?;
        *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(loaded);
        Ok(true)
    }

    /// Reloads whenever the file changes, checking every `every`.
    pub fn watch(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let tokens = self.clone();
        let what = format!("token file ({})", tokens.path.display());
        raftkv_raft::transport::tls::watch_reloads(every, what, move || tokens.reload())
    }

    fn lookup(&self, secret: &str) -> Option<Known> {
        self.current().by_digest.get(&digest(secret)).cloned()
    }
}

/// What a route requires, with the tokens to check it against (`None`:
/// tokens are off and every request goes through).
#[derive(Clone)]
pub struct Require {
    pub tokens: Option<Tokens>,
    pub role: Role,
}

fn refuse(status: StatusCode, code: &'static str, message: String) -> Response {
    let mut response = ApiError { status, code, message, outcome: Outcome::NotDone }.into_response();
    if status == StatusCode::UNAUTHORIZED {
        response
            .headers_mut()
            .insert(axum::http::header::WWW_AUTHENTICATE, axum::http::HeaderValue::from_static("Bearer"));
    }
    response
}

/// The bearer secret of a request, if it sent one in the expected form.
fn bearer(request: &axum::extract::Request) -> Result<Option<&str>, &'static str> {
    let mut values = request.headers().get_all(axum::http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else { return Ok(None) };
    if values.next().is_some() {
        return Err("the Authorization header is repeated");
    }
    let text = value.to_str().map_err(|_| "the Authorization header is not text")?;
    let (scheme, secret) = text.split_once(' ').ok_or("the Authorization header is not \"Bearer <token>\"")?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err("the Authorization header is not \"Bearer <token>\"");
    }
    Ok(Some(secret.trim()))
}

/// Authenticates and authorizes a request for a route that needs
/// `require.role`. A refusal is the answer to send (401 or 403, logged on
/// the audit target at most once per 10 s); an admitted admin request comes
/// with its audit line, to be written once it is answered (`AdminAudit`).
/// Nothing is allocated for a request let through without an audit.
pub fn admit(require: &Require, request: &axum::extract::Request) -> Result<Option<AdminAudit>, Box<Response>> {
    let Some(tokens) = &require.tokens else { return Ok(None) };
    let known = match bearer(request) {
        Ok(Some(secret)) => match tokens.lookup(secret) {
            Some(known) => known,
            None => return Err(refused(request, StatusCode::UNAUTHORIZED, "unauthenticated", "unknown token".into())),
        },
        Ok(None) => {
            let message =
                "this API requires a token: send \"Authorization: Bearer <token>\" (raftkv --token, or RAFTKV_TOKEN)";
            return Err(refused(request, StatusCode::UNAUTHORIZED, "unauthenticated", message.into()));
        }
        Err(why) => return Err(refused(request, StatusCode::UNAUTHORIZED, "unauthenticated", why.into())),
    };
    if known.role < require.role {
        let message = format!(
            "token {:?} has the {} role; {} {} needs {}",
            &*known.name,
            known.role.name(),
            request.method(),
            request.uri().path(),
            require.role.name()
        );
        return Err(refused(request, StatusCode::FORBIDDEN, "forbidden", message));
    }
    if require.role < Role::Admin {
        return Ok(None);
    }
    Ok(Some(AdminAudit {
        token: known.name.clone(),
        method: request.method().clone(),
        path: request.uri().path().to_string(),
        remote: remote(request),
    }))
}

/// An admitted admin request, audited once answered.
pub struct AdminAudit {
    token: Arc<str>,
    method: axum::http::Method,
    path: String,
    remote: Option<std::net::SocketAddr>,
}

impl AdminAudit {
    pub fn answered(self, status: StatusCode) {
        let AdminAudit { token, method, path, remote } = self;
        tracing::info!(
            target: "raftkv::audit",
            token = &*token,
            %method,
            path,
            remote = ?remote,
            status = status.as_u16(),
            "admin request"
        );
    }
}

fn remote(request: &axum::extract::Request) -> Option<std::net::SocketAddr> {
    request.extensions().get::<raftkv_raft::transport::listen::ConnInfo>().map(|info| info.remote)
}

/// A refusal's answer, logged on the audit target at most once per 10 s
/// (with how many were held back): a guessing client cannot flood the log.
fn refused(request: &axum::extract::Request, status: StatusCode, code: &'static str, message: String) -> Box<Response> {
    let mut limiter = REFUSALS.lock().unwrap_or_else(|p| p.into_inner());
    if limiter.allow() {
        let suppressed = limiter.take_suppressed();
        let (method, path) = (request.method(), request.uri().path());
        tracing::warn!(target: "raftkv::audit", status = status.as_u16(), %method, path, remote = ?remote(request), suppressed, "request refused");
    }
    Box::new(refuse(status, code, message))
}

static REFUSALS: std::sync::LazyLock<std::sync::Mutex<raftkv_raft::transport::Ratelimited>> =
    std::sync::LazyLock::new(|| {
        std::sync::Mutex::new(raftkv_raft::transport::Ratelimited::new(Duration::from_secs(10)))
    });

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("tokens.json");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn a_token_file_loads_and_finds_tokens_by_secret() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(
            dir.path(),
            r#"{"tokens":[{"name":"ops","role":"admin","secret":"0123456789abcdef"},
                         {"name":"app","role":"write","secret":"fedcba9876543210"}]}"#,
        );
        let tokens = Tokens::load(&path).unwrap();
        assert_eq!(tokens.len(), 2);
        let ops = tokens.lookup("0123456789abcdef").unwrap();
        assert_eq!((&*ops.name, ops.role), ("ops", Role::Admin));
        assert!(tokens.lookup("0123456789abcdeF").is_none());
        assert!(!format!("{tokens:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn bad_token_files_are_refused_and_a_reload_keeps_the_old_tokens() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            (r#"{"tokens":[{"name":"a","role":"root","secret":"0123456789abcdef"}]}"#, "not valid"),
            (r#"{"tokens":[{"name":"a","role":"read","secret":"short"}]}"#, "at least 16"),
            (
                r#"{"tokens":[{"name":"a","role":"read","secret":"0123456789abcdef"},{"name":"a","role":"read","secret":"0123456789abcdeX"}]}"#,
                "unique",
            ),
            (
                r#"{"tokens":[{"name":"a","role":"read","secret":"0123456789abcdef"},{"name":"b","role":"admin","secret":"0123456789abcdef"}]}"#,
                "share a secret",
            ),
            (r#"{"tokens":[],"extra":1}"#, "not valid"),
        ] {
            let path = write(dir.path(), text);
            let error = Tokens::load(&path).unwrap_err();
            assert!(error.contains(expected), "{text}: {error}");
        }
        let path = write(dir.path(), r#"{"tokens":[{"name":"a","role":"read","secret":"0123456789abcdef"}]}"#);
        let tokens = Tokens::load(&path).unwrap();
        std::fs::write(&path, "{not json").unwrap();
        assert!(tokens.reload().is_err());
        assert!(tokens.lookup("0123456789abcdef").is_some());
        std::fs::write(&path, r#"{"tokens":[{"name":"b","role":"write","secret":"abcdefabcdefabcdef"}]}"#).unwrap();
        assert!(tokens.reload().unwrap());
        assert!(tokens.lookup("0123456789abcdef").is_none());
        assert_eq!(tokens.lookup("abcdefabcdefabcdef").unwrap().role, Role::Write);
    }
}
