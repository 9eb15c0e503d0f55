//! Workers that run inside every node as members of consumer groups: adding a node adds a
//! member, and partitions move to it.

pub mod copy;
pub mod router;
