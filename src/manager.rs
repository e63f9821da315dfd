//! A bb8 `ManageConnection` adapter, for services that keep their `bb8::Pool` type.

use std::fmt;

use diesel_async::{AsyncPgConnection, SimpleAsyncConnection};

use crate::connection::{SwitchTarget, SwitchableConnection};
use crate::error::NodeStep;
use crate::{Error, SwitchablePool};

/// Lets a service that holds a `bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>`
/// adopt read/write splitting by changing one type and one constructor:
///
/// ```no_run
/// # async fn demo(primary_url: &str, replica_urls: Vec<String>) -> Result<(), Box<dyn std::error::Error>> {
/// use diesel_async::{AsyncPgConnection, RunQueryDsl};
/// use diesel_rwsplit::SwitchableManager;
///
/// // before: bb8::Pool<AsyncDieselConnectionManager<AsyncPgConnection>>
/// //         built from AsyncDieselConnectionManager::new(primary_url)
/// let pool: bb8::Pool<SwitchableManager<AsyncPgConnection>> =
///     bb8::Pool::builder().build(SwitchableManager::new(primary_url, replica_urls).await?).await?;
///
/// let mut conn = pool.get().await?; // derefs to SwitchableConnection: replica first
/// diesel::sql_query("SELECT 1").execute(&mut conn).await?;
/// # Ok(()) }
/// ```
///
/// Each pooled item is a [`SwitchableConnection`] holding a replica connection (from
/// an inner [`SwitchablePool`]); the primary is checked out at its first flip and
/// handed back when the item returns to the bb8 pool, which also resets its
/// routing state. An item returned while panicking, with a transaction possibly
/// left open by raw SQL, or broken, is discarded.
pub struct SwitchableManager<C: SwitchTarget = AsyncPgConnection> {
    pool: SwitchablePool<C>,
}

impl<C: SwitchTarget> fmt::Debug for SwitchableManager<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SwitchableManager")
            .field("pool", &self.pool)
            .finish()
    }
}

/// A pool over a primary and its replicas with every other setting at its default:
/// what the adapters' `new` constructors build.
pub(crate) async fn default_pool<C, I, S>(
    primary_url: &str,
    replica_urls: I,
) -> Result<SwitchablePool<C>, Error>
where
    C: SwitchTarget,
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    SwitchablePool::<C>::builder()
        .primary(primary_url)
        .replicas(replica_urls)
        .build()
        .await
}

impl<C: SwitchTarget> SwitchableManager<C> {
    /// A manager over a primary and its replicas with every other setting at its
    /// default (see [`SwitchablePoolBuilder`](crate::SwitchablePoolBuilder)).
    pub async fn new<I, S>(primary_url: &str, replica_urls: I) -> Result<Self, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Ok(SwitchableManager {
            pool: default_pool(primary_url, replica_urls).await?,
        })
    }

    /// A manager over an already configured pool (interlock mode, balancing, ...).
    pub fn from_pool(pool: SwitchablePool<C>) -> Self {
        SwitchableManager { pool }
    }

    /// The inner pool, for its [`stats`](SwitchablePool::stats).
    pub fn pool(&self) -> &SwitchablePool<C> {
        &self.pool
    }
}

impl<C: SwitchTarget> bb8::ManageConnection for SwitchableManager<C> {
    type Connection = SwitchableConnection<C>;
    type Error = Error;

    async fn connect(&self) -> Result<Self::Connection, Self::Error> {
        Ok(self.pool.get().await?.into_inner())
    }

    async fn is_valid(&self, conn: &mut Self::Connection) -> Result<(), Self::Error> {
        validate(conn).await
    }

    fn has_broken(&self, conn: &mut Self::Connection) -> bool {
        !conn.recycle()
    }
}

/// The validation of a pooled switchable connection at checkout (bb8's `is_valid`,
/// deadpool's `recycle`): a `SELECT 1` where it is (its replica, or the primary).
pub(crate) async fn validate<C: SwitchTarget>(
    conn: &mut SwitchableConnection<C>,
) -> Result<(), Error> {
    if conn.holds_stale_primary() {
        // The primary moved while it sat idle: its primary session may be on a
        // demoted node. Never handed out again.
        return Err(Error::Node {
            node: "pooled switchable connection".into(),
            step: NodeStep::Validate,
            kind: crate::FailureKind::NotAccepting,
            source: "its primary session is from before the primary moved".into(),
        });
    }
    conn.batch_execute("SELECT 1")
        .await
        .map_err(|e| Error::Node {
            node: "pooled switchable connection".into(),
            step: NodeStep::Validate,
            kind: crate::FailureKind::NotAccepting,
            source: Box::new(e),
        })
}
