//! State shared by every connection of one pool: the classifier, the interlock
//! mode, the verdict cache and the counters.

use std::any::TypeId;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::classify::{Classifier, Verdict};
use crate::connection::{InterlockMode, SqlText, SwitchTarget};
use crate::stats::Stats;

/// How many distinct static query types the verdict cache keeps. Static query ids
/// are Rust types, so a program has a bounded number; the cap guards against
/// pathological generic code.
const VERDICT_CACHE_LIMIT: usize = 4096;

/// What is known about one static query type.
#[derive(Clone)]
struct Known {
    verdict: Verdict,
    /// The SQL its instances render when they are safe to cache prepared (only
    /// those are looked up here).
    sql: Arc<str>,
}

type TypeMap = HashMap<TypeId, Known, BuildHasherDefault<TypeIdHasher>>;

/// A `TypeId` is already a hash: use its bits instead of hashing them again.
#[derive(Default)]
struct TypeIdHasher(u64);

impl Hasher for TypeIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write_u64(&mut self, bits: u64) {
        self.0 ^= bits;
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `TypeId` today (it hashes as one u64); stay correct if it changes.
        for &byte in bytes {
            self.0 = (self.0 ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

pub(crate) struct Router<C: SwitchTarget> {
    pub(crate) classifier: Classifier,
    pub(crate) mode: InterlockMode,
    /// Replica reads are rendered so that a connection-level failure can be retried.
    pub(crate) read_retry: bool,
    /// Verdicts (and the SQL text, for re-runnable renderings) by diesel's static
    /// `QueryId::query_id()`, learnt from instances that are safe to cache prepared. Copy-on-write behind an `ArcSwap`: a lookup is a
    /// lock-free load, and inserts (once per query type per program) clone the map.
    verdicts: ArcSwap<TypeMap>,
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
            verdicts: ArcSwap::from_pointee(TypeMap::default()),
            render_ctx: Default::default(),
            stats: Stats::default(),
        })
    }

    /// The cached verdict of a static query type, and its shared SQL.
    pub(crate) fn cached_verdict(&self, id: TypeId) -> Option<(Verdict, SqlText)> {
        self.verdicts
            .load()
            .get(&id)
            .map(|known| (known.verdict, SqlText::Shared(Arc::clone(&known.sql))))
    }

    /// Remember a static query type's verdict and SQL, from an instance that is safe
    /// to cache prepared.
    pub(crate) fn cache_verdict(&self, id: TypeId, verdict: Verdict, sql: &str) {
        let known = Known {
            verdict,
            sql: Arc::from(sql),
        };
        self.verdicts.rcu(|current| {
            if current.len() >= VERDICT_CACHE_LIMIT || current.contains_key(&id) {
                return Arc::clone(current);
            }
            let mut next = TypeMap::clone(current);
            next.insert(id, known.clone());
            Arc::new(next)
        });
    }
}
