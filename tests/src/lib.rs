//! Integration and end-to-end tests against real components, and the
//! harnesses that run those components.
//!
//! - [`prometheus`]: a real Prometheus server and an exporter it scrapes.
//! - [`stub_http`]: HTTP and TCP peers that misbehave on purpose.

pub mod prometheus;
pub mod stub_http;
