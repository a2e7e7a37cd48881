//! A fault campaign: seeded random faults on a role's leader and on etcd (`runner`), the history they leave (`history`), and the check of it (`checker`).

mod checker;
mod history;
pub mod runner;
