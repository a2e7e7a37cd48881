//! The etcd layer: connecting and retrying, steering calls away from dead members, the session layout, etcd's election recipe, many watches on few streams, and reading a deployment back.

mod batch;
mod connect;
mod fanout;
pub mod inspect;
mod lease;
pub mod recipe;
pub mod session;
mod steering;
mod watch;

pub(crate) use batch::TxnBatcher;
pub use connect::{EtcdError, connect, connect_checked};
pub(crate) use connect::{GaveUp, best_effort, endpoint_url, retry_bounded};
pub(crate) use fanout::{PrefixFanout, Routed, Subscription, group_of};
pub(crate) use lease::{delete_key, put_on_lease, revoke};
pub use steering::{EndpointsError, Steering, steer};
pub(crate) use watch::{Watch, WatchHub, prefix_end};
