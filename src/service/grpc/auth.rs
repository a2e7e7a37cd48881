//! Who may call what on standin's gRPC server: bearer tokens from a file, client-certificate subjects, and a tower layer that refuses the rest.
//!
//! `Resign` and `Faults` steer the cluster, so they need an authenticated
//! caller: a token listed in `server.auth.tokensFile`, or a client
//! certificate whose subject is in `server.auth.allowedSubjects`. A caller on
//! loopback is trusted instead only while the server itself listens on
//! loopback with no credential configured, or `server.auth.trustLoopback`
//! says so. Calls that change state (kv `Put`, tso `Allocate`) need a token
//! or a verified certificate once the server listens off loopback, unless
//! `server.auth.anonymousWrites` opens them. Every other call answers any
//! client that passed TLS, unless `server.auth.authenticateReads` asks for
//! a caller there too.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use http::{HeaderMap, Request};
use tonic::Status;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};

use super::gate::{Admit, GateLayer, Gated};
use crate::config::{ConfigError, ServerAuthConfig, read_named_file};

/// The calls that steer a node, by gRPC path prefix.
const PRIVILEGED: &[&str] = &["/standin.v1.Coordination/Resign", "/standin.v1.Faults/"];

/// The calls that change what a role holds, by gRPC path prefix: anyone
/// who may make them can fill etcd or push the oracle ahead of the clock.
const WRITES: &[&str] = &["/standin.v1.Kv/Put", "/standin.v1.Tso/Allocate"];

/// What a call may do, and so what it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Steers the node: an authenticated caller, or a trusted loopback one.
    Steers,
    /// Changes state: as a read while writes are open, else as `Steers`
    /// but any verified certificate will do.
    Writes,
    /// Reads.
    Reads,
}

/// Failures building the server's TLS and auth from config.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// A file the `server` section names could not be read.
    #[error(transparent)]
    FileUnreadable(ConfigError),
    /// A line of the tokens file is not `name:token`; the error names the
    /// line but never shows its text, which may hold a token.
    #[error("{path} line {line}: {problem} (each line is `name:token`; `#` starts a comment)")]
    TokensFileMalformed {
        /// The tokens file.
        path: PathBuf,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
}

/// The bearer tokens of `server.auth.tokensFile`, by the name logs show.
#[derive(Clone, Default)]
pub struct Tokens {
    entries: Vec<(String, TokenDigest)>,
}

// By hand: the names may show, the tokens never.
impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(name, _)| name))
            .finish()
    }
}

impl Tokens {
    /// Reads a tokens file: one `name:token` per line, blank lines and
    /// lines starting with `#` skipped, names and tokens unique.
    pub fn load(path: &Path) -> Result<Self, AuthError> {
        let bytes =
            read_named_file("server.auth.tokensFile", path).map_err(AuthError::FileUnreadable)?;
        let malformed = |line, problem| AuthError::TokensFileMalformed {
            path: path.to_owned(),
            line,
            problem,
        };
        let text = std::str::from_utf8(&bytes).map_err(|error| {
            let line = bytes[..error.valid_up_to()]
                .iter()
                .filter(|b| **b == b'\n')
                .count()
                + 1;
            malformed(line, "it is not UTF-8")
        })?;
        Self::parse(text).map_err(|(line, problem)| malformed(line, problem))
    }

    /// Parses a tokens file's text; an error is the line number and what is wrong.
    pub fn parse(text: &str) -> Result<Self, (usize, &'static str)> {
        let mut entries: Vec<(String, TokenDigest)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let at = index + 1;
            let Some((name, token)) = line.split_once(':') else {
                return Err((at, "no `:` between the name and the token"));
            };
            let (name, token) = (name.trim(), token.trim());
            if name.is_empty() {
                return Err((at, "the name is empty"));
            }
            if token.is_empty() {
                return Err((at, "the token is empty"));
            }
            if entries.iter().any(|(known, _)| known == name) {
                return Err((at, "the name is listed twice"));
            }
            let token = digest(token.as_bytes());
            if entries.iter().any(|(_, known)| *known == token) {
                return Err((at, "the token is listed twice"));
            }
            entries.push((name.to_owned(), token));
        }
        Ok(Self { entries })
    }

    /// Whether the file listed no token.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The name of `token`, its digest compared in constant time with every
    /// entry's, so that timing tells neither how much of a guess was right
    /// nor how long a token is.
    fn name_of(&self, token: &[u8]) -> Option<&str> {
        let token = digest(token);
        let mut found = None;
        for (name, known) in &self.entries {
            if constant_time_eq(known, &token) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// A token as the tokens file keeps it: its SHA-256, so that every
/// comparison is of 32 bytes whatever the lengths of the token guessed and
/// of the tokens known.
type TokenDigest = [u8; 32];

fn digest(token: &[u8]) -> TokenDigest {
    let digest = ring::digest::digest(&ring::digest::SHA256, token);
    let mut bytes = [0; 32];
    bytes.copy_from_slice(digest.as_ref());
    bytes
}

fn constant_time_eq(a: &TokenDigest, b: &TokenDigest) -> bool {
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Who made an accepted call, as logs show it. The layer puts it in the
/// request's extensions, so a service can say who asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// A bearer token of the tokens file, by its name.
    Token {
        /// The token's name.
        name: String,
    },
    /// A client certificate the CA verified, by its subject.
    Certificate {
        /// The certificate's subject.
        subject: String,
    },
    /// No credential; the peer's address, when known.
    Anonymous {
        /// The peer.
        peer: Option<SocketAddr>,
    },
}

impl fmt::Display for Caller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Caller::Token { name } => write!(f, "token {name:?}"),
            Caller::Certificate { subject } => write!(f, "certificate {subject:?}"),
            Caller::Anonymous { peer: Some(peer) } => write!(f, "anonymous peer {peer}"),
            Caller::Anonymous { peer: None } => write!(f, "anonymous peer"),
        }
    }
}

/// What a request brings to be judged by: read off the connection and headers.
#[derive(Debug, Clone, Default)]
pub struct Presented {
    /// The TCP peer.
    pub peer: Option<SocketAddr>,
    /// The verified client certificate's common name and full subject.
    pub certificate: Option<Subject>,
    /// The `authorization` header, as sent.
    pub authorization: Option<Vec<u8>>,
}

/// A client certificate's subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subject {
    /// Its common name, when it has one.
    pub common_name: Option<String>,
    /// The whole subject as printed (`CN=operator, O=Example`).
    pub full: String,
}

/// The rules one server applies.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    tokens: Tokens,
    allowed_subjects: Vec<String>,
    authenticate_reads: bool,
    privileged: Vec<String>,
    writes: Vec<String>,
    /// `server.auth.anonymousWrites`.
    anonymous_writes: bool,
    /// `server.auth.trustLoopback`.
    trust_loopback: bool,
    /// Whether the server listens on loopback only, so every caller is on
    /// this host. Unknown counts as off loopback: closed.
    loopback_listener: bool,
}

impl Policy {
    /// The policy of `server.auth`, the tokens file read.
    pub fn from_config(auth: &ServerAuthConfig) -> Result<Self, AuthError> {
        let tokens = match &auth.tokens_file {
            Some(path) => Tokens::load(path)?,
            None => Tokens::default(),
        };
        let mut policy = Self::new(
            tokens,
            auth.allowed_subjects.clone(),
            auth.authenticate_reads,
        );
        policy.anonymous_writes = auth.anonymous_writes;
        policy.trust_loopback = auth.trust_loopback;
        Ok(policy)
    }

    /// A policy from its parts, for a server that listens off loopback
    /// (see [`listening_on`](Self::listening_on)).
    pub fn new(tokens: Tokens, allowed_subjects: Vec<String>, authenticate_reads: bool) -> Self {
        Self {
            tokens,
            allowed_subjects,
            authenticate_reads,
            privileged: PRIVILEGED.iter().map(|p| (*p).to_owned()).collect(),
            writes: WRITES.iter().map(|p| (*p).to_owned()).collect(),
            ..Self::default()
        }
    }

    /// Where the server listens: on loopback, every caller is on this host,
    /// so writes are open and, without credentials, loopback callers may
    /// steer. Not called, the server is taken to listen off loopback.
    pub fn listening_on(mut self, address: std::net::SocketAddr) -> Self {
        self.loopback_listener = address.ip().is_loopback();
        self
    }

    /// Also treats calls whose path starts with `prefix`
    /// (`/my.pkg.Admin/`) as steering: for an embedder's own services.
    pub fn privileged(mut self, prefix: impl Into<String>) -> Self {
        self.privileged.push(prefix.into());
        self
    }

    /// Also treats calls whose path starts with `prefix`
    /// (`/my.pkg.Store/Put`) as changing state: for an embedder's own services.
    pub fn writes(mut self, prefix: impl Into<String>) -> Self {
        self.writes.push(prefix.into());
        self
    }

    /// Whether any credential is configured; without one, loopback callers
    /// may steer and nobody else may.
    fn has_credentials(&self) -> bool {
        !self.tokens.is_empty() || !self.allowed_subjects.is_empty()
    }

    /// Whether a caller on loopback is trusted as if authenticated: only
    /// when asked to, or when the server listens on loopback alone and no
    /// credential says who may steer (behind a sidecar or a port-forward
    /// every caller looks like loopback).
    fn trusts_loopback(&self) -> bool {
        self.trust_loopback || (self.loopback_listener && !self.has_credentials())
    }

    /// Whether anonymous callers may change state.
    fn writes_open(&self) -> bool {
        self.anonymous_writes || self.loopback_listener
    }

    fn is_privileged(&self, path: &str) -> bool {
        self.privileged
            .iter()
            .any(|prefix| path.starts_with(prefix))
    }

    fn class_of(&self, path: &str) -> Class {
        if self.is_privileged(path) {
            Class::Steers
        } else if self.writes.iter().any(|prefix| path.starts_with(prefix)) {
            Class::Writes
        } else {
            Class::Reads
        }
    }

    /// Whether this policy refuses every anonymous caller's writes: for a
    /// warning at start when it also has no credential to admit anyone.
    pub fn writes_need_credentials(&self) -> bool {
        !self.writes_open() && !self.trust_loopback
    }

    fn allows(&self, subject: &Subject) -> bool {
        self.allowed_subjects.iter().any(|allowed| {
            subject.common_name.as_deref() == Some(allowed.as_str()) || subject.full == *allowed
        })
    }

    /// Judges a call to `path`: who made it, or the refusal to send.
    pub fn judge(&self, path: &str, presented: &Presented) -> Result<Caller, Status> {
        let class = self.class_of(path);
        let privileged = class == Class::Steers;
        let path = &crate::service::shown::shown(path);
        if let Some(header) = &presented.authorization {
            let Some(token) = bearer(header) else {
                return Err(Status::unauthenticated(
                    "the authorization header is not `Bearer <token>`",
                ));
            };
            if self.tokens.is_empty() {
                return Err(Status::unauthenticated(
                    "this node accepts no bearer tokens (server.auth.tokensFile is not set)",
                ));
            }
            return match self.tokens.name_of(token) {
                Some(name) => Ok(Caller::Token {
                    name: name.to_owned(),
                }),
                None => Err(Status::unauthenticated(
                    "the bearer token is not one of server.auth.tokensFile's",
                )),
            };
        }
        if let Some(subject) = &presented.certificate {
            if !privileged || self.allows(subject) {
                return Ok(Caller::Certificate {
                    subject: subject.full.clone(),
                });
            }
            // Without credentials configured, a certificate counts for as
            // little as none: the loopback rule below decides.
            if self.has_credentials() {
                return Err(Status::permission_denied(format!(
                    "{path} needs a certificate subject listed in server.auth.allowedSubjects; \
                     {:?} is not",
                    subject.full
                )));
            }
        }
        let anonymous = Caller::Anonymous {
            peer: presented.peer,
        };
        if self.trusts_loopback() && presented.peer.is_some_and(|p| p.ip().is_loopback()) {
            return Ok(anonymous);
        }
        if privileged {
            let why = if self.has_credentials() {
                "send a bearer token of server.auth.tokensFile, or a client certificate \
                 listed in server.auth.allowedSubjects"
            } else if self.loopback_listener {
                "this node has no server.auth credentials, so only callers on loopback may"
            } else {
                "this node listens off loopback and has no server.auth credentials, so nobody \
                 may: set server.auth.tokensFile, or server.auth.allowedSubjects with \
                 server.tls.clientCaFile"
            };
            return Err(Status::unauthenticated(format!(
                "{path} needs an authenticated caller: {why}"
            )));
        }
        if class == Class::Writes && !self.writes_open() {
            return Err(Status::unauthenticated(format!(
                "{path} changes state, and this node listens off loopback: send a bearer token \
                 of server.auth.tokensFile or a client certificate (client.tokenFile, \
                 client.tls), or set server.auth.anonymousWrites: true to let anyone who \
                 reaches the port write"
            )));
        }
        if self.authenticate_reads {
            return Err(Status::unauthenticated(format!(
                "{path} needs an authenticated caller (server.auth.authenticateReads): send a \
                 bearer token or a client certificate"
            )));
        }
        Ok(anonymous)
    }
}

/// The token of an `authorization: Bearer <token>` header.
fn bearer(header: &[u8]) -> Option<&[u8]> {
    let scheme = header.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = header[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Reads what a request presents: its peer and verified certificate from
/// the connection tonic recorded, its token from the headers.
fn presented<B>(request: &Request<B>) -> Presented {
    let extensions = request.extensions();
    let (peer, certificate) = match extensions.get::<TlsConnectInfo<TcpConnectInfo>>() {
        Some(tls) => (
            tls.get_ref().remote_addr(),
            tls.peer_certs()
                .and_then(|certs| certs.first().and_then(|der| subject(der.as_ref()))),
        ),
        None => (
            extensions
                .get::<TcpConnectInfo>()
                .and_then(TcpConnectInfo::remote_addr),
            None,
        ),
    };
    Presented {
        peer,
        certificate,
        authorization: authorization(request.headers()),
    }
}

fn authorization(headers: &HeaderMap) -> Option<Vec<u8>> {
    headers
        .get(http::header::AUTHORIZATION)
        .map(|value| value.as_bytes().to_vec())
}

/// The subject of a DER certificate; `None` when it does not parse (the
/// TLS layer verified it, so that does not happen in practice).
fn subject(der: &[u8]) -> Option<Subject> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der).ok()?;
    let name = certificate.subject();
    Some(Subject {
        common_name: name
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        full: name.to_string(),
    })
}

/// Refuses calls the [`Policy`] does not allow, with a log line naming the
/// peer; puts the [`Caller`] of an accepted call in its extensions.
pub type AuthLayer = GateLayer<Policy>;

/// A service behind an [`AuthLayer`].
pub type Authorized<S> = Gated<S, Policy>;

impl AuthLayer {
    /// A layer applying `policy`.
    pub fn new(policy: Policy) -> Self {
        Self {
            admit: Arc::new(policy),
        }
    }
}

impl Admit for Policy {
    fn admit<B>(&self, request: &mut Request<B>) -> Result<(), Status> {
        let presented = presented(request);
        let path = request.uri().path().to_owned();
        match self.judge(&path, &presented) {
            Ok(caller) => {
                request.extensions_mut().insert(caller);
                Ok(())
            }
            Err(status) => {
                let peer = presented
                    .peer
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string());
                let certificate = presented.certificate.as_ref().map(|s| s.full.as_str());
                tracing::warn!(
                    %peer,
                    certificate,
                    path = crate::service::shown::shown(&path),
                    code = ?status.code(),
                    "refused a call: {}",
                    status.message()
                );
                metrics::counter!(
                    crate::telemetry::API_CALLS_REFUSED,
                    "code" => code_label(status.code())
                )
                .increment(1);
                Err(status)
            }
        }
    }
}

fn code_label(code: tonic::Code) -> &'static str {
    match code {
        tonic::Code::Unauthenticated => "unauthenticated",
        tonic::Code::PermissionDenied => "permission_denied",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RESIGN: &str = "/standin.v1.Coordination/Resign";
    const STATUS: &str = "/standin.v1.Coordination/Status";
    const INJECT: &str = "/standin.v1.Faults/Inject";
    const PUT: &str = "/standin.v1.Kv/Put";
    const ALLOCATE: &str = "/standin.v1.Tso/Allocate";
    const GET: &str = "/standin.v1.Kv/Get";

    fn listener(host: &str) -> SocketAddr {
        SocketAddr::new(host.parse().unwrap(), 19530)
    }

    fn anonymous(address: &str) -> Presented {
        Presented {
            peer: peer(address),
            ..Presented::default()
        }
    }

    fn tokens() -> Tokens {
        Tokens::parse("# operators\nalice: s3cret\n\nci:other-token\n").unwrap()
    }

    fn peer(address: &str) -> Option<SocketAddr> {
        Some(address.parse().unwrap())
    }

    fn with_token(token: &str) -> Presented {
        Presented {
            peer: peer("10.0.0.9:5000"),
            authorization: Some(format!("Bearer {token}").into_bytes()),
            ..Presented::default()
        }
    }

    fn with_certificate(cn: &str) -> Presented {
        Presented {
            peer: peer("10.0.0.9:5000"),
            certificate: Some(Subject {
                common_name: Some(cn.to_owned()),
                full: format!("CN={cn}, O=Example"),
            }),
            ..Presented::default()
        }
    }

    #[test]
    fn tokens_files_name_the_bad_line_and_never_show_it() {
        assert_eq!(tokens().entries.len(), 2);
        assert_eq!(tokens().name_of(b"s3cret"), Some("alice"));
        assert_eq!(tokens().name_of(b"s3cre"), None);
        for (text, line, problem) in [
            ("alice\n", 1, "no `:`"),
            ("# c\n:tok\n", 2, "name is empty"),
            ("a:\n", 1, "token is empty"),
            ("a:x\na:y\n", 2, "name is listed twice"),
            ("a:x\nb:x\n", 2, "token is listed twice"),
        ] {
            let (at, why) = Tokens::parse(text).unwrap_err();
            assert_eq!(at, line, "{text:?}");
            assert!(why.contains(problem), "{text:?}: {why}");
        }
        let shown = format!("{:?}", tokens());
        assert!(
            shown.contains("alice") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn a_listed_token_steers_and_a_wrong_or_missing_one_is_refused() {
        let policy = Policy::new(tokens(), vec![], false);
        assert_eq!(
            policy.judge(RESIGN, &with_token("s3cret")).unwrap(),
            Caller::Token {
                name: "alice".into()
            }
        );
        let wrong = policy.judge(RESIGN, &with_token("guess")).unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(!wrong.message().contains("guess"), "{}", wrong.message());
        let none = policy
            .judge(
                INJECT,
                &Presented {
                    peer: peer("127.0.0.1:5000"),
                    ..Presented::default()
                },
            )
            .unwrap_err();
        assert_eq!(none.code(), tonic::Code::Unauthenticated);
        assert!(none.message().contains("tokensFile"), "{}", none.message());
        // Reads stay open, but a wrong token is still refused: the client is misconfigured.
        assert!(policy.judge(STATUS, &Presented::default()).is_ok());
        assert!(policy.judge(STATUS, &with_token("guess")).is_err());
        let malformed = Presented {
            authorization: Some(b"Basic abc".to_vec()),
            ..Presented::default()
        };
        assert!(policy.judge(STATUS, &malformed).is_err());
    }

    #[test]
    fn only_allowed_certificate_subjects_steer() {
        let policy = Policy::new(Tokens::default(), vec!["operator".into()], false);
        assert!(policy.judge(RESIGN, &with_certificate("operator")).is_ok());
        let refused = policy
            .judge(RESIGN, &with_certificate("intruder"))
            .unwrap_err();
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("CN=intruder"),
            "{}",
            refused.message()
        );
        // Any verified certificate may read.
        assert!(policy.judge(STATUS, &with_certificate("intruder")).is_ok());
        // The whole subject matches too.
        let by_subject = Policy::new(Tokens::default(), vec!["CN=ci, O=Example".into()], false);
        assert!(by_subject.judge(RESIGN, &with_certificate("ci")).is_ok());
    }

    #[test]
    fn without_credentials_only_loopback_steers() {
        let open =
            Policy::new(Tokens::default(), vec![], false).listening_on(listener("127.0.0.1"));
        let local = Presented {
            peer: peer("127.0.0.1:5000"),
            ..Presented::default()
        };
        let remote = Presented {
            peer: peer("192.0.2.1:5000"),
            ..Presented::default()
        };
        assert!(open.judge(RESIGN, &local).is_ok());
        let refused = open.judge(RESIGN, &remote).unwrap_err();
        assert!(
            refused.message().contains("loopback"),
            "{}",
            refused.message()
        );
        assert!(open.judge(STATUS, &remote).is_ok());
        // A token sent to a node that has none is refused, not ignored.
        assert!(open.judge(STATUS, &with_token("x")).is_err());
    }

    #[test]
    fn off_loopback_writes_need_a_caller_unless_opened_in_so_many_words() {
        let closed =
            Policy::new(Tokens::default(), vec![], false).listening_on(listener("0.0.0.0"));
        for path in [PUT, ALLOCATE] {
            for caller in ["192.0.2.1:5000", "127.0.0.1:5000"] {
                let refused = closed.judge(path, &anonymous(caller)).unwrap_err();
                assert_eq!(refused.code(), tonic::Code::Unauthenticated);
                assert!(
                    refused.message().contains("server.auth.anonymousWrites"),
                    "{}",
                    refused.message()
                );
            }
        }
        assert!(closed.writes_need_credentials());
        // Reads stay open; steering is refused to everyone, loopback included.
        assert!(closed.judge(GET, &anonymous("192.0.2.1:5000")).is_ok());
        let refused = closed
            .judge(RESIGN, &anonymous("127.0.0.1:5000"))
            .unwrap_err();
        assert!(
            refused.message().contains("listens off loopback"),
            "{}",
            refused.message()
        );
        // A token, or any verified certificate, may write.
        let with_tokens = Policy::new(tokens(), vec![], false).listening_on(listener("10.0.0.1"));
        assert!(with_tokens.judge(PUT, &with_token("s3cret")).is_ok());
        assert!(with_tokens.judge(PUT, &with_certificate("anyone")).is_ok());
        assert!(with_tokens.judge(PUT, &anonymous("10.0.0.2:1")).is_err());

        let opened = ServerAuthConfig {
            anonymous_writes: true,
            ..ServerAuthConfig::default()
        };
        let opened = Policy::from_config(&opened)
            .unwrap()
            .listening_on(listener("0.0.0.0"));
        assert!(!opened.writes_need_credentials());
        assert!(opened.judge(ALLOCATE, &anonymous("192.0.2.1:5000")).is_ok());
        assert!(opened.judge(RESIGN, &anonymous("127.0.0.1:5000")).is_err());
    }

    #[test]
    fn loopback_is_trusted_only_on_a_loopback_listener_without_credentials_or_when_asked() {
        let local = anonymous("127.0.0.1:5000");
        // On loopback, writes are open to every caller and steering to loopback ones.
        let on_loopback =
            Policy::new(Tokens::default(), vec![], false).listening_on(listener("127.0.0.1"));
        assert!(on_loopback.judge(PUT, &local).is_ok());
        assert!(on_loopback.judge(RESIGN, &local).is_ok());
        // Credentials configured: loopback earns nothing for steering.
        let with_tokens = Policy::new(tokens(), vec![], false).listening_on(listener("::1"));
        assert!(with_tokens.judge(PUT, &local).is_ok());
        assert!(with_tokens.judge(RESIGN, &local).is_err());
        // Off loopback a sidecar's calls look local, so they earn nothing ...
        let behind_sidecar = Policy::new(tokens(), vec![], false).listening_on(listener("0.0.0.0"));
        assert!(behind_sidecar.judge(PUT, &local).is_err());
        // ... unless the config says so.
        let trusting = ServerAuthConfig {
            trust_loopback: true,
            ..ServerAuthConfig::default()
        };
        let trusting = Policy::from_config(&trusting)
            .unwrap()
            .listening_on(listener("0.0.0.0"));
        assert!(trusting.judge(PUT, &local).is_ok());
        assert!(trusting.judge(RESIGN, &local).is_ok());
        assert!(
            trusting
                .judge(RESIGN, &anonymous("192.0.2.1:5000"))
                .is_err()
        );
    }

    #[test]
    fn an_embedders_prefix_can_change_state() {
        let policy = Policy::new(tokens(), vec![], false)
            .listening_on(listener("0.0.0.0"))
            .writes("/my.Store/Put");
        assert!(
            policy
                .judge("/my.Store/Put", &anonymous("192.0.2.1:5000"))
                .is_err()
        );
        assert!(
            policy
                .judge("/my.Store/Get", &anonymous("192.0.2.1:5000"))
                .is_ok()
        );
    }

    #[test]
    fn tokens_are_kept_and_compared_as_digests_of_one_length() {
        let tokens = Tokens::parse("ops:s3cret\n").unwrap();
        // The token itself is not kept, only its SHA-256.
        assert_eq!(tokens.entries, [("ops".to_owned(), digest(b"s3cret"))]);
        assert_eq!(tokens.name_of(b"s3cret"), Some("ops"));
        for guess in [&b"s3cre"[..], b"s3crett", b"", b"S3CRET"] {
            assert_eq!(tokens.name_of(guess), None, "{guess:?}");
        }
    }

    #[test]
    fn authenticated_reads_need_a_caller_everywhere() {
        let strict = Policy::new(tokens(), vec![], true);
        assert!(strict.judge(STATUS, &Presented::default()).is_err());
        assert!(strict.judge(STATUS, &with_token("other-token")).is_ok());
        assert!(strict.judge(STATUS, &with_certificate("anyone")).is_ok());
    }

    #[test]
    fn an_embedders_prefix_can_be_privileged() {
        let policy = Policy::new(tokens(), vec![], false).privileged("/my.Admin/");
        assert!(
            policy
                .judge("/my.Admin/Drain", &Presented::default())
                .is_err()
        );
        assert!(
            policy
                .judge("/my.Admin/Drain", &with_token("s3cret"))
                .is_ok()
        );
    }

    proptest::proptest! {
        /// Any tokens file parses or names a line of it, and never shows a token.
        #[test]
        fn any_tokens_file_parses_or_names_a_line(text in "([a-z]{0,4}(:[!-~]{0,6})?[ #]?\n){0,8}") {
            match Tokens::parse(&text) {
                Ok(tokens) => {
                    let listed = text.lines().map(str::trim).filter(|line| !line.is_empty() && !line.starts_with('#'));
                    for line in listed {
                        let (name, token) = line.split_once(':').expect("a parsed line has a name");
                        proptest::prop_assert_eq!(tokens.name_of(token.trim().as_bytes()), Some(name.trim()));
                    }
                }
                Err((line, _)) => proptest::prop_assert!(line >= 1 && line <= text.lines().count()),
            }
        }

        /// Any path and header bytes are judged without panic; a steering
        /// call is let through only with the listed token, and a refusal
        /// never echoes the header.
        #[test]
        fn any_request_is_judged(
            path in "/[ -~]{0,200}",
            header in proptest::option::of(proptest::collection::vec(proptest::num::u8::ANY, 0..80)),
            loopback in proptest::bool::ANY,
        ) {
            let policy = Policy::new(tokens(), vec!["operator".into()], false);
            let presented = Presented {
                peer: if loopback { peer("127.0.0.1:1") } else { peer("192.0.2.7:1") },
                authorization: header.clone(),
                ..Presented::default()
            };
            match policy.judge(&path, &presented) {
                Ok(Caller::Token { name }) => {
                    proptest::prop_assert!(name == "alice" || name == "ci");
                }
                Ok(_) => proptest::prop_assert!(!policy.is_privileged(&path)),
                Err(status) => {
                    proptest::prop_assert!(status.message().len() < 1024);
                    if let Some(token) = header.as_deref().and_then(bearer) {
                        let token = String::from_utf8_lossy(token);
                        proptest::prop_assert!(token.len() < 4 || !status.message().contains(token.as_ref()));
                    }
                }
            }
        }
    }
}
