//! The dependency proxy lives in the harness crate, shared with the HA drill.
pub use cartae_harness::proxy::*;
