//! The tools that measure and break standin from outside: the fault campaign (`campaign`), the benchmark (`bench`), and what both share.
//!
//! A workspace member of its own, depending on the library as any embedder
//! does: `make campaign` and `make bench` run its binaries, and the
//! library's `tests/campaign.rs` runs short campaigns through [`campaign`].

pub mod campaign;
pub mod driver;
pub mod metadata;
