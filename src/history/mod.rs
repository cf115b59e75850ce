//! History channels (contract 1.1): the rules that make a channel one, the offsets on the
//! wire, the Redis function library that keeps publications, and the ordering that turns
//! Redis's publications and history reads into one gap-free stream per channel.
//!
//! Nothing here does I/O: `redis::store` runs the library's functions, `tape` holds the
//! stream. The design, with the Redis layout: docs/history.md.

pub mod library;
pub mod offset;
pub mod request;
pub mod rules;
pub mod sequence;

pub use offset::{Epoch, Position};
pub use rules::{Rule, Rules};
