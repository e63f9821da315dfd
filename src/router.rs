//! State shared by every connection of one pool: the classifier, the interlock
//! mode, the verdict cache and the counters.

use std::any::TypeId;
use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::classify::{Classifier, Verdict};
use crate::connection::{InterlockMode, SwitchTarget};
use crate::stats::Stats;

/// How many distinct static query types the verdict cache keeps. Static query ids
/// are Rust types, so a program has a bounded number; the cap guards against
/// pathological generic code.
const VERDICT_CACHE_LIMIT: usize = 4096;

pub(crate) struct Router<C: SwitchTarget> {
    pub(crate) classifier: Classifier,
    pub(crate) mode: InterlockMode,
    /// Replica reads are rendered so that a connection-level failure can be retried.
    pub(crate) read_retry: bool,
    /// Verdicts by diesel's static `QueryId::query_id()`. Copy-on-write behind an
    /// `ArcSwap`: a lookup is a lock-free load, and inserts (once per query type
    /// per program) clone the map.
    verdicts: ArcSwap<HashMap<TypeId, Verdict>>,
    pub(crate) render_ctx: C::RenderCtx,
    pub(crate) stats: Stats,
}

impl<C: SwitchTarget> std::fmt::Debug for Router<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("mode", &self.mode)
            .field("cached_verdicts", &self.verdicts.load().len())
            .finish_non_exhaustive()
    }
}

impl<C: SwitchTarget> Router<C> {
    pub(crate) fn new(classifier: Classifier, mode: InterlockMode, read_retry: bool) -> Arc<Self> {
        Arc::new(Router {
            classifier,
            mode,
            read_retry,
            verdicts: ArcSwap::from_pointee(HashMap::new()),
            render_ctx: Default::default(),
            stats: Stats::default(),
        })
    }

    pub(crate) fn cached_verdict(&self, id: TypeId) -> Option<Verdict> {
        self.verdicts.load().get(&id).copied()
    }

    pub(crate) fn cache_verdict(&self, id: TypeId, verdict: Verdict) {
        self.verdicts.rcu(|current| {
            if current.len() >= VERDICT_CACHE_LIMIT || current.contains_key(&id) {
                return Arc::clone(current);
            }
            let mut next = HashMap::clone(current);
            next.insert(id, verdict);
            Arc::new(next)
        });
    }
}
