//! The decision journal: a durable, append-only record of every tick.

mod record;

pub use record::*;
