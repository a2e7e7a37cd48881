//! Spreading leadership evenly over the nodes.

pub(crate) mod plan;
