//! The Redis Sentinel group lives in the harness crate, shared with the HA drill.
pub use cartae_harness::tier::sentinel::*;
