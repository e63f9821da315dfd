//! # diesel-rwsplit
//!
//! In-process read/write splitting for [Diesel](https://diesel.rs) applications over a
//! PostgreSQL primary and its streaming replicas: no proxy, no extra network hop.
//!
//! Its core is a *safety interlock*: a connection that starts on a replica and flips to
//! the primary when a write statement, a transaction begin or a save/delete hook
//! appears, counting every automatic flip so a team can audit where it leans on it.
//!
//! ## Feature flags
//!
//! | feature    | default | what it adds |
//! |------------|---------|--------------|
//! | `postgres` | yes     | PostgreSQL support through diesel-async's `AsyncPgConnection` |
//! | `testing`  | no      | [`testing::LocalCluster`]: a throwaway primary + streaming replicas built from the machine's PostgreSQL binaries, with fault injection, for your own tests |
//! | `cli`      | no      | the `rwsplit` binary: `rwsplit classify`, `rwsplit cluster up/status/down` |
//!
//! ## A real replicated cluster for tests
//!
//! With feature `testing`, [`testing::LocalCluster`] starts a primary and N hot-standby
//! replicas (about 2 s for 1 + 2) and tears them down on drop, even when a test panics:
//!
//! ```no_run
//! # #[cfg(feature = "testing")]
//! # async fn demo() -> Result<(), diesel_rwsplit::Error> {
//! use diesel_rwsplit::testing::LocalCluster;
//!
//! let cluster = LocalCluster::builder().replicas(2).start().await?;
//! println!("primary: {}", cluster.primary_url());
//! cluster.pause_replay(0).await?;      // replica 0 now lags deterministically
//! cluster.resume_replay(0).await?;
//! # Ok(()) }
//! ```
#![deny(missing_docs, missing_debug_implementations)]
#![warn(unreachable_pub, rust_2018_idioms)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod classify;
mod error;
mod lsn;
mod route;
#[cfg(feature = "testing")]
pub mod testing;

pub use error::{BoxError, ClusterStep, Error, Result};
pub use lsn::{Lsn, ParseLsnError};
pub use route::{Route, SwitchReason, Target};
