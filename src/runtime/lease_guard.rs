//! The time bound on trusting this node's lease, checked on every answer.

/// How long this node's lease is certainly still valid: the last successful
/// keepalive's send time plus the renew deadline, which is shorter than the
/// TTL etcd counts from when it received that keepalive. Checked on every
/// request, so a process that was frozen (SIGSTOP, a long GC or VM pause)
/// refuses to serve the moment it runs again, before any timer fires.
#[derive(Debug, Default)]
pub(crate) struct LeaseGuard(std::sync::Mutex<Option<std::time::Instant>>);

impl LeaseGuard {
    /// Sets the instant until which the lease is trusted (`None`: not at all).
    pub(crate) fn trust_until(&self, until: Option<std::time::Instant>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = until;
    }

    /// Whether the lease is still trusted now.
    pub(crate) fn is_valid(&self) -> bool {
        let until = *self.0.lock().unwrap_or_else(|p| p.into_inner());
        until.is_some_and(|until| std::time::Instant::now() < until)
    }
}
