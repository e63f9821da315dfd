//! What the database itself says about the application's functions.

use std::time::Duration;

use crate::connect::{pg_connect_failure, PgEndpoint};
use crate::{Error, NodeStep};

/// How long reading the catalog may take, connecting included.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);

/// The application's volatile functions, read from the primary's `pg_proc`: every
/// function or procedure outside `pg_catalog` and `information_schema` declared
/// `VOLATILE` (PostgreSQL's default, and what a function that writes must be), as
/// schema-qualified names ready for
/// [`ClassifierBuilder::write_functions`](crate::classify::ClassifierBuilder::write_functions).
///
/// The classifier cannot see inside `SELECT my_function()`; declaring these sends
/// such calls to the primary up front, instead of a round trip to a replica that
/// refuses them (see "Self-healing misroutes" in the crate docs). Conservative:
/// a volatile function that only reads (say one that calls `random()`) goes to
/// the primary too; declare it with
/// [`read_only_function`](crate::classify::ClassifierBuilder::read_only_function)
/// to keep it on the replicas. Extensions' volatile functions are included.
///
/// ```no_run
/// # async fn demo(primary_url: &str) -> Result<(), diesel_rwsplit::Error> {
/// use diesel_rwsplit::classify::{Classifier, Dialect};
///
/// let classifier = Classifier::builder(Dialect::Postgres)
///     .write_functions(diesel_rwsplit::volatile_user_functions(primary_url).await?)
///     .build()?;
/// # Ok(()) }
/// ```
///
/// The URL's TLS settings apply (`sslmode`, `sslrootcert`, ...).
///
/// Errors: [`Error::Node`] with step [`NodeStep::Catalog`] when the primary cannot be
/// reached or read within 10 s (never the URL's password).
pub async fn volatile_user_functions(primary_url: &str) -> Result<Vec<String>, Error> {
    let endpoint = PgEndpoint::new("primary", primary_url, &Default::default())?;
    let node = endpoint.name().to_owned();
    let failed = |failure: crate::connection::NodeFailure| Error::Node {
        node: node.clone(),
        step: NodeStep::Catalog,
        kind: failure.kind,
        source: failure.into_source(),
    };
    let read = async {
        let (client, connection) = endpoint.connect(None, CATALOG_TIMEOUT).await?;
        let driver = tokio::spawn(connection);
        let rows = client
            .query(
                "SELECT DISTINCT quote_ident(n.nspname) || '.' || quote_ident(p.proname)
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
                 WHERE p.provolatile = 'v' AND p.prokind IN ('f', 'p')
                   AND n.nspname NOT IN ('pg_catalog', 'information_schema')
                   AND n.nspname NOT LIKE 'pg\\_toast%'
                 ORDER BY 1",
                &[],
            )
            .await
            .map_err(pg_connect_failure)?;
        drop(client);
        let _ = driver.await;
        Ok::<_, crate::connection::NodeFailure>(rows.iter().map(|row| row.get(0)).collect())
    };
    match tokio::time::timeout(CATALOG_TIMEOUT, read).await {
        Ok(result) => result.map_err(failed),
        Err(_) => Err(failed(crate::connection::NodeFailure::new(
            crate::FailureKind::NoAnswer,
            format!("no answer within {CATALOG_TIMEOUT:?}"),
        ))),
    }
}
