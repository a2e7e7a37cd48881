//! Validation: rejects values that parse but cannot work, naming the offending key.

use std::path::Path;
use std::time::Duration;

use humantime_serde::re::humantime;

use super::{
    BackoffConfig, CLIENT_TLS, CONCURRENT_LOADS, Config, ConfigError, ETCD_TLS, MAX_PAGE_SIZE,
    MAX_TTL_SECS, MIN_TTL, PAGE_BYTES, TlsConfig, TlsKeys, WATCH_STREAMS,
};

impl Config {
    /// Rejects values that parse but cannot work; the error names the first
    /// offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_etcd()?;
        self.validate_node()?;
        self.validate_session()?;
        self.validate_coordinator()?;
        self.validate_reload()?;
        self.validate_server()?;
        self.validate_client()?;
        self.tso.validate()?;
        self.kv.validate()
    }

    fn validate_etcd(&self) -> Result<(), ConfigError> {
        let etcd = &self.etcd;
        if etcd.endpoints.is_empty() {
            return Err(invalid(
                "etcd.endpoints",
                "[]",
                "must list at least one etcd endpoint",
            ));
        }
        if etcd.endpoints.iter().any(|e| e.trim().is_empty()) {
            return Err(invalid(
                "etcd.endpoints",
                format!("{:?}", etcd.endpoints),
                "must not contain an empty endpoint",
            ));
        }
        let root = &etcd.root_path;
        if root.is_empty() {
            return Err(invalid(
                "etcd.rootPath",
                "\"\"",
                "must not be empty: standin's keys would mix with every other key in the cluster",
            ));
        }
        if root.starts_with('/') || root.ends_with('/') || root.contains("//") {
            return Err(invalid(
                "etcd.rootPath",
                format!("{root:?}"),
                "must not start or end with '/' nor contain '//': keys are built as \
                 `{rootPath}/election/...`, so such a root gives keys with an empty segment",
            ));
        }
        nonzero(
            "etcd.connectTimeout",
            etcd.connect_timeout,
            "no connection could ever be made",
        )?;
        nonzero(
            "etcd.requestTimeout",
            etcd.request_timeout,
            "every etcd request would time out",
        )?;
        validate_backoff(&etcd.retry, "etcd.retry.initial", "etcd.retry.max")?;
        watch_streams("etcd.watchStreams", etcd.watch_streams)?;
        self.validate_etcd_security()
    }

    fn validate_etcd_security(&self) -> Result<(), ConfigError> {
        let etcd = &self.etcd;
        if let Some(auth) = &etcd.auth {
            if auth.user.trim().is_empty() {
                return Err(invalid(
                    "etcd.auth.user",
                    format!("{:?}", auth.user),
                    "must not be empty: etcd authenticates a named user",
                ));
            }
            match (&auth.password, &auth.password_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        "etcd.auth.passwordFile",
                        "<set>",
                        "must not be set with etcd.auth.password: say the password one way",
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        "etcd.auth.password",
                        "~",
                        "must be set, or etcd.auth.passwordFile (or STANDIN_ETCD_AUTH_PASSWORD)",
                    ));
                }
                (None, Some(file)) => secret_file("etcd.auth.passwordFile", file)?,
                (Some(_), None) => {}
            }
        }
        let Some(tls) = &etcd.tls else {
            if let Some(https) = etcd.endpoints.iter().find(|e| e.starts_with("https://")) {
                return Err(invalid(
                    "etcd.tls",
                    "~",
                    format!(
                        "must be set for the https endpoint {https:?}: it names the CA to trust"
                    ),
                ));
            }
            return Ok(());
        };
        if let Some(http) = etcd.endpoints.iter().find(|e| e.starts_with("http://")) {
            return Err(invalid(
                "etcd.endpoints",
                format!("{:?}", etcd.endpoints),
                format!(
                    "{http:?} is plaintext while etcd.tls is set: write it without a scheme \
                     (https is then used) or with https://"
                ),
            ));
        }
        validate_tls(tls, &ETCD_TLS)
    }

    fn validate_server(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.server.tls {
            readable_file("server.tls.certFile", &tls.cert_file)?;
            readable_file("server.tls.keyFile", &tls.key_file)?;
            match &tls.client_ca_file {
                Some(ca) => readable_file("server.tls.clientCaFile", ca)?,
                None if tls.client_cert_optional => {
                    return Err(invalid(
                        "server.tls.clientCertOptional",
                        "true",
                        "needs server.tls.clientCaFile: without it no client presents a certificate",
                    ));
                }
                None => {}
            }
        }
        let limits = &self.server.limits;
        if limits.max_connections == 0 {
            return Err(invalid(
                "server.limits.maxConnections",
                "0",
                "must be above zero: no client could connect",
            ));
        }
        if limits.max_streams_per_connection == 0 {
            return Err(invalid(
                "server.limits.maxStreamsPerConnection",
                "0",
                "must be above zero: no call could be made",
            ));
        }
        if limits.max_request_bytes < 1024 {
            return Err(invalid(
                "server.limits.maxRequestBytes",
                limits.max_request_bytes.to_string(),
                "must be at least 1024: smaller refuses ordinary requests",
            ));
        }
        nonzero(
            "server.limits.handshakeTimeout",
            limits.handshake_timeout,
            "every connection would be closed at once",
        )?;
        let auth = &self.server.auth;
        if let Some(tokens) = &auth.tokens_file {
            secret_file("server.auth.tokensFile", tokens)?;
        }
        if let Some(blank) = auth.allowed_subjects.iter().find(|s| s.trim().is_empty()) {
            return Err(invalid(
                "server.auth.allowedSubjects",
                format!("{blank:?}"),
                "must not contain an empty subject",
            ));
        }
        let verifies_clients = self
            .server
            .tls
            .as_ref()
            .is_some_and(|tls| tls.client_ca_file.is_some());
        if !auth.allowed_subjects.is_empty() && !verifies_clients {
            return Err(invalid(
                "server.auth.allowedSubjects",
                format!("{:?}", auth.allowed_subjects),
                "needs server.tls.clientCaFile: without it no client certificate is verified",
            ));
        }
        Ok(())
    }

    fn validate_client(&self) -> Result<(), ConfigError> {
        if let Some(tls) = &self.client.tls {
            validate_tls(tls, &CLIENT_TLS)?;
        }
        if let Some(token) = &self.client.token_file {
            secret_file("client.tokenFile", token)?;
        }
        if self.client.max_in_flight == 0 {
            return Err(invalid(
                "client.maxInFlight",
                "0",
                "must be at least 1: no call could ever leave the client",
            ));
        }
        let percent = self.client.throttle_percent;
        if percent != 0 && percent < 100 {
            return Err(invalid(
                "client.throttlePercent",
                percent.to_string(),
                "must be 0 (off) or at least 100: below 100 the client would send less than \
                 the leader accepts and starve it of the calls that show it recovered",
            ));
        }
        Ok(())
    }

    fn validate_node(&self) -> Result<(), ConfigError> {
        if let Some(address) = &self.node.address
            && address.trim().is_empty()
        {
            return Err(invalid(
                "node.address",
                format!("{address:?}"),
                "must not be empty: it is published in the session so clients can reach this node",
            ));
        }
        let witness = [
            ("node.address", &self.node.address),
            ("node.witnessAddress", &self.node.witness_address),
            (
                "node.witnessAdvertisedAddress",
                &self.node.witness_advertised_address,
            ),
        ];
        for (key, address) in witness {
            if let Some(address) = address
                && crate::config::split_host_port(address).is_none()
            {
                return Err(invalid(
                    key,
                    format!("{address:?}"),
                    "must be host:port (an IPv6 host in brackets, [::1]:0): peers and \
                     clients dial it, and refuse a session whose address is not",
                ));
            }
        }
        if self.node.witness_max_connections == 0 {
            return Err(invalid(
                "node.witnessMaxConnections",
                "0",
                "must be at least 1: no peer could watch this node's witness",
            ));
        }
        if let Some(file) = &self.node.witness_secret_file {
            secret_file("node.witnessSecretFile", file)?;
            let secret = crate::config::read_secret("node.witnessSecretFile", file)?;
            if secret.len() < MIN_WITNESS_SECRET {
                return Err(invalid(
                    "node.witnessSecretFile",
                    file.display().to_string(),
                    format!(
                        "holds {} bytes; a witness secret needs at least {MIN_WITNESS_SECRET} \
                         (e.g. `head -c 32 /dev/urandom | base64`)",
                        secret.len()
                    ),
                ));
            }
        }
        let published = [
            ("node.address", &self.node.address),
            (
                "node.witnessAdvertisedAddress",
                &self.node.witness_advertised_address,
            ),
        ];
        for (key, address) in published {
            if let Some(address) = address
                && is_unspecified(address)
            {
                return Err(invalid(
                    key,
                    format!("{address:?}"),
                    format!("{UNSPECIFIED_PUBLISHED} ({})", publish_fix(key)),
                ));
            }
        }
        Ok(())
    }

    /// What is legal but likely wrong in a deployment of `roles`, one
    /// sentence each, for the node to log at start: a loopback address
    /// published to peers that reach etcd over the network, and a role
    /// section spelled with another case than the role.
    pub fn deployment_warnings(&self, roles: &[&str]) -> Vec<String> {
        let mut warnings = Vec::new();
        let remote_etcd = self
            .etcd
            .endpoints
            .iter()
            .find(|endpoint| !is_loopback_host(endpoint_host(endpoint)));
        if let Some(endpoint) = remote_etcd {
            let published = [
                ("node.address", Some(self.node.advertised().to_owned())),
                (
                    "node.witnessAdvertisedAddress",
                    self.node.witness_advertised_address.clone(),
                ),
            ];
            for (key, address) in published {
                if let Some(address) = address
                    && crate::config::split_host_port(&address)
                        .is_some_and(|(host, _)| is_loopback_host(host))
                {
                    warnings.push(format!(
                        "{key} is {address}, a loopback address, while etcd is reached at \
                         {endpoint}: nodes on other hosts cannot reach this one there ({})",
                        publish_fix(key)
                    ));
                }
            }
        }
        for role in roles {
            for section in self.roles.keys() {
                if section != role && section.eq_ignore_ascii_case(role) {
                    warnings.push(format!(
                        "config section {section:?} differs from role {role:?} only in case: \
                         it does not apply to the role (role sections match the role's name \
                         exactly; rename it to {role:?})"
                    ));
                }
            }
        }
        warnings
    }

    fn validate_session(&self) -> Result<(), ConfigError> {
        let session = &self.session;
        let ttl = session.ttl;
        if ttl < MIN_TTL {
            return Err(invalid(
                "session.ttl",
                show(ttl),
                "must be at least 2s, etcd's minimum lease TTL: etcd would keep the lease \
                 longer than configured, and the renew deadline would be computed from the wrong TTL",
            ));
        }
        if ttl.subsec_nanos() != 0 {
            return Err(invalid(
                "session.ttl",
                show(ttl),
                "must be a whole number of seconds: etcd lease TTLs are whole seconds",
            ));
        }
        if ttl.as_secs() > MAX_TTL_SECS {
            return Err(invalid(
                "session.ttl",
                show(ttl),
                format!("must be at most {MAX_TTL_SECS}s, etcd's maximum lease TTL"),
            ));
        }

        let deadline = session.renew_deadline();
        let deadline_shown = match session.renew_deadline {
            Some(_) => show(deadline),
            None => format!("{} (unset: 2/3 of session.ttl)", show(deadline)),
        };
        if deadline.is_zero() {
            return Err(invalid(
                "session.renewDeadline",
                deadline_shown,
                "must be above zero: the coordinator would step down as soon as it activates",
            ));
        }
        let margin = renew_margin(ttl);
        if deadline.saturating_add(margin) > ttl {
            return Err(invalid(
                "session.renewDeadline",
                deadline_shown,
                format!(
                    "must end at least {} (the larger of session.ttl / 5 and {}) before \
                     session.ttl ({}) expires the lease, so the coordinator has stepped down \
                     with time to spare for a slow clock or an answer already on its way; set \
                     session.renewDeadline to at most {} or raise session.ttl",
                    show(margin),
                    show(MIN_RENEW_MARGIN),
                    show(ttl),
                    show(ttl.saturating_sub(margin)),
                ),
            ));
        }

        let interval = session.keepalive_interval();
        let interval_shown = match session.keepalive_interval {
            Some(_) => show(interval),
            None => format!("{} (unset: session.ttl / 12)", show(interval)),
        };
        if interval.is_zero() {
            return Err(invalid(
                "session.keepaliveInterval",
                interval_shown,
                "must be above zero: keepalives would be sent in a tight loop",
            ));
        }
        if interval >= deadline {
            return Err(invalid(
                "session.keepaliveInterval",
                interval_shown,
                format!(
                    "must be below session.renewDeadline ({deadline_shown}) so a keepalive can \
                     renew the lease before the coordinator has to step down"
                ),
            ));
        }
        let timeout = session.keepalive_timeout();
        let timeout_shown = match session.keepalive_timeout {
            Some(_) => show(timeout),
            None => format!("{} (unset: session.ttl / 4)", show(timeout)),
        };
        if timeout.is_zero() {
            return Err(invalid(
                "session.keepaliveTimeout",
                timeout_shown,
                "must be above zero: no keepalive answer could ever arrive in time",
            ));
        }
        if (interval + timeout).saturating_mul(2) > deadline {
            return Err(invalid(
                "session.keepaliveTimeout",
                timeout_shown,
                format!(
                    "plus session.keepaliveInterval ({interval_shown}) must fit twice within \
                     session.renewDeadline ({deadline_shown}): one keepalive may go unanswered \
                     and the next must still renew the lease before the coordinator has to step down"
                ),
            ));
        }

        for (key, wait) in [
            ("session.witnessConfirm", session.witness_confirm),
            ("session.witnessGrace", session.witness_grace),
        ] {
            if wait > MAX_WITNESS_WAIT {
                return Err(invalid(
                    key,
                    show(wait),
                    format!(
                        "must be at most {}: it delays every takeover after a kill, and what \
                         the witness cannot settle within it is the lease's to settle",
                        show(MAX_WITNESS_WAIT)
                    ),
                ));
            }
        }

        if session.spread_in_flight == 0 {
            return Err(invalid(
                "session.spreadInFlight",
                "0",
                "must be at least 1: the moves of the spread under way at once \
                 (turn the spread off with session.spreadLeaders: false)",
            ));
        }
        nonzero(
            "session.spreadPace",
            session.spread_pace,
            "it is the least time between two moves of the spread",
        )?;
        nonzero(
            "session.standbyLogInterval",
            session.standby_log_interval,
            "it is the period of the STANDBY log line",
        )
    }

    fn validate_coordinator(&self) -> Result<(), ConfigError> {
        let coordinator = &self.coordinator;
        if coordinator.queue_depth == 0 {
            return Err(invalid(
                "coordinator.queueDepth",
                "0",
                "must be at least 1: requests wait in this queue for the coordinator",
            ));
        }
        if coordinator.max_batch == 0 {
            return Err(invalid(
                "coordinator.maxBatch",
                "0",
                "must be at least 1: the coordinator would never be handed a request",
            ));
        }
        nonzero(
            "coordinator.deactivateTimeout",
            coordinator.deactivate_timeout,
            "the deactivation hook would get no time to run",
        )?;
        nonzero(
            "coordinator.activateTimeout",
            coordinator.activate_timeout,
            "the activation hook would get no time to run",
        )?;
        validate_backoff(
            &coordinator.restart_backoff,
            "coordinator.restartBackoff.initial",
            "coordinator.restartBackoff.max",
        )
    }

    fn validate_reload(&self) -> Result<(), ConfigError> {
        let reload = &self.reload;
        nonzero(
            "reload.timeout",
            reload.timeout,
            "every reload would time out before it starts",
        )?;
        if !(1..=MAX_PAGE_SIZE).contains(&reload.page_size) {
            return Err(invalid(
                "reload.pageSize",
                reload.page_size.to_string(),
                format!(
                    "must be between 1 and {MAX_PAGE_SIZE}: each page is one etcd range \
                     request, which holds etcd's read for as long as it takes"
                ),
            ));
        }
        watch_streams("reload.watchStreams", reload.watch_streams)?;
        if !CONCURRENT_LOADS.contains(&reload.concurrent_loads) {
            return Err(invalid(
                "reload.concurrentLoads",
                reload.concurrent_loads.to_string(),
                format!(
                    "must be between {} and {}: at least one warm copy must load, and \
                     more at once only flood etcd when a node starts many roles",
                    CONCURRENT_LOADS.start(),
                    CONCURRENT_LOADS.end()
                ),
            ));
        }
        if !PAGE_BYTES.contains(&reload.page_bytes) {
            return Err(invalid(
                "reload.pageBytes",
                reload.page_bytes.to_string(),
                format!(
                    "must be between {} and {} bytes: smaller pages make a large prefix \
                     slow to read, larger ones hold too much memory at once",
                    PAGE_BYTES.start(),
                    PAGE_BYTES.end()
                ),
            ));
        }
        Ok(())
    }
}

/// The shortest witness secret accepted, in bytes.
const MIN_WITNESS_SECRET: usize = 16;

/// Why a published address cannot be unspecified.
const UNSPECIFIED_PUBLISHED: &str = "must not be an unspecified address (0.0.0.0 or ::): it is \
     published, and a peer or client dialing it would reach its own host";

/// How to publish the right address in place of `key`'s.
fn publish_fix(key: &str) -> String {
    let environment = match key {
        "node.address" => "STANDIN_NODE_ADDRESS, or `standin run --advertise`",
        _ => "STANDIN_NODE_WITNESS_ADVERTISED_ADDRESS",
    };
    format!(
        "set {key} ({environment}) to an address peers reach: the host's own IP, or in \
         Kubernetes the pod IP (status.podIP through the downward API)"
    )
}

/// Whether `address` (`host:port`) has an unspecified IP host.
pub(crate) fn is_unspecified(address: &str) -> bool {
    crate::config::split_host_port(address)
        .and_then(|(host, _)| host.parse::<std::net::IpAddr>().ok())
        .is_some_and(|ip| ip.is_unspecified())
}

/// Whether `host` (no brackets, no port) names this host: `localhost` or a loopback IP.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The host of an etcd endpoint (`http://h:2379`, `h:2379`, `[::1]:2379`, `h`).
fn endpoint_host(endpoint: &str) -> &str {
    let rest = endpoint
        .split_once("://")
        .map_or(endpoint, |(_, rest)| rest);
    let rest = rest.split('/').next().unwrap_or(rest);
    crate::config::split_host_port(rest).map_or(rest, |(host, _)| host)
}

fn validate_backoff(
    backoff: &BackoffConfig,
    initial_key: &'static str,
    max_key: &'static str,
) -> Result<(), ConfigError> {
    nonzero(
        initial_key,
        backoff.initial,
        "retries would spin with no delay",
    )?;
    if backoff.max < backoff.initial {
        return Err(invalid(
            max_key,
            show(backoff.max),
            format!(
                "must be at least {initial_key} ({}): it caps the delays that start there",
                show(backoff.initial)
            ),
        ));
    }
    Ok(())
}

/// A client's TLS settings: the certificate and key in pairs, a domain not
/// blank, every file readable.
fn validate_tls(tls: &TlsConfig, keys: &TlsKeys) -> Result<(), ConfigError> {
    match (&tls.cert_file, &tls.key_file) {
        (Some(_), None) => {
            return Err(invalid(
                keys.key,
                "~",
                format!(
                    "must be set with {}: a client certificate is useless without its key",
                    keys.cert
                ),
            ));
        }
        (None, Some(_)) => {
            return Err(invalid(
                keys.cert,
                "~",
                format!(
                    "must be set with {}: a key is useless without its certificate",
                    keys.key
                ),
            ));
        }
        _ => {}
    }
    if let Some(domain) = &tls.domain
        && domain.trim().is_empty()
    {
        return Err(invalid(
            keys.domain,
            "\"\"",
            "must not be empty: leave it out to check the endpoint's own host name",
        ));
    }
    readable_file(keys.ca, &tls.ca_file)?;
    if let Some(cert) = &tls.cert_file {
        readable_file(keys.cert, cert)?;
    }
    if let Some(key) = &tls.key_file {
        readable_file(keys.key, key)?;
    }
    Ok(())
}

/// Checks that `path` is a file this process can open, so a wrong path fails
/// at load, naming the key, rather than at the first TLS handshake.
fn readable_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    let opened = std::fs::File::open(path).and_then(|file| file.metadata());
    let checked = opened.and_then(|metadata| {
        if metadata.is_file() {
            Ok(())
        } else {
            Err(std::io::Error::other("not a regular file"))
        }
    });
    checked.map_err(|source| ConfigError::FileUnreadable {
        key,
        path: path.to_owned(),
        source,
    })
}

/// A readable file holding a secret, which no other user of the host may
/// read. As PostgreSQL asks of its key file: its owner's alone (`0600`),
/// or, owned by root, its group's too (`0640`, how root hands a secret to a
/// service's group). A file others may read is refused, unless it sits in a
/// secret mounted by Kubernetes or Docker, where the mode is the
/// orchestrator's (`defaultMode`) and not the operator's `chmod`: there it
/// is logged as a warning, and a group's read is the usual way a non-root
/// container reads its secret (`fsGroup`).
fn secret_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    readable_file(key, path)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let metadata = std::fs::metadata(path).map_err(|source| ConfigError::FileUnreadable {
            key,
            path: path.to_owned(),
            source,
        })?;
        let mode = metadata.permissions().mode() & 0o777;
        let holder = match (in_mounted_secret(path), metadata.uid()) {
            (true, _) => SecretHolder::Orchestrator,
            (false, 0) => SecretHolder::Root,
            (false, _) => SecretHolder::User,
        };
        match secret_mode(mode, holder) {
            SecretMode::Private => {}
            SecretMode::Warn => tracing::warn!(
                key,
                path = %path.display(),
                "{key}: {} is readable by any user of this host (mode {mode:o}, a mounted \
                 secret's default); set the volume's defaultMode to 0400, or 0440 with fsGroup",
                path.display()
            ),
            SecretMode::Refuse => {
                return Err(invalid(
                    key,
                    format!("{} (mode {mode:o})", path.display()),
                    format!(
                        "holds a secret, and other users of this host may read it: \
                         `chmod 600 {}` (or 640 with root as its owner and the group \
                         standin runs in)",
                        path.display()
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Who set a secret file's mode.
#[derive(Debug, Clone, Copy)]
enum SecretHolder {
    /// Kubernetes or Docker, mounting it.
    Orchestrator,
    /// Root, owning it.
    Root,
    /// Another user, owning it.
    User,
}

/// What a secret file's permission bits call for.
#[derive(Debug, PartialEq, Eq)]
enum SecretMode {
    Private,
    /// A mounted secret others may read: the orchestrator's default mode.
    Warn,
    Refuse,
}

fn secret_mode(mode: u32, holder: SecretHolder) -> SecretMode {
    let (group_reads, others_read) = (mode & 0o040 != 0, mode & 0o004 != 0);
    match (holder, group_reads, others_read) {
        (_, false, false) => SecretMode::Private,
        (SecretHolder::Orchestrator, _, true) => SecretMode::Warn,
        (SecretHolder::Orchestrator | SecretHolder::Root, true, false) => SecretMode::Private,
        _ => SecretMode::Refuse,
    }
}

/// Whether `path` is in a volume Kubernetes mounts (a secret or config
/// map: its files are links through a `..data` directory beside them) or
/// in Docker's and Compose's secrets directory.
fn in_mounted_secret(path: &Path) -> bool {
    let beside_data = path.parent().is_some_and(|dir| dir.join("..data").is_dir());
    let real = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    beside_data || real.starts_with("/run/secrets") || real.starts_with("/var/run/secrets")
}

/// Rejects a count of shared watch streams outside [`WATCH_STREAMS`].
fn watch_streams(key: &'static str, streams: usize) -> Result<(), ConfigError> {
    if WATCH_STREAMS.contains(&streams) {
        return Ok(());
    }
    Err(invalid(
        key,
        streams.to_string(),
        format!(
            "must be between {} and {}: the node's watches share these streams, \
             whatever the number of roles",
            WATCH_STREAMS.start(),
            WATCH_STREAMS.end()
        ),
    ))
}

/// Rejects a zero duration; `why` says what zero would do.
fn nonzero(key: &'static str, value: Duration, why: &str) -> Result<(), ConfigError> {
    if value.is_zero() {
        return Err(invalid(key, "0s", format!("must be above zero: {why}")));
    }
    Ok(())
}

/// The longest `session.witnessConfirm` and `session.witnessGrace`.
const MAX_WITNESS_WAIT: Duration = Duration::from_secs(1);

/// The least time between the renew deadline and the lease's TTL.
const MIN_RENEW_MARGIN: Duration = Duration::from_millis(500);

/// How long before etcd could expire the lease the coordinator must have
/// stepped down: the larger of a fifth of the TTL and [`MIN_RENEW_MARGIN`].
/// The term is trusted until the last keepalive sent plus the renew
/// deadline, and etcd expires the lease the TTL after it renewed it, later;
/// the margin is the room left for this host's clock running slow against
/// etcd's, and for an answer checked against the term just before its end
/// to leave. A fifth keeps the default (two thirds) and every TTL of 2 s or
/// more with the default keepalives valid.
fn renew_margin(ttl: Duration) -> Duration {
    (ttl / 5).max(MIN_RENEW_MARGIN)
}

fn invalid(key: &'static str, value: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        value: value.into(),
        message: message.into(),
    }
}

/// A duration the way it is written in the config (`6s 666ms 666us 666ns`).
fn show(duration: Duration) -> String {
    humantime::format_duration(duration).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{Scratch, parse_error, rejected};

    #[test]
    fn an_unspecified_published_address_is_refused_with_the_fix() {
        let mut config = Config::default();
        for address in ["0.0.0.0:19530", "[::]:19530"] {
            config.node.address = Some(address.to_owned());
            let text = rejected(&config, "node.address");
            assert!(text.contains("unspecified address"), "{text}");
            assert!(text.contains("--advertise"), "{text}");
            assert!(text.contains("status.podIP"), "{text}");
        }
        config.node.address = Some("10.1.2.3:19530".to_owned());
        config.node.witness_advertised_address = Some("0.0.0.0:19531".to_owned());
        let text = rejected(&config, "node.witnessAdvertisedAddress");
        assert!(
            text.contains("STANDIN_NODE_WITNESS_ADVERTISED_ADDRESS"),
            "{text}"
        );
        // Listening on every interface is what a container does.
        config.node.witness_advertised_address = None;
        config.node.witness_address = Some("0.0.0.0:19531".to_owned());
        config.validate().unwrap();
    }

    #[test]
    fn a_witness_secret_must_be_readable_and_long_enough() {
        let scratch = Scratch::new("witness-secret");
        let mut config = Config::default();
        config.node.witness_secret_file = Some(scratch.0.join("missing"));
        assert!(
            matches!(
                config.validate(),
                Err(ConfigError::FileUnreadable {
                    key: "node.witnessSecretFile",
                    ..
                })
            ),
            "a missing file is named by its key"
        );
        let short = scratch.secret("short", "0123456789abcde\n");
        config.node.witness_secret_file = Some(short);
        let text = rejected(&config, "node.witnessSecretFile");
        assert!(text.contains("holds 15 bytes"), "{text}");
        assert!(
            !text.contains("0123456789"),
            "never shows the secret: {text}"
        );
        let good = scratch.secret("good", "0123456789abcdef\n");
        config.node.witness_secret_file = Some(good);
        config.validate().unwrap();
        config.node.witness_max_connections = 0;
        rejected(&config, "node.witnessMaxConnections");
    }

    #[test]
    fn client_admission_settings_that_cannot_work_are_refused() {
        let mut config = Config::default();
        config.client.max_in_flight = 0;
        rejected(&config, "client.maxInFlight");
        config.client.max_in_flight = 1;
        config.client.throttle_percent = 99;
        let text = rejected(&config, "client.throttlePercent");
        assert!(text.contains("at least 100"), "{text}");
        for percent in [0, 100, 150] {
            config.client.throttle_percent = percent;
            config.validate().unwrap();
        }
    }

    #[test]
    fn the_witness_port_is_fixed_off_loopback_and_free_on_it() {
        let mut node = crate::config::NodeConfig::default();
        assert_eq!(node.witness_listen(), "127.0.0.1:0");
        node.address = Some("10.1.2.3:19530".into());
        assert_eq!(node.witness_listen(), "10.1.2.3:19531");
        node.address = Some("[fd00::7]:7000".into());
        assert_eq!(node.witness_listen(), "[fd00::7]:19531");
        node.address = Some("localhost:7000".into());
        assert_eq!(node.witness_listen(), "localhost:0");
        node.witness_address = Some("0.0.0.0:4000".into());
        assert_eq!(node.witness_listen(), "0.0.0.0:4000");
    }

    #[test]
    fn a_loopback_address_published_beside_a_remote_etcd_is_a_warning() {
        let mut config = Config::default();
        assert_eq!(config.deployment_warnings(&["tso"]), Vec::<String>::new());
        config.etcd.endpoints = vec!["http://127.0.0.1:2379".into(), "localhost:2380".into()];
        assert_eq!(config.deployment_warnings(&["tso"]), Vec::<String>::new());
        config.etcd.endpoints = vec!["127.0.0.1:2379".into(), "etcd-1.etcd:2379".into()];
        let warnings = config.deployment_warnings(&["tso"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("node.address is 127.0.0.1:19530, a loopback address"),
            "{}",
            warnings[0]
        );
        assert!(warnings[0].contains("etcd-1.etcd:2379"), "{}", warnings[0]);
        config.node.address = Some("10.1.2.3:19530".into());
        config.node.witness_advertised_address = Some("[::1]:19531".into());
        let warnings = config.deployment_warnings(&["tso"]);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].starts_with("node.witnessAdvertisedAddress is [::1]:19531"),
            "{}",
            warnings[0]
        );
    }

    #[test]
    fn a_role_section_in_another_case_is_a_warning_naming_both() {
        let config = Config::from_yaml_str(
            "rootCoord:\n  activeStandby:\n    enabled: false\ntso:\n  window: 3s\n",
        )
        .unwrap();
        let warnings = config.deployment_warnings(&["rootcoord", "tso"]);
        assert_eq!(
            warnings,
            vec![
                "config section \"rootCoord\" differs from role \"rootcoord\" only in case: it \
                 does not apply to the role (role sections match the role's name exactly; \
                 rename it to \"rootcoord\")"
                    .to_owned()
            ]
        );
        assert!(config.deployment_warnings(&["rootCoord"]).is_empty());
    }

    #[test]
    fn session_ttl_must_be_at_least_etcds_minimum() {
        let mut config = Config::default();
        config.session.ttl = Duration::from_millis(1999);
        assert!(rejected(&config, "session.ttl").contains("at least 2s"));
        config.session.ttl = Duration::from_secs(2);
        config.validate().unwrap();
    }

    #[test]
    fn session_ttl_must_be_whole_seconds() {
        let mut config = Config::default();
        config.session.ttl = Duration::from_millis(2500);
        assert!(rejected(&config, "session.ttl").contains("whole number of seconds"));
    }

    #[test]
    fn session_ttl_must_fit_etcds_maximum() {
        let mut config = Config::default();
        config.session.ttl = Duration::from_secs(MAX_TTL_SECS + 1);
        rejected(&config, "session.ttl");
    }

    #[test]
    fn a_secret_only_its_owner_reads_unless_an_orchestrator_mounted_it() {
        use SecretHolder::*;
        use SecretMode::*;
        for (mode, holder, expected) in [
            (0o600, User, Private),
            (0o400, User, Private),
            (0o640, User, Refuse),
            (0o604, User, Refuse),
            (0o644, User, Refuse),
            (0o640, Root, Private),
            (0o644, Root, Refuse),
            (0o440, Orchestrator, Private),
            (0o644, Orchestrator, Warn),
            (0o444, Orchestrator, Warn),
        ] {
            assert_eq!(secret_mode(mode, holder), expected, "{mode:o} {holder:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_token_file_others_may_read_is_refused_with_the_chmod_that_fixes_it() {
        use std::os::unix::fs::PermissionsExt;
        let scratch = Scratch::new("secret-mode");
        let token = scratch.secret("token", "a-token");
        let chmod =
            |mode| std::fs::set_permissions(&token, std::fs::Permissions::from_mode(mode)).unwrap();
        let mut config = Config::default();
        config.client.token_file = Some(token.clone());
        chmod(0o644);
        let text = rejected(&config, "client.tokenFile");
        assert!(
            text.contains("mode 644") && text.contains(&format!("chmod 600 {}", token.display())),
            "{text}"
        );
        chmod(0o600);
        config.validate().unwrap();
        // Beside a `..data` directory, as in a Kubernetes secret volume:
        // the mode is the volume's, and only warned about.
        std::fs::create_dir(scratch.0.join("..data")).unwrap();
        chmod(0o644);
        config.validate().unwrap();
    }

    #[test]
    fn renew_deadline_must_leave_a_fifth_of_the_ttl_and_at_least_half_a_second() {
        let mut config = Config::default();
        config.session.renew_deadline = Some(Duration::from_secs(10));
        rejected(&config, "session.renewDeadline");
        config.session.renew_deadline = Some(Duration::from_millis(9990));
        let text = rejected(&config, "session.renewDeadline");
        assert!(
            text.contains("at least 2s") && text.contains("session.ttl (10s)"),
            "{text}"
        );
        assert!(text.contains("at most 8s or raise session.ttl"), "{text}");
        config.session.renew_deadline = Some(Duration::ZERO);
        rejected(&config, "session.renewDeadline");
        config.session.renew_deadline = Some(Duration::from_secs(8));
        config.validate().unwrap();
        // A short TTL keeps half a second: a fifth of 2 s would be less.
        config.session.ttl = Duration::from_secs(2);
        config.session.renew_deadline = Some(Duration::from_millis(1600));
        let text = rejected(&config, "session.renewDeadline");
        assert!(text.contains("at least 500ms"), "{text}");
        // The defaults fit every TTL.
        config.session.renew_deadline = None;
        for ttl in [2, 3, 5, 10, 60, 3600] {
            config.session.ttl = Duration::from_secs(ttl);
            config.validate().unwrap();
        }
    }

    #[test]
    fn the_witness_waits_are_bounded_by_a_second() {
        let mut config = Config::default();
        config.session.witness_confirm = Duration::from_millis(1500);
        let text = rejected(&config, "session.witnessConfirm");
        assert!(text.contains("at most 1s"), "{text}");
        config.session.witness_confirm = Duration::ZERO;
        config.session.witness_grace = Duration::from_secs(2);
        rejected(&config, "session.witnessGrace");
        config.session.witness_grace = Duration::ZERO;
        config.validate().unwrap();
    }

    #[test]
    fn keepalive_interval_must_be_strictly_below_renew_deadline() {
        let mut config = Config::default();
        config.session.renew_deadline = Some(Duration::from_secs(5));
        config.session.keepalive_interval = Some(Duration::from_secs(5));
        let text = rejected(&config, "session.keepaliveInterval");
        assert!(text.contains("session.renewDeadline (5s)"), "{text}");

        // A derived interval that does not fit an explicit deadline is named too.
        config.session.keepalive_interval = None;
        config.session.renew_deadline = Some(Duration::from_millis(500));
        let text = rejected(&config, "session.keepaliveInterval");
        assert!(text.contains("unset"), "{text}");
    }

    #[test]
    fn keepalive_interval_and_timeout_must_fit_twice_within_the_renew_deadline() {
        // The old default (a keepalive every ttl / 3, waiting up to a whole
        // request timeout for each answer) leaves no room for one lost keepalive.
        let mut config = Config::default();
        config.session.keepalive_interval = Some(config.session.ttl / 3);
        let text = rejected(&config, "session.keepaliveTimeout");
        assert!(
            text.contains("session.keepaliveInterval (3s 333ms"),
            "{text}"
        );
        assert!(text.contains("session.renewDeadline (6s 666ms"), "{text}");
        assert!(text.contains("unset"), "{text}");

        let mut config = Config::default();
        config.session.keepalive_interval = Some(Duration::from_secs(1));
        config.session.keepalive_timeout = Some(Duration::from_millis(2300));
        config.validate().unwrap();
        config.session.keepalive_timeout = Some(Duration::from_millis(2400));
        rejected(&config, "session.keepaliveTimeout");
        config.session.keepalive_timeout = Some(Duration::ZERO);
        rejected(&config, "session.keepaliveTimeout");

        // The defaults fit, at every TTL.
        for ttl in 2..=120 {
            let mut config = Config::default();
            config.session.ttl = Duration::from_secs(ttl);
            config.validate().unwrap();
        }
    }

    #[test]
    fn keepalive_interval_must_not_be_zero() {
        let mut config = Config::default();
        config.session.keepalive_interval = Some(Duration::ZERO);
        rejected(&config, "session.keepaliveInterval");
    }

    #[test]
    fn standby_log_interval_must_not_be_zero() {
        let mut config = Config::default();
        config.session.standby_log_interval = Duration::ZERO;
        rejected(&config, "session.standbyLogInterval");
    }

    #[test]
    fn endpoints_must_not_be_empty() {
        let mut config = Config::default();
        config.etcd.endpoints.clear();
        rejected(&config, "etcd.endpoints");
        config.etcd.endpoints = vec![" ".to_owned()];
        rejected(&config, "etcd.endpoints");
    }

    #[test]
    fn root_path_must_be_non_empty_and_not_slash_edged() {
        for root in ["", "/standin", "standin/", "/", "a//b"] {
            let mut config = Config::default();
            config.etcd.root_path = root.to_owned();
            rejected(&config, "etcd.rootPath");
        }
    }

    #[test]
    fn node_address_must_not_be_empty() {
        let mut config = Config::default();
        config.node.address = Some(String::new());
        rejected(&config, "node.address");
    }

    #[test]
    fn timeouts_must_not_be_zero() {
        fn zero_rejected(key: &str, break_it: impl FnOnce(&mut Config)) {
            let mut config = Config::default();
            break_it(&mut config);
            rejected(&config, key);
        }
        zero_rejected("etcd.connectTimeout", |c| {
            c.etcd.connect_timeout = Duration::ZERO
        });
        zero_rejected("etcd.requestTimeout", |c| {
            c.etcd.request_timeout = Duration::ZERO
        });
        zero_rejected("coordinator.activateTimeout", |c| {
            c.coordinator.activate_timeout = Duration::ZERO
        });
        zero_rejected("coordinator.deactivateTimeout", |c| {
            c.coordinator.deactivate_timeout = Duration::ZERO
        });
        zero_rejected("reload.timeout", |c| c.reload.timeout = Duration::ZERO);
    }

    #[test]
    fn the_queue_and_its_batches_must_hold_at_least_one_request() {
        let mut config = Config::default();
        config.coordinator.queue_depth = 0;
        rejected(&config, "coordinator.queueDepth");
        let mut config = Config::default();
        config.coordinator.max_batch = 0;
        rejected(&config, "coordinator.maxBatch");
    }

    #[test]
    fn the_queue_keeps_its_old_name() {
        let config: Config =
            serde_norway::from_str("coordinator:\n  activationBuffer: 7\n").unwrap();
        assert_eq!(config.coordinator.queue_depth, 7);
    }

    #[test]
    fn concurrent_loads_must_be_in_range() {
        for loads in [0, 1025] {
            let mut config = Config::default();
            config.reload.concurrent_loads = loads;
            rejected(&config, "reload.concurrentLoads");
        }
        for loads in [1, 1024] {
            let mut config = Config::default();
            config.reload.concurrent_loads = loads;
            assert!(config.validate().is_ok());
        }
    }

    #[test]
    fn watch_streams_must_be_in_range() {
        for streams in [0, 65] {
            let mut config = Config::default();
            config.etcd.watch_streams = streams;
            rejected(&config, "etcd.watchStreams");
            let mut config = Config::default();
            config.reload.watch_streams = streams;
            rejected(&config, "reload.watchStreams");
        }
        let mut config = Config::default();
        config.etcd.watch_streams = 64;
        config.reload.watch_streams = 1;
        assert!(config.validate().is_ok());
    }

    #[test]
    fn page_size_must_be_in_range() {
        for size in [0, -1, MAX_PAGE_SIZE + 1] {
            let mut config = Config::default();
            config.reload.page_size = size;
            rejected(&config, "reload.pageSize");
        }
        let mut config = Config::default();
        config.reload.page_size = MAX_PAGE_SIZE;
        config.validate().unwrap();
    }

    #[test]
    fn page_bytes_must_be_in_range() {
        for bytes in [0, PAGE_BYTES.start() - 1, PAGE_BYTES.end() + 1] {
            let mut config = Config::default();
            config.reload.page_bytes = bytes;
            rejected(&config, "reload.pageBytes");
        }
        for bytes in [*PAGE_BYTES.start(), *PAGE_BYTES.end()] {
            let mut config = Config::default();
            config.reload.page_bytes = bytes;
            config.validate().unwrap();
        }
    }

    #[test]
    fn backoffs_need_a_nonzero_initial_and_a_max_at_least_initial() {
        let mut config = Config::default();
        config.etcd.retry.initial = Duration::ZERO;
        rejected(&config, "etcd.retry.initial");

        let mut config = Config::default();
        config.etcd.retry.max = Duration::from_millis(100);
        let text = rejected(&config, "etcd.retry.max");
        assert!(text.contains("etcd.retry.initial (200ms)"), "{text}");

        let mut config = Config::default();
        config.coordinator.restart_backoff.initial = Duration::ZERO;
        rejected(&config, "coordinator.restartBackoff.initial");

        let mut config = Config::default();
        config.coordinator.restart_backoff.max = Duration::from_millis(10);
        rejected(&config, "coordinator.restartBackoff.max");
    }

    #[test]
    fn tls_files_must_exist_and_pair_up() {
        let scratch = Scratch::new("tls");
        let ca = scratch.file("ca.pem");
        let cert = scratch.file("client.pem");
        let key = scratch.file("client-key.pem");
        let text = format!(
            "etcd:\n  tls:\n    caFile: {}\n    certFile: {}\n    keyFile: {}\n    domain: etcd.internal\n",
            ca.display(),
            cert.display(),
            key.display()
        );
        let config = Config::from_yaml_str(&text).unwrap();
        let tls = config.etcd.tls.clone().unwrap();
        assert_eq!(tls.ca_file, ca);
        assert_eq!(tls.domain.as_deref(), Some("etcd.internal"));

        let missing = scratch.0.join("missing.pem");
        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().ca_file = missing.clone();
        let err = broken.validate().unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::FileUnreadable {
                    key: "etcd.tls.caFile",
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("etcd.tls.caFile"), "{err}");
        assert!(err.to_string().contains("missing.pem"), "{err}");

        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().key_file = Some(scratch.0.clone());
        let err = broken.validate().unwrap_err();
        assert!(err.to_string().contains("etcd.tls.keyFile"), "{err}");
        assert!(err.to_string().contains("not a regular file"), "{err}");

        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().key_file = None;
        rejected(&broken, "etcd.tls.keyFile");
        let mut broken = config.clone();
        broken.etcd.tls.as_mut().unwrap().cert_file = None;
        rejected(&broken, "etcd.tls.certFile");

        let mut broken = config.clone();
        broken.etcd.endpoints = vec!["http://127.0.0.1:2379".into()];
        rejected(&broken, "etcd.endpoints");
        let mut broken = Config::default();
        broken.etcd.endpoints = vec!["https://127.0.0.1:2379".into()];
        rejected(&broken, "etcd.tls");

        let (key, message) = parse_error("etcd:\n  tls:\n    certFile: x\n");
        assert_eq!(key, "etcd.tls");
        assert!(message.starts_with("missing field `caFile`"), "{message}");
    }
}
