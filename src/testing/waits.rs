//! Waits that poll a condition with a deadline, never a fixed sleep, and the one most tests start with: exactly one node serves.

use std::future::Future;
use std::time::{Duration, Instant};

use super::TestingError;
use crate::coordinator::Coordinator;
use crate::role::RoleHandle;
use crate::status::RoleState;

/// How often a wait polls its condition.
const POLL_EVERY: Duration = Duration::from_millis(10);

/// Polls `probe` every 10 ms until it returns `Some`, and returns that value;
/// fails with [`TestingError::TimedOut`] naming `what` once `deadline` has
/// passed.
///
/// ```no_run
/// # async fn example(node: standin::RoleHandle<impl standin::Coordinator>) -> Result<(), standin::testing::TestingError> {
/// use std::time::Duration;
/// use standin::testing::wait_until;
///
/// let epoch = wait_until("the node serves", Duration::from_secs(5), || async {
///     node.status().epoch.filter(|_| node.is_serving())
/// })
/// .await?;
/// # Ok(()) }
/// ```
pub async fn wait_until<T, F, Fut>(
    what: &str,
    deadline: Duration,
    mut probe: F,
) -> Result<T, TestingError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let started = Instant::now();
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        poll.tick().await;
        if let Some(value) = probe().await {
            return Ok(value);
        }
        if started.elapsed() >= deadline {
            return Err(TestingError::TimedOut {
                what: what.to_owned(),
                deadline,
                last: None,
            });
        }
    }
}

/// [`wait_until`], whose timeout carries what `seen` says at the deadline,
/// so the error tells what the condition last saw.
pub(super) async fn wait_until_showing<T, F, Fut>(
    what: &str,
    deadline: Duration,
    probe: F,
    seen: impl FnOnce() -> String,
) -> Result<T, TestingError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_until(what, deadline, probe)
        .await
        .map_err(|error| match error {
            TestingError::TimedOut { what, deadline, .. } => TestingError::TimedOut {
                what,
                deadline,
                last: Some(seen()),
            },
            other => other,
        })
}

/// Waits until exactly one of `roles` serves and returns its index: the
/// first step of most failover tests. At the deadline the error shows the
/// states last seen, which tells "nobody serves" from "two serve".
pub async fn the_single_serving<C: Coordinator>(
    roles: &[RoleHandle<C>],
    deadline: Duration,
) -> Result<usize, TestingError> {
    let states = || -> Vec<RoleState> { roles.iter().map(|role| role.status().state).collect() };
    let role = roles.first().map_or("the role", |role| role.role());
    let what = format!("exactly one node serving {role}");
    let single = || async {
        let states = states();
        let mut serving = states
            .iter()
            .enumerate()
            .filter(|(_, state)| **state == RoleState::Serving);
        match (serving.next(), serving.next()) {
            (Some((index, _)), None) => Some(index),
            _ => None,
        }
    };
    wait_until_showing(&what, deadline, single, || format!("{:?}", states())).await
}
