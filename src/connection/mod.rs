//! `SwitchableConnection`: starts on a replica, flips to the primary, counts every flip.
//!
//! The connection implements diesel-async's `AsyncConnection` by delegating each
//! statement to the active inner connection. Before a statement runs it is judged
//! (by diesel's static query id when the type has one, else by classifying its
//! rendered SQL); a statement that must not run on a replica flips the connection to
//! the primary, which is checked out lazily at that moment and kept until the
//! connection goes back to the pool.
//!
//! It deliberately does not implement `Deref`/`DerefMut` to the inner connection:
//! diesel-async has blanket `AsyncConnection` impls for `DerefMut` wrappers, which
//! would both clash with ours and bypass the interlock.

mod backend;
mod owned_pg;
mod transaction;
mod update;

use std::fmt;
use std::sync::{Arc, Mutex};

use diesel::connection::{CacheSize, Instrumentation, InstrumentationEvent};
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel::{ConnectionResult, QueryResult};
use diesel_async::{
    AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection, TransactionManager,
};
use futures_util::future::{self, BoxFuture};
use futures_util::{FutureExt, StreamExt};
use tracing::Instrument;

use crate::classify::{Classifier, Verdict};
use crate::router::Router;
use crate::{Error, SwitchReason, Target};

pub use backend::{
    LoadFut, NodeConnection, NodePool, NodePoolSettings, PgRow, RowStream, SqlText, SwitchTarget,
};
pub use transaction::SwitchTransactionManager;

/// What the safety interlock does when a connection on a replica meets a statement,
/// a transaction or a hook that needs the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum InterlockMode {
    /// Flip to the primary and run it there; stay there until the connection goes
    /// back to the pool (default).
    #[default]
    Switch,
    /// Refuse: return [`Error::InterlockRefused`] (inside
    /// `diesel::result::Error::QueryBuilderError`) and run nothing. For strict
    /// replica-only scopes and tests.
    Raise,
    /// Run every statement on the primary and only record what `Switch` would have
    /// done: for measuring an application before turning routing on.
    Observe,
}

/// A handle to an inner connection: owned (`Box<C>`) or checked out of a pool.
pub(crate) type Handle<C> = NodeConnection<C>;

/// Where a connection gets nodes from (its pool): the primary at the first flip,
/// another replica when a read must be retried.
pub(crate) trait NodeSource<C>: Send + Sync + 'static {
    fn acquire_primary(&self) -> BoxFuture<'static, Result<Handle<C>, Error>>;
    /// An admitted replica other than `failed`, or `None` when there is none.
    fn acquire_other_replica(&self, failed: usize) -> BoxFuture<'static, Option<ReplicaLease<C>>>;
    /// A replica's connection failed at the connection level: eject it for a while.
    fn replica_failed(&self, index: usize, error: &str);
}

/// A replica connection and which replica it is.
pub(crate) struct ReplicaLease<C> {
    pub(crate) handle: Handle<C>,
    pub(crate) index: usize,
    pub(crate) name: Arc<str>,
}

/// A user instrumentation shared by the replica and the later primary connection.
#[derive(Clone)]
struct SharedInstrumentation(Arc<Mutex<Box<dyn Instrumentation>>>);

impl Instrumentation for SharedInstrumentation {
    fn on_connection_event(&mut self, event: InstrumentationEvent<'_>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .on_connection_event(event)
    }
}

/// A connection that starts on a replica and flips to the primary when it must.
///
/// Use it wherever diesel-async wants an `AsyncConnection`: `RunQueryDsl`,
/// `transaction()`, `save_changes`, `AsyncConnectionWrapper` for migrations. It is
/// normally obtained from [`SwitchablePool::get`](crate::SwitchablePool::get).
///
/// It flips to the primary, and stays there until dropped, when
/// - the classifier sends a statement to the primary (writes, locking reads,
///   side-effect functions, session state, anything it cannot prove read-only);
/// - a transaction begins, whichever way (`transaction()`, `begin_test_transaction`,
///   a raw `BEGIN`): the whole transaction runs on the primary;
/// - [`before_save`](Self::before_save), [`before_delete`](Self::before_delete) or
///   [`switch_to_primary`](Self::switch_to_primary) is called.
///
/// Every flip is counted by reason and statement fingerprint in the pool's
/// [`stats`](crate::SwitchablePool::stats) and emits one `tracing` event (target
/// `diesel_rwsplit::interlock`, level DEBUG) with the reason and the fingerprint,
/// never bind values. Each statement runs inside a TRACE span `rwsplit.statement`
/// whose `node` field says where it ran.
///
/// Cancellation: if a statement's future is dropped while the primary is being
/// checked out, nothing has changed (the connection is still on the replica); if
/// it is dropped while the statement runs, the inner connection behaves as
/// diesel-async documents for a cancelled query.
pub struct SwitchableConnection<C: SwitchTarget> {
    /// `None` when the connection was made primary-only (default route primary,
    /// `get_primary`, Observe mode, a single-node `establish`).
    replica: Option<Handle<C>>,
    /// Once `Some`, every statement goes here until the connection is dropped.
    primary: Option<Handle<C>>,
    /// `None` for a single-node connection: nothing to switch to.
    source: Option<Arc<dyn NodeSource<C>>>,
    router: Arc<Router<C>>,
    replica_name: Option<Arc<str>>,
    replica_index: Option<usize>,
    switch_reason: Option<SwitchReason>,
    /// Observe mode: where `Switch` mode would be by now, and why.
    would_switch: Option<SwitchReason>,
    instrumentation: Option<SharedInstrumentation>,
    cache_size: Option<CacheSize>,
    /// A raw `BEGIN`/`COMMIT`/... went through `batch_execute`: diesel's transaction
    /// manager did not see it, so whether a transaction is still open is unknown.
    raw_transaction_control: bool,
    /// Run when the connection is dropped after flipping (session read-your-writes windows).
    after_write: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl<C: SwitchTarget> fmt::Debug for SwitchableConnection<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchableConnection")
            .field("target", &self.target())
            .field("replica", &self.replica_name)
            .field("switch_reason", &self.switch_reason)
            .field("mode", &self.router.mode)
            .finish_non_exhaustive()
    }
}

/// Where a statement will run.
enum Plan {
    /// On the active connection, without waiting for anything first. Carries the
    /// SQL if judging it rendered it or found it shared, so that it is not built twice.
    Direct(Target, Option<SqlText>),
    /// Check out the primary first; the statement must be rendered to owned data.
    AcquireFirst(Option<Flip>, Option<SqlText>),
}

/// A flip about to happen, with what it is counted under.
struct Flip {
    reason: SwitchReason,
    fingerprint: Option<(u64, String)>,
}

impl<C: SwitchTarget> SwitchableConnection<C> {
    /// A replica-first connection with a lazily acquired primary.
    pub(crate) fn replica_first(
        replica: ReplicaLease<C>,
        source: Arc<dyn NodeSource<C>>,
        router: Arc<Router<C>>,
    ) -> Self {
        let mut conn = Self::assemble(
            Some(replica.handle),
            None,
            Some(source),
            Some(replica.name),
            router,
        );
        conn.replica_index = Some(replica.index);
        conn
    }

    /// A connection already on the primary (it can still record Observe verdicts).
    pub(crate) fn on_primary(
        primary: Handle<C>,
        source: Option<Arc<dyn NodeSource<C>>>,
        router: Arc<Router<C>>,
    ) -> Self {
        Self::assemble(None, Some(primary), source, None, router)
    }

    /// An Observe-mode connection: primary acquired on first use, no replica at all.
    pub(crate) fn observing(source: Arc<dyn NodeSource<C>>, router: Arc<Router<C>>) -> Self {
        Self::assemble(None, None, Some(source), None, router)
    }

    fn assemble(
        replica: Option<Handle<C>>,
        primary: Option<Handle<C>>,
        source: Option<Arc<dyn NodeSource<C>>>,
        replica_name: Option<Arc<str>>,
        router: Arc<Router<C>>,
    ) -> Self {
        SwitchableConnection {
            replica,
            primary,
            source,
            router,
            replica_name,
            replica_index: None,
            switch_reason: None,
            would_switch: None,
            instrumentation: None,
            cache_size: None,
            raw_transaction_control: false,
            after_write: None,
        }
    }

    pub(crate) fn set_after_write(&mut self, hook: Box<dyn FnOnce() + Send + Sync>) {
        self.after_write = Some(hook);
    }

    /// Where statements go now.
    pub fn target(&self) -> Target {
        if self.primary.is_none() && self.replica.is_some() {
            Target::Replica
        } else {
            Target::Primary
        }
    }

    /// Why the connection flipped to the primary (`None` if it has not flipped, or
    /// started there).
    pub fn switch_reason(&self) -> Option<SwitchReason> {
        self.switch_reason
    }

    /// In `Observe` mode: why `Switch` mode would have flipped by now, if it would.
    pub fn would_switch_reason(&self) -> Option<SwitchReason> {
        self.would_switch
    }

    /// The interlock mode this connection runs under.
    pub fn interlock_mode(&self) -> InterlockMode {
        self.router.mode
    }

    /// A token for reading this unit of work's writes elsewhere (another connection,
    /// request or service): the primary's WAL position now. Call it after the writes
    /// are committed; pass it to [`SwitchablePool::get_after`](crate::SwitchablePool::get_after),
    /// or serialise it (`to_string()`) into a cookie or header.
    ///
    /// `None` when the connection never used the primary: it wrote nothing, and
    /// any replica is as fresh as it needs to be.
    pub async fn causal_token(&mut self) -> QueryResult<Option<crate::CausalToken>> {
        match self.primary.as_mut() {
            Some(primary) => Ok(Some(crate::CausalToken::new(
                C::current_wal_lsn(primary).await?,
            ))),
            None => Ok(None),
        }
    }

    /// The model layer is about to save a record: go to the primary now.
    ///
    /// Counted under [`SwitchReason::SaveHook`]. In `Raise` mode on a replica this
    /// returns the refusal instead. A no-op once on the primary.
    pub async fn before_save(&mut self) -> QueryResult<()> {
        self.hook(SwitchReason::SaveHook).await
    }

    /// The model layer is about to delete a record: go to the primary now.
    /// Counted under [`SwitchReason::DeleteHook`]; otherwise as [`before_save`](Self::before_save).
    pub async fn before_delete(&mut self) -> QueryResult<()> {
        self.hook(SwitchReason::DeleteHook).await
    }

    /// Application code knows it is about to write: go to the primary now.
    /// Counted under [`SwitchReason::Explicit`]; otherwise as [`before_save`](Self::before_save).
    pub async fn switch_to_primary(&mut self) -> QueryResult<()> {
        self.hook(SwitchReason::Explicit).await
    }

    /// A transaction begins: the whole of it runs on the primary.
    pub(crate) async fn begin_hook(&mut self) -> QueryResult<()> {
        let judge = |_: &Self| {
            Ok((
                Verdict::Primary(SwitchReason::TransactionBegin),
                Some(SqlText::Owned("BEGIN".to_owned())),
            ))
        };
        match self.decide(judge, true)? {
            Plan::Direct(..) => Ok(()),
            Plan::AcquireFirst(flip, _) => self.acquire_primary(flip).await,
        }
    }

    async fn hook(&mut self, reason: SwitchReason) -> QueryResult<()> {
        match self.decide(|_| Ok((Verdict::Primary(reason), None)), true)? {
            Plan::Direct(..) => Ok(()),
            Plan::AcquireFirst(flip, _) => self.acquire_primary(flip).await,
        }
    }

    /// Decide where the next statement runs. Synchronous, never awaits; `judge` is
    /// called only when the answer matters. `hook` marks a hook call, which is
    /// not a statement.
    fn decide(
        &mut self,
        judge: impl FnOnce(&Self) -> QueryResult<(Verdict, Option<SqlText>)>,
        hook: bool,
    ) -> QueryResult<Plan> {
        let stats = &self.router.stats;
        if self.router.mode == InterlockMode::Observe && self.source.is_some() {
            let mut rendered = None;
            if self.would_switch.is_none() {
                let (verdict, sql) = judge(self)?;
                if let Verdict::Primary(reason) = verdict {
                    let fingerprint = self.fingerprint(sql.as_deref());
                    stats.record_would_switch(
                        reason,
                        fingerprint.as_ref().map(|(h, t)| (*h, t.as_str())),
                    );
                    self.would_switch = Some(reason);
                }
                rendered = sql;
            }
            if !hook {
                let would_be = if self.would_switch.is_some() {
                    Target::Primary
                } else {
                    Target::Replica
                };
                stats.record_would_be(would_be);
                stats.record_statement(Target::Primary);
            }
            return Ok(if self.primary.is_some() {
                Plan::Direct(Target::Primary, rendered)
            } else {
                Plan::AcquireFirst(None, rendered)
            });
        }
        if self.target() == Target::Primary || self.source.is_none() {
            if !hook {
                stats.record_statement(Target::Primary);
            }
            return Ok(Plan::Direct(Target::Primary, None));
        }
        match judge(self)? {
            (Verdict::Replica, sql) => {
                stats.record_statement(Target::Replica);
                Ok(Plan::Direct(Target::Replica, sql))
            }
            (Verdict::Primary(reason), sql) => {
                let fingerprint = self.fingerprint(sql.as_deref());
                if self.router.mode == InterlockMode::Raise {
                    return Err(self.refuse(reason, fingerprint));
                }
                if !hook {
                    stats.record_statement(Target::Primary);
                }
                Ok(Plan::AcquireFirst(
                    Some(Flip {
                        reason,
                        fingerprint,
                    }),
                    sql,
                ))
            }
        }
    }

    fn fingerprint(&self, sql: Option<&str>) -> Option<(u64, String)> {
        sql.map(|sql| {
            let fingerprint = self.router.classifier.fingerprint(sql);
            (fingerprint.hash(), fingerprint.text().to_owned())
        })
    }

    /// Raise mode: count, log and build the refusal; nothing runs.
    fn refuse(&self, reason: SwitchReason, fingerprint: Option<(u64, String)>) -> DieselError {
        self.router.stats.record_refusal(reason);
        let text = fingerprint.map(|(_, text)| text);
        tracing::debug!(
            target: "diesel_rwsplit::interlock",
            reason = reason.as_str(),
            fingerprint = text.as_deref().unwrap_or(""),
            "refused (Raise mode): needs the primary"
        );
        DieselError::QueryBuilderError(Box::new(Error::InterlockRefused {
            reason,
            fingerprint: text,
        }))
    }

    /// Check out the primary (if not held) and, for a flip, record it. Cancel-safe:
    /// dropped while waiting on the pool, it leaves the connection unchanged.
    async fn acquire_primary(&mut self, flip: Option<Flip>) -> QueryResult<()> {
        if self.primary.is_some() {
            return Ok(());
        }
        let Some(source) = self.source.clone() else {
            return Ok(());
        };
        let mut primary = source
            .acquire_primary()
            .await
            .map_err(primary_unavailable)?;
        if let Some(instrumentation) = &self.instrumentation {
            primary.set_instrumentation(instrumentation.clone());
        }
        if let Some(size) = self.cache_size {
            primary.set_prepared_statement_cache_size(size);
        }
        self.primary = Some(primary);
        if let Some(Flip {
            reason,
            fingerprint,
        }) = flip
        {
            self.switch_reason = Some(reason);
            let (hash, text) = fingerprint
                .as_ref()
                .map_or((0, ""), |(h, t)| (*h, t.as_str()));
            self.router
                .stats
                .record_switch(reason, fingerprint.as_ref().map(|_| (hash, text)));
            tracing::debug!(
                target: "diesel_rwsplit::interlock",
                reason = reason.as_str(),
                fingerprint = text,
                fingerprint_hash = hash,
                replica = self.replica_name.as_deref().unwrap_or(""),
                "switched to the primary"
            );
        }
        Ok(())
    }

    /// Whether reads on the replica are rendered so that they can be retried.
    fn retries_reads(&self) -> bool {
        self.router.read_retry && self.replica_index.is_some()
    }

    /// A replica read failed before any row came back: eject the replica if the
    /// failure was the connection's, and move to another replica or, if none is
    /// admitted, to the primary. Counted; the caller runs the read once more.
    async fn move_after_failed_read(&mut self, error: &DieselError) -> QueryResult<()> {
        let (Some(source), Some(index)) = (self.source.clone(), self.replica_index) else {
            return Ok(());
        };
        let broken = self.replica.as_mut().is_some_and(|r| C::inner_is_broken(r));
        let conflict = matches!(error, DieselError::DatabaseError(_, info) if info.message().starts_with("canceling statement"));
        if broken || !conflict {
            source.replica_failed(index, &error.to_string());
        }
        self.router.stats.record_read_retry();
        tracing::warn!(
            target: "diesel_rwsplit::pool",
            replica = self.replica_name.as_deref().unwrap_or(""),
            error = %error,
            "read failed on a replica before any row came back; retrying once elsewhere"
        );
        match source.acquire_other_replica(index).await {
            Some(lease) => {
                self.replica = Some(lease.handle);
                self.replica_index = Some(lease.index);
                self.replica_name = Some(lease.name);
            }
            None => {
                self.router.stats.record_replica_fallback();
                self.replica = None;
                self.replica_index = None;
                self.acquire_primary(None).await?;
            }
        }
        Ok(())
    }

    /// The statement as owned SQL + binds, reusing the SQL text if judging it
    /// already produced it.
    fn render_owned<Q>(&self, query: &Q, sql: Option<SqlText>) -> QueryResult<C::Rendered>
    where
        Q: QueryFragment<C::Backend> + QueryId,
    {
        C::render(query, sql, &self.router.render_ctx)
    }

    /// The verdict for a diesel query: cached by static query id, else classified
    /// from its rendered SQL. Returns the SQL when it is at hand (for a fingerprint,
    /// or for rendering it to owned data without building the text again).
    fn judge_query<Q>(&self, query: &Q) -> QueryResult<(Verdict, Option<SqlText>)>
    where
        Q: QueryFragment<C::Backend> + QueryId,
    {
        let id = Q::query_id();
        // A type's verdict and SQL hold only for its instances that are safe to cache
        // prepared (diesel's own rule for sharing a prepared statement by type); any
        // other instance may render other SQL, so it is classified afresh.
        let typed = match id {
            Some(_) => C::is_safe_to_cache(query)?,
            None => false,
        };
        if let (true, Some((verdict, sql))) =
            (typed, id.and_then(|id| self.router.cached_verdict(id)))
        {
            return Ok((verdict, Some(sql)));
        }
        let sql = C::render_sql(query)?;
        let verdict = self.router.classifier.classify(&sql);
        // Only replica verdicts are cached: a primary verdict needs the statement for
        // its fingerprint (flip, refusal or would-be flip), and a flip renders it anyway.
        if let (Some(id), Verdict::Replica, true) = (id, verdict, typed) {
            self.router.cache_verdict(id, verdict, &sql);
        }
        Ok((verdict, Some(SqlText::Owned(sql))))
    }

    /// The active connection and the router's rendering context, borrowed apart
    /// (no reference-count traffic on the shared router per statement).
    fn active_with_ctx(&mut self) -> (&mut C, &C::RenderCtx) {
        let ctx = &self.router.render_ctx;
        let conn: &mut C = match (&mut self.primary, &mut self.replica) {
            (Some(primary), _) => primary,
            (None, Some(replica)) => replica,
            (None, None) => unreachable!("statements run only after a connection is in hand"),
        };
        (conn, ctx)
    }

    pub(crate) fn active_mut(&mut self) -> &mut C {
        self.active_with_ctx().0
    }

    pub(crate) fn any_broken(&mut self) -> bool {
        let replica = self.replica.as_mut().is_some_and(|r| C::inner_is_broken(r));
        let primary = self.primary.as_mut().is_some_and(|p| C::inner_is_broken(p));
        replica || primary
    }

    /// Whether the connection has no connection in hand yet (Observe before first use).
    fn is_empty(&self) -> bool {
        self.primary.is_none() && self.replica.is_none()
    }
}

impl<C: SwitchTarget> SwitchableConnection<C> {
    /// End of a unit of work when the connection itself is kept for the next one
    /// (the bb8 adapter): decide whether it may be reused and, if so, put it back
    /// on its replica with all routing state reset. Returns `false` when it must be
    /// discarded: a panic, a possibly open raw transaction, or a broken connection.
    pub(crate) fn recycle(&mut self) -> bool {
        if std::thread::panicking() || self.raw_transaction_control || self.any_broken() {
            return false;
        }
        self.record_observed_unit();
        if self.replica.is_some() {
            if let Some(mut primary) = self.primary.take() {
                // Do not leak this connection's settings into the primary's pool.
                if self.instrumentation.is_some() {
                    primary.set_instrumentation(None::<Box<dyn Instrumentation>>);
                }
                if self.cache_size.is_some() {
                    primary.set_prepared_statement_cache_size(CacheSize::Unbounded);
                }
            }
            self.switch_reason = None;
        }
        true
    }

    fn record_observed_unit(&mut self) {
        if self.router.mode == InterlockMode::Observe && self.source.is_some() && !self.is_empty() {
            self.router
                .stats
                .record_observed_unit(self.would_switch.is_none());
        }
        self.would_switch = None;
    }
}

impl<C: SwitchTarget> Drop for SwitchableConnection<C> {
    fn drop(&mut self) {
        if self.switch_reason.is_some() {
            if let Some(hook) = self.after_write.take() {
                hook();
            }
        }
        if self.raw_transaction_control {
            // A transaction begun by raw SQL may still be open; diesel's transaction
            // manager cannot tell. Mark the connection broken so its pool discards it
            // rather than hand an open transaction to the next user. Doubt costs a
            // reconnect, never a leaked transaction.
            for conn in [&mut self.primary, &mut self.replica].into_iter().flatten() {
                <C::TransactionManager as TransactionManager<C>>::transaction_manager_status_mut(
                    conn,
                )
                .set_in_error();
            }
        }
        self.record_observed_unit();
    }
}

impl<C: SwitchTarget> diesel_async::pooled_connection::PoolableConnection
    for SwitchableConnection<C>
{
    /// Broken if either held connection is: an open transaction, a transaction
    /// manager in error, or a closed socket. A broken connection is not reused.
    fn is_broken(&mut self) -> bool {
        self.any_broken()
    }
}

fn primary_unavailable(error: Error) -> DieselError {
    DieselError::DatabaseError(
        DatabaseErrorKind::UnableToSendCommand,
        Box::new(error.to_string()),
    )
}

fn statement_span(target: Target) -> tracing::Span {
    tracing::trace_span!("rwsplit.statement", node = target.as_str())
}

impl<C: SwitchTarget> SimpleAsyncConnection for SwitchableConnection<C> {
    /// Raw SQL, including a raw `BEGIN`, is classified as a whole string.
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        let classifier = &self.router.classifier;
        let verdict = classifier.classify(query);
        if matches!(
            verdict.reason(),
            Some(SwitchReason::TransactionBegin | SwitchReason::TransactionControl)
        ) {
            self.raw_transaction_control = true;
        }
        let judged = |_: &Self| Ok((verdict, Some(SqlText::Owned(query.to_owned()))));
        let target = match self.decide(judged, false)? {
            Plan::Direct(target, _) => target,
            Plan::AcquireFirst(flip, _) => {
                self.acquire_primary(flip).await?;
                Target::Primary
            }
        };
        self.active_mut()
            .batch_execute(query)
            .instrument(statement_span(target))
            .await
    }
}

impl<C: SwitchTarget> AsyncConnectionCore for SwitchableConnection<C> {
    // Boxed and tied to 'conn only: the owned path holds `&'conn mut self` across
    // the primary checkout, and neither path may capture 'query.
    type ExecuteFuture<'conn, 'query> = BoxFuture<'conn, QueryResult<usize>>;
    type LoadFuture<'conn, 'query> = LoadFut<'conn, C::OwnedRow>;
    type Stream<'conn, 'query> = RowStream<'conn, C::OwnedRow>;
    type Row<'conn, 'query> = C::OwnedRow;
    type Backend = C::Backend;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        let query = source.as_query();
        match self.decide(|conn| conn.judge_query(&query), false) {
            Err(e) => future::ready(Err(e)).boxed(),
            Ok(Plan::Direct(Target::Replica, sql)) if self.retries_reads() => {
                // Rendered to owned SQL + binds so that it can run a second time.
                let rendered = self.render_owned(&query, sql);
                drop(query);
                let read = async move {
                    let mut rendered = rendered?;
                    let (conn, ctx) = self.active_with_ctx();
                    let error = match C::load_rendered(conn, &mut rendered, ctx).await {
                        Err(e) if C::is_retryable_read_error(&e) => e,
                        Err(e) => return Err(e),
                        // A server going away mid-query shows up as the stream's first
                        // item: look at it before deciding that no row came back.
                        // Fused: an empty result ends the stream, and `chain` below polls
                        // it again; a row stream polled past its end says "connection closed".
                        Ok(rows) => {
                            let mut rows = rows.fuse();
                            match rows.next().await {
                                Some(Err(e)) if C::is_retryable_read_error(&e) => e,
                                first => {
                                    let rows = futures_util::stream::iter(first).chain(rows);
                                    return Ok(rows.boxed() as RowStream<'conn, C::OwnedRow>);
                                }
                            }
                        }
                    };
                    self.move_after_failed_read(&error).await?;
                    let (conn, ctx) = self.active_with_ctx();
                    let stream = C::load_rendered(conn, &mut rendered, ctx).await?;
                    Ok(stream as RowStream<'conn, C::OwnedRow>)
                };
                with_span(read.boxed(), Target::Replica)
            }
            Ok(Plan::Direct(target, _)) => {
                with_span(C::load_direct(self.active_mut(), query), target)
            }
            Ok(Plan::AcquireFirst(flip, sql)) => {
                // The query is not Send: render it now, before the await.
                let rendered = self.render_owned(&query, sql);
                drop(query);
                async move {
                    let mut rendered = rendered?;
                    self.acquire_primary(flip).await?;
                    let (conn, ctx) = self.active_with_ctx();
                    let stream = C::load_rendered(conn, &mut rendered, ctx).await?;
                    Ok(stream as RowStream<'conn, C::OwnedRow>)
                }
                .instrument(statement_span(Target::Primary))
                .boxed()
            }
        }
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Self::Backend> + QueryId + 'query,
    {
        match self.decide(|conn| conn.judge_query(&source), false) {
            Err(e) => future::ready(Err(e)).boxed(),
            Ok(Plan::Direct(Target::Replica, sql)) if self.retries_reads() => {
                let rendered = self.render_owned(&source, sql);
                drop(source);
                let read = async move {
                    let mut rendered = rendered?;
                    let (conn, ctx) = self.active_with_ctx();
                    let error = match C::execute_rendered(conn, &mut rendered, ctx).await {
                        Ok(count) => return Ok(count),
                        Err(e) if C::is_retryable_read_error(&e) => e,
                        Err(e) => return Err(e),
                    };
                    self.move_after_failed_read(&error).await?;
                    let (conn, ctx) = self.active_with_ctx();
                    C::execute_rendered(conn, &mut rendered, ctx).await
                };
                with_span(read.boxed(), Target::Replica)
            }
            Ok(Plan::Direct(target, _)) => {
                with_span(C::execute_direct(self.active_mut(), source), target)
            }
            Ok(Plan::AcquireFirst(flip, sql)) => {
                let rendered = self.render_owned(&source, sql);
                drop(source);
                async move {
                    let mut rendered = rendered?;
                    self.acquire_primary(flip).await?;
                    let (conn, ctx) = self.active_with_ctx();
                    C::execute_rendered(conn, &mut rendered, ctx).await
                }
                .instrument(statement_span(Target::Primary))
                .boxed()
            }
        }
    }
}

/// Attach the statement span only when someone listens: an instrumented future
/// costs one more allocation.
fn with_span<'a, T: Send + 'a>(future: BoxFuture<'a, T>, target: Target) -> BoxFuture<'a, T> {
    let span = statement_span(target);
    if span.is_disabled() {
        future
    } else {
        future.instrument(span).boxed()
    }
}

impl<C: SwitchTarget> AsyncConnection for SwitchableConnection<C> {
    type TransactionManager = SwitchTransactionManager<C>;

    /// A single-node connection to `database_url`: no replica, no flips, everything
    /// runs there. It exists so that diesel-async's URL-based constructors
    /// (`AsyncConnectionWrapper::establish`, `AsyncDieselConnectionManager::new`)
    /// work; point it at the primary. Read/write splitting comes from
    /// [`SwitchablePool`](crate::SwitchablePool).
    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        let conn = C::establish(database_url).await?;
        let router = Router::new(Classifier::new(C::DIALECT), InterlockMode::Switch, false);
        Ok(Self::on_primary(Box::new(Box::new(conn)), None, router))
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <Self::TransactionManager as TransactionManager<Self>>::TransactionStateData {
        self.active_mut().transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.active_mut().instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        let shared = SharedInstrumentation(Arc::new(Mutex::new(Box::new(instrumentation))));
        for conn in [&mut self.replica, &mut self.primary].into_iter().flatten() {
            conn.set_instrumentation(shared.clone());
        }
        self.instrumentation = Some(shared);
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        for conn in [&mut self.replica, &mut self.primary].into_iter().flatten() {
            conn.set_prepared_statement_cache_size(size);
        }
        self.cache_size = Some(size);
    }
}

/// If `error` is the safety interlock refusing a statement in `Raise` mode, why.
///
/// ```
/// # use diesel_rwsplit::{interlock_refusal, Error, SwitchReason};
/// let refused = diesel::result::Error::QueryBuilderError(Box::new(Error::InterlockRefused {
///     reason: SwitchReason::WriteStatement,
///     fingerprint: None,
/// }));
/// assert_eq!(interlock_refusal(&refused), Some(SwitchReason::WriteStatement));
/// assert_eq!(interlock_refusal(&diesel::result::Error::NotFound), None);
/// ```
pub fn interlock_refusal(error: &DieselError) -> Option<SwitchReason> {
    match error {
        DieselError::QueryBuilderError(inner) => match inner.downcast_ref::<Error>() {
            Some(Error::InterlockRefused { reason, .. }) => Some(*reason),
            _ => None,
        },
        _ => None,
    }
}
