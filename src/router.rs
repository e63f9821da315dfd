//! State shared by every connection of one pool: the classifier, the interlock
//! mode, the verdict cache and the counters.

use std::any::TypeId;
use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::classify::{Classifier, Verdict};
use crate::connection::{InterlockMode, SqlText, SwitchTarget};
use crate::stats::Stats;
use crate::SwitchReason;

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
    /// Client-side bound on a replica read (until its first row).
    pub(crate) replica_read_timeout: Option<std::time::Duration>,
    /// Fingerprint hashes of statements a replica refused as writes (25006).
    refused: ArcSwap<HashSet<u64>>,
    /// `refused` is not empty: checked before any fingerprint is computed, so
    /// that the remembering costs nothing until a replica has refused something.
    any_refused: AtomicBool,
    /// Replica group routing, only when the classifier has group rules: a plain
    /// read checks this one `Option` and nothing else.
    pub(crate) groups: Option<ReadGroups>,
}

/// The pool's id of a replica group: its position in the group list (the
/// replicas' groups in the order first given, then the classifier's other ones).
pub(crate) type GroupId = usize;

/// How the classifier's groups map to the pool's.
#[derive(Debug)]
pub(crate) struct ReadGroups {
    /// The pool's group id of each of the classifier's group names, by position.
    ids: Box<[GroupId]>,
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
    /// `replica_groups`: the groups the replicas carry (empty: none), each once.
    pub(crate) fn new(
        classifier: Classifier,
        mode: InterlockMode,
        read_retry: bool,
        replica_read_timeout: Option<std::time::Duration>,
        replica_groups: &[Arc<str>],
    ) -> Arc<Self> {
        let mut names = replica_groups.to_vec();
        let ids: Box<[GroupId]> = classifier
            .group_names()
            .iter()
            .map(|name| match names.iter().position(|n| n == name) {
                Some(id) => id,
                None => {
                    names.push(Arc::clone(name));
                    names.len() - 1
                }
            })
            .collect();
        let groups = (!ids.is_empty()).then_some(ReadGroups { ids });
        Arc::new(Router {
            classifier,
            mode,
            read_retry,
            verdicts: ArcSwap::from_pointee(TypeMap::default()),
            render_ctx: Default::default(),
            stats: Stats::with_groups(&names),
            replica_read_timeout,
            refused: ArcSwap::from_pointee(HashSet::new()),
            any_refused: AtomicBool::new(false),
            groups,
        })
    }

    /// The replica group a read (judged a replica read) should be served by, if
    /// the classifier's group rules route it to one.
    pub(crate) fn read_group(&self, groups: &ReadGroups, sql: &str) -> Option<GroupId> {
        self.classifier
            .group_index(sql)
            .map(|index| groups.ids[index])
    }

    /// The classifier's verdict, unless a replica already refused a statement with
    /// this fingerprint: then the primary, without the round trip to the replica.
    pub(crate) fn remembered(&self, verdict: Verdict, sql: &str) -> Verdict {
        if verdict != Verdict::Replica || !self.any_refused.load(Ordering::Acquire) {
            return verdict;
        }
        let hash = self.classifier.fingerprint(sql).hash();
        if self.refused.load().contains(&hash) {
            Verdict::Primary(SwitchReason::ReplicaRefused)
        } else {
            verdict
        }
    }

    /// Remember that a replica refused a statement with this fingerprint. Cached
    /// verdicts are forgotten (every time: a replica verdict cached by a statement
    /// judged just before the first refusal must not survive it), so that every
    /// query type is judged once more against what is remembered.
    pub(crate) fn remember_refused(&self, hash: u64) {
        if !self.refused.load().contains(&hash) {
            self.refused.rcu(|current| {
                let mut next = HashSet::clone(current);
                next.insert(hash);
                next
            });
        }
        self.any_refused.store(true, Ordering::Release);
        self.verdicts.store(Arc::new(TypeMap::default()));
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
