//! Herald's integration tests: ONE test binary (each tests/*.rs file would be its own slow
//! link on 2 cores). Every test starts its own redis-server and `herald` on free ports, so
//! tests run in parallel and share nothing.

mod support;

mod access;
mod api;
mod bad_input;
mod cluster;
mod delivery;
mod deploy_config;
mod flood;
mod history;
mod intake;
mod metrics;
mod offsets;
mod payload;
mod redis_loss;
mod redis_tls;
mod scale_out;
mod sentinel;
mod sharded;
mod shutdown;
mod slow_consumer;
mod soak;
mod startup;
