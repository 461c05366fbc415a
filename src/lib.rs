//! bottle: a reproducible builder and runner of sandboxed containers for AI
//! coding agents.
//!
//! The core is pure (manifest → lock → image bytes; policy → run plan) and is
//! tested with plain unit tests; effects (registry, engine, sockets) sit at the
//! edges, each behind one module. Only `cli` prints, prompts or exits.

// First, so its non-panicking print macros shadow std's in every module.
#[macro_use]
mod say;

pub mod acquire;
pub mod cli;
pub mod debian;
pub mod egress;
pub mod engine;
pub mod error;
pub mod fsutil;
pub mod host;
pub mod inspect;
pub mod lock;
pub mod manifest;
pub mod netpool;
pub mod oci;
pub mod plan;
pub mod policy;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod review;
pub mod runner;
pub mod share;
