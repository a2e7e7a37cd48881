//! A config for embedders, built in code: the defaults, the settings an embedding service sets most, and validation at the end.

use std::time::Duration;

use super::{ActiveStandbyConfig, AuthConfig, Config, ConfigError, TlsConfig};

/// Builds a [`Config`] without a YAML file. Starts from the defaults (those
/// `config/standin.yaml` documents); [`build`](Self::build) validates, so an
/// impossible combination is an error naming the key, as from a file. For a
/// setting without a method here, set the field on the built config.
///
/// ```
/// use std::time::Duration;
///
/// let config = standin::Config::builder()
///     .endpoints(["127.0.0.1:2379"])
///     .root_path("my-service")
///     .address("10.0.0.7:7000")
///     .session_ttl(Duration::from_secs(5))
///     .build()?;
/// assert_eq!(config.session.renew_deadline(), Duration::from_secs(10) / 3);
/// # Ok::<(), standin::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ConfigBuilder {
    config: Config,
}

impl Config {
    /// A builder starting from the defaults.
    pub fn builder() -> ConfigBuilder {
        ConfigBuilder::default()
    }
}

impl ConfigBuilder {
    /// `etcd.endpoints`: the etcd members, `host:port`.
    pub fn endpoints<S: Into<String>>(mut self, endpoints: impl IntoIterator<Item = S>) -> Self {
        self.config.etcd.endpoints = endpoints.into_iter().map(Into::into).collect();
        self
    }

    /// `etcd.rootPath`: the prefix of every key standin writes.
    pub fn root_path(mut self, root_path: impl Into<String>) -> Self {
        self.config.etcd.root_path = root_path.into();
        self
    }

    /// `etcd.tls`: TLS to etcd.
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.config.etcd.tls = Some(tls);
        self
    }

    /// `etcd.auth`: etcd user and password.
    pub fn auth(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.config.etcd.auth = Some(AuthConfig {
            user: user.into(),
            password: Some(password.into()),
            password_file: None,
        });
        self
    }

    /// `etcd.requestTimeout`: the bound on one etcd request.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.config.etcd.request_timeout = timeout;
        self
    }

    /// `node.address`: where clients reach this node, published in its session.
    pub fn address(mut self, address: impl Into<String>) -> Self {
        self.config.node.address = Some(address.into());
        self
    }

    /// `session.ttl`: the lease TTL (whole seconds, at least 2 s). The
    /// keepalive interval and renew deadline follow it unless set.
    pub fn session_ttl(mut self, ttl: Duration) -> Self {
        self.config.session.ttl = ttl;
        self
    }

    /// `reload.warm`: whether a standby keeps the role's metadata current
    /// (`true`, the default) or reads it whole at every win.
    pub fn reload_warm(mut self, warm: bool) -> Self {
        self.config.reload.warm = warm;
        self
    }

    /// `reload.timeout`: the bound on bringing the role's metadata up to date after a win.
    pub fn reload_timeout(mut self, timeout: Duration) -> Self {
        self.config.reload.timeout = timeout;
        self
    }

    /// `coordinator.activateTimeout`: the bound on the activation hook, past
    /// which the node resigns.
    pub fn activate_timeout(mut self, timeout: Duration) -> Self {
        self.config.coordinator.activate_timeout = timeout;
        self
    }

    /// `coordinator.deactivateTimeout`: the bound on the deactivation hook.
    pub fn deactivate_timeout(mut self, timeout: Duration) -> Self {
        self.config.coordinator.deactivate_timeout = timeout;
        self
    }

    /// `<role>.activeStandby.enabled: false`: `role` is exclusive, and a
    /// node refuses to start it while another instance leads it.
    pub fn exclusive(mut self, role: impl Into<String>) -> Self {
        self.config
            .roles
            .entry(role.into())
            .or_default()
            .active_standby = ActiveStandbyConfig { enabled: false };
        self
    }

    /// `<role>.leaderPriority`: this node's leader priority for `role`; a
    /// leader hands the role to a ready standby of higher priority.
    pub fn leader_priority(mut self, role: impl Into<String>, priority: i32) -> Self {
        self.config
            .roles
            .entry(role.into())
            .or_default()
            .leader_priority = priority;
        self
    }

    /// `session.transferHoldoff`: how long a preferred standby stands ready
    /// before the leader hands it the role, and the least time between moves.
    pub fn transfer_holdoff(mut self, holdoff: Duration) -> Self {
        self.config.session.transfer_holdoff = holdoff;
        self
    }

    /// The validated config.
    pub fn build(self) -> Result<Config, ConfigError> {
        self.config.validate()?;
        Ok(self.config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builder_starts_from_the_defaults() {
        assert_eq!(Config::builder().build().unwrap(), Config::default());
    }

    #[test]
    fn an_impossible_setting_is_rejected_by_its_key() {
        let error = Config::builder()
            .session_ttl(Duration::from_secs(1))
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("session.ttl"), "{error}");
        let error = Config::builder()
            .endpoints(Vec::<String>::new())
            .build()
            .unwrap_err();
        assert!(error.to_string().contains("etcd.endpoints"), "{error}");
    }

    #[test]
    fn settings_land_on_their_keys() {
        let config = Config::builder()
            .endpoints(["a:2379", "b:2379"])
            .root_path("svc")
            .address("10.0.0.7:7000")
            .exclusive("rootcoord")
            .build()
            .unwrap();
        assert_eq!(config.etcd.endpoints, ["a:2379", "b:2379"]);
        assert_eq!(config.etcd.root_path, "svc");
        assert_eq!(config.node.advertised(), "10.0.0.7:7000");
        assert!(!config.role("rootcoord").active_standby.enabled);
        assert!(config.role("other").active_standby.enabled);
    }
}
