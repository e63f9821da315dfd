//! A deterministic fault seam between a [`SwitchablePool`](crate::SwitchablePool)
//! and its nodes' pools, for tests of failure and cancellation paths that must not
//! depend on timing luck.
//!
//! ```no_run
//! # async fn demo(primary_url: &str, replica_urls: Vec<String>) -> Result<(), diesel_rwsplit::Error> {
//! use diesel_rwsplit::testing::{Fault, FaultNode, Faults, FaultStep};
//! use diesel_rwsplit::{FailureKind, SwitchablePool};
//!
//! let faults = Faults::new();
//! let pool = SwitchablePool::<diesel_async::AsyncPgConnection>::builder()
//!     .primary(primary_url)
//!     .replicas(replica_urls)
//!     .faults(faults.clone())
//!     .build()
//!     .await?;
//! // The next checkout of replica 0 fails as if the host refused the connection.
//! faults.inject(FaultNode::Replica(0), FaultStep::Checkout, Fault::Fail(FailureKind::Refused));
//! let conn = pool.get().await?; // served by replica 1; replica 0 is ejected
//! assert_eq!(faults.hits(FaultNode::Replica(0), FaultStep::Checkout), 1);
//! # Ok(()) }
//! ```

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::FutureExt;

use crate::connection::{NodeConnection, NodeFailure, NodePool};
use crate::FailureKind;

/// Which node of the pool a fault is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultNode {
    /// The primary.
    Primary,
    /// The replica at this index (zero-based, in the builder's order).
    Replica(usize),
}

/// At which step of a node's pool a fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum FaultStep {
    /// Checking a connection out (what every `get()`, flip and retry does).
    Checkout,
    /// A fresh session to decide whether a suspected or ejected node answers.
    Probe,
}

/// What happens at the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fault {
    /// Wait this long, then do the step for real.
    Delay(Duration),
    /// Never finish (as a frozen host would until a timeout); for drop tests.
    Hang,
    /// Fail at once with this kind of failure, without touching the node.
    Fail(FailureKind),
}

/// Faults queued per node and step; each strikes once, in order. Cheap to clone:
/// clones share the queues.
#[derive(Clone, Default)]
pub struct Faults {
    inner: Arc<Mutex<State>>,
}

#[derive(Default)]
struct State {
    queued: HashMap<(FaultNode, FaultStep), VecDeque<Fault>>,
    hits: HashMap<(FaultNode, FaultStep), usize>,
}

impl fmt::Debug for Faults {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Faults")
            .field("queued", &state.queued)
            .field("hits", &state.hits)
            .finish()
    }
}

impl Faults {
    /// No faults yet.
    pub fn new() -> Self {
        Faults::default()
    }

    /// Queue `fault` for the next time `node` reaches `step`.
    pub fn inject(&self, node: FaultNode, step: FaultStep, fault: Fault) {
        self.lock()
            .queued
            .entry((node, step))
            .or_default()
            .push_back(fault);
    }

    /// Forget every fault that has not struck yet.
    pub fn clear(&self) {
        self.lock().queued.clear();
    }

    /// How many injected faults have struck `node` at `step`.
    pub fn hits(&self, node: FaultNode, step: FaultStep) -> usize {
        self.lock().hits.get(&(node, step)).copied().unwrap_or(0)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn take(&self, node: FaultNode, step: FaultStep) -> Option<Fault> {
        let mut state = self.lock();
        let fault = state.queued.get_mut(&(node, step))?.pop_front()?;
        *state.hits.entry((node, step)).or_default() += 1;
        Some(fault)
    }

    /// Wrap one node's pool.
    pub(crate) fn wrap<C: Send + 'static>(
        &self,
        node: FaultNode,
        pool: Arc<dyn NodePool<C>>,
    ) -> Arc<dyn NodePool<C>> {
        Arc::new(Faulty {
            node,
            faults: self.clone(),
            pool,
        })
    }
}

struct Faulty<C> {
    node: FaultNode,
    faults: Faults,
    pool: Arc<dyn NodePool<C>>,
}

impl<C: Send + 'static> Faulty<C> {
    async fn strike(&self, step: FaultStep) -> Result<(), NodeFailure> {
        match self.faults.take(self.node, step) {
            None => Ok(()),
            Some(Fault::Delay(delay)) => {
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Some(Fault::Hang) => futures_util::future::pending().await,
            Some(Fault::Fail(kind)) => Err(NodeFailure::new(kind, "injected fault")),
        }
    }
}

impl<C: Send + 'static> NodePool<C> for Faulty<C> {
    fn checkout(&self) -> BoxFuture<'_, Result<NodeConnection<C>, NodeFailure>> {
        async move {
            self.strike(FaultStep::Checkout).await?;
            self.pool.checkout().await
        }
        .boxed()
    }

    fn probe(&self) -> BoxFuture<'_, Result<(), NodeFailure>> {
        async move {
            self.strike(FaultStep::Probe).await?;
            self.pool.probe().await
        }
        .boxed()
    }
}
