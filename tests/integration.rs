//! The integration tests, one module per file of this folder, in one
//! binary (see Cargo.toml for the few that run apart). `cargo test -p
//! scalewise-tests --test integration reload::` runs one file's tests.

mod api;
mod aws_asg;
mod aws_asg_daemon;
mod check_config;
mod cli;
mod config_reload;
mod deploy;
mod docs;
mod journal;
mod kubernetes;
mod kubernetes_daemon;
mod languages;
mod leader;
mod module_cache;
mod notify;
mod prometheus;
mod prometheus_e2e;
mod rebalance;
mod registry;
mod reload;
mod replay;
mod runtime;
mod sandbox;
mod shutdown;
mod simulate;
