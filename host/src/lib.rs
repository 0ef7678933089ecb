//! Scalewise: an autoscaling daemon whose decision logic is sandboxed
//! WebAssembly.
//!
//! The shape of one tick of one scaler: read the target's state through its
//! [actuator](actuators), fetch the scaler's metrics from their
//! [sources], ask each [policy] module (run by the
//! [runtime]) what the replica count should be, pass the combined answer
//! through the host's [envelope], actuate (or only record, in dry-run), and
//! write one [journal] record.
// `deny`, not `forbid`, so that the one module that needs `unsafe`
// (runtime/precompiled.rs: deserializing cached compiled code) can allow it.
#![deny(unsafe_code)]

pub mod actuators;
pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod envelope;
pub mod journal;
pub mod leader;
pub mod notify;
pub mod outbound;
pub mod policy;
pub mod registry;
pub mod runtime;
pub mod scaler;
pub mod simulate;
pub mod simulator;
pub mod sources;
pub mod telemetry;
pub mod watch;

/// The memory allocator the `scalewise` binary runs with (jemalloc), for
/// programs that embed the daemon to use the same: `#[global_allocator]
/// static ALLOC: scalewise::Allocator = scalewise::Allocator;`. With
/// 10,000 scalers it keeps the daemon's resident memory about a quarter
/// lower than glibc's malloc, which holds on to freed memory spread over
/// its per-thread arenas (tests/benches/fleet.rs). It is built with one
/// arena, for the same reason (another 5 MiB less), and a background thread
/// that returns freed pages within a second (`.cargo/config.toml`).
pub use tikv_jemallocator::Jemalloc as Allocator;
