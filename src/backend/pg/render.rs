//! Owned "SQL + binds" rendering for PostgreSQL.
//!
//! Why: `AsyncConnectionCore::load/execute_returning_count` take a query `T` that is *not*
//! `Send` (and borrows `'query`). When the primary must be fetched first (an `.await` on a
//! pool), or a replica read must be kept so that it can run a second time elsewhere, the
//! returned `Send` future cannot hold `T`. So we render `T` synchronously into owned data
//! and run that (by reference, as often as needed) through
//! [`RenderedRef`](crate::backend::replay::RenderedRef).
//!
//! PostgreSQL wrinkle: binds of user-defined types (`#[diesel(postgres_type(name = ..))]`)
//! need their OIDs from the server (`PgMetadataLookup::lookup_type`), which is async, and
//! for arrays/records the OID is also *inside the serialized bytes*. We copy diesel-async's
//! approach (pg/mod.rs `construct_bind_data`): collect binds with fake OIDs, collect a
//! second time with different fake OIDs, diff the bytes to find where OIDs are embedded,
//! then once a connection is in hand look the types up and patch metadata + bytes.
//! Resolved OIDs go to a router-wide cache (identical on primary and physical replicas),
//! so only the first such statement per type pays a lookup.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use diesel::pg::{Pg, PgMetadataLookup, PgQueryBuilder, PgTypeMetadata};
use diesel::query_builder::bind_collector::RawBytesBindCollector;
use diesel::query_builder::{QueryBuilder, QueryFragment, QueryId};
use diesel::result::Error;
use diesel::QueryResult;
use diesel_async::{AsyncConnectionCore, AsyncPgConnection, RunQueryDsl};
use futures_util::future::BoxFuture;

use super::PgRow;
use crate::backend::replay::{sql_and_cacheability, Keyed, RenderedRef, Replay, Unkeyed};
use crate::backend::{RowStream, SqlText};

type TypeKey = (Option<String>, String);
const FAKE_OID: u32 = 0;

/// Router-wide cache of user-defined type OIDs: (schema, name) -> (oid, array_oid).
/// Router-wide cache of user-defined type OIDs.
#[derive(Clone, Default, Debug)]
pub struct OidCache(Arc<RwLock<HashMap<TypeKey, (u32, u32)>>>);

/// SQL + binds, owned and `Send + 'static`; run by reference, as often as needed.
#[allow(missing_debug_implementations)] // binds must never be printed
pub struct RenderedPg {
    sql: SqlText,
    safe_to_cache: bool,
    binds: RawBytesBindCollector<Pg>,
    /// `Some` only if the query bound a user-defined type not yet in the cache.
    unresolved: Option<Unresolved>,
    /// Run on a connection under the original query's static query id (or none).
    load: LoadFn,
    execute: ExecuteFn,
}

type LoadFn = for<'c, 'r> fn(
    &'c mut AsyncPgConnection,
    &'r RenderedPg,
) -> BoxFuture<'c, QueryResult<RowStream<'static, PgRow>>>;
type ExecuteFn =
    for<'c, 'r> fn(&'c mut AsyncPgConnection, &'r RenderedPg) -> BoxFuture<'c, QueryResult<usize>>;

struct Unresolved {
    /// (schema, name) -> the fake (oid, array_oid) written into `binds`.
    fakes: HashMap<TypeKey, (u32, u32)>,
    /// (bind index, byte offset) of fake OIDs embedded in serialized bind bytes.
    embedded: Vec<(usize, usize)>,
}

impl Replay<Pg> for RenderedPg {
    fn sql(&self) -> &str {
        &self.sql
    }

    fn safe_to_cache(&self) -> bool {
        self.safe_to_cache
    }

    fn binds(&self) -> &RawBytesBindCollector<Pg> {
        &self.binds
    }
}

fn load_as<'c, K>(
    conn: &'c mut AsyncPgConnection,
    rendered: &RenderedPg,
) -> BoxFuture<'c, QueryResult<RowStream<'static, PgRow>>>
where
    for<'a> RenderedRef<'a, RenderedPg, K>: QueryId,
{
    AsyncConnectionCore::load(conn, RenderedRef::<_, K>::new(rendered))
}

fn execute_as<'c, K>(
    conn: &'c mut AsyncPgConnection,
    rendered: &RenderedPg,
) -> BoxFuture<'c, QueryResult<usize>>
where
    for<'a> RenderedRef<'a, RenderedPg, K>: QueryId,
{
    AsyncConnectionCore::execute_returning_count(conn, RenderedRef::<_, K>::new(rendered))
}

pub(crate) fn render_sql<Q: QueryFragment<Pg> + ?Sized>(query: &Q) -> QueryResult<String> {
    let mut qb = PgQueryBuilder::default();
    query.to_sql(&mut qb, &Pg)?;
    Ok(qb.finish())
}

/// `PgMetadataLookup` that answers from the cache, else with fake OIDs
/// (all `FAKE_OID` in pass 0, unique ones in pass 1).
/// Pitfall: `Pg::MetadataLookup` is `dyn PgMetadataLookup` (implicitly `+ 'static`), and
/// `collect_binds` takes `&mut Pg::MetadataLookup`, so the lookup may not borrow anything:
/// hold the `Arc`, not a read guard.
struct Lookup {
    /// `None` for a first pass that only finds out whether any custom type is bound
    /// (most statements bind none, and need not touch the shared cache at all).
    cache: Option<OidCache>,
    missed: bool,
    /// Pass 1 only: the fake (oid, array oid) handed out per type, and the last one used.
    fakes: Option<(FakeOids, u32)>,
}

/// (schema, name) -> the fake (oid, array_oid) written into the binds.
type FakeOids = HashMap<TypeKey, (u32, u32)>;

impl PgMetadataLookup for Lookup {
    fn lookup_type(&mut self, type_name: &str, schema: Option<&str>) -> PgTypeMetadata {
        let key = (schema.map(str::to_owned), type_name.to_owned());
        let cached = self.cache.as_ref().and_then(|cache| {
            cache
                .0
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(&key)
                .copied()
        });
        if let Some((oid, array_oid)) = cached {
            return PgTypeMetadata::new(oid, array_oid);
        }
        self.missed = true;
        match &mut self.fakes {
            None => PgTypeMetadata::new(FAKE_OID, FAKE_OID),
            Some((map, next)) => {
                let (o, a) = *map.entry(key).or_insert_with(|| {
                    *next += 2;
                    (*next, *next + 1)
                });
                PgTypeMetadata::new(o, a)
            }
        }
    }
}

/// Render `query` to owned SQL + binds. `sql` is its SQL text if judging it already
/// produced it (rendered, or shared from the per-type cache).
pub(crate) fn render<Q>(
    query: &Q,
    sql: Option<SqlText>,
    cache: &OidCache,
) -> QueryResult<RenderedPg>
where
    Q: QueryFragment<Pg> + QueryId + ?Sized,
{
    let (sql, safe_to_cache) = sql_and_cacheability(query, sql, render_sql::<Q>)?;
    let (load, execute): (LoadFn, ExecuteFn) = if Q::HAS_STATIC_QUERY_ID {
        (
            load_as::<Keyed<Q::QueryId>>,
            execute_as::<Keyed<Q::QueryId>>,
        )
    } else {
        (load_as::<Unkeyed>, execute_as::<Unkeyed>)
    };

    // Pass 0: without the cache, which is enough when no custom type is bound; if
    // one is, again with real OIDs for cached types and FAKE_OID for the rest.
    let mut binds0 = RawBytesBindCollector::<Pg>::new();
    let mut lookup0 = Lookup {
        cache: None,
        missed: false,
        fakes: None,
    };
    query.collect_binds(&mut binds0, &mut lookup0 as &mut dyn PgMetadataLookup, &Pg)?;
    if lookup0.missed {
        binds0 = RawBytesBindCollector::<Pg>::new();
        lookup0 = Lookup {
            cache: Some(cache.clone()),
            missed: false,
            fakes: None,
        };
        query.collect_binds(&mut binds0, &mut lookup0 as &mut dyn PgMetadataLookup, &Pg)?;
    }
    if !lookup0.missed {
        return Ok(RenderedPg {
            sql,
            safe_to_cache,
            binds: binds0,
            unresolved: None,
            load,
            execute,
        });
    }

    // Pass 1: unique fake OIDs above every OID already present.
    let max_oid = binds0
        .metadata
        .iter()
        .flat_map(|m| {
            [
                m.oid().unwrap_or_default(),
                m.array_oid().unwrap_or_default(),
            ]
        })
        .max()
        .unwrap_or_default();
    let mut binds1 = RawBytesBindCollector::<Pg>::new();
    let mut lookup1 = Lookup {
        cache: Some(cache.clone()),
        missed: false,
        fakes: Some((HashMap::new(), max_oid)),
    };
    query.collect_binds(&mut binds1, &mut lookup1 as &mut dyn PgMetadataLookup, &Pg)?;
    let fakes = lookup1.fakes.map(|(m, _)| m).unwrap_or_default();
    let generated: HashSet<u32> = fakes.values().flat_map(|&(o, a)| [o, a]).collect();

    // Where do the two passes differ, inside binds whose own type was a fake one?
    let mut embedded = Vec::new();
    for (i, ((b0, m0), b1)) in binds0
        .binds
        .iter()
        .zip(&binds0.metadata)
        .zip(&binds1.binds)
        .enumerate()
    {
        if !matches!(m0.oid(), Ok(FAKE_OID)) {
            continue;
        }
        let (b0, b1) = (
            b0.as_deref().unwrap_or_default(),
            b1.as_deref().unwrap_or_default(),
        );
        for (off, (l, r)) in b0.windows(4).zip(b1.windows(4)).enumerate() {
            let r_val = u32::from_be_bytes(r.try_into().unwrap_or([0; 4]));
            if l == FAKE_OID.to_be_bytes()
                && r != FAKE_OID.to_be_bytes()
                && generated.contains(&r_val)
            {
                embedded.push((i, off));
            }
        }
    }
    Ok(RenderedPg {
        sql,
        safe_to_cache,
        binds: binds1,
        unresolved: Some(Unresolved { fakes, embedded }),
        load,
        execute,
    })
}

#[derive(diesel::QueryableByName)]
struct TypeOids {
    #[diesel(sql_type = diesel::sql_types::Oid)]
    oid: u32,
    #[diesel(sql_type = diesel::sql_types::Oid)]
    typarray: u32,
}

async fn lookup_type(conn: &mut AsyncPgConnection, key: &TypeKey) -> QueryResult<(u32, u32)> {
    use diesel::sql_types::Text;
    let r: TypeOids = match &key.0 {
        Some(schema) => {
            diesel::sql_query(
                "SELECT pg_type.oid, pg_type.typarray FROM pg_type \
                 INNER JOIN pg_namespace ON pg_type.typnamespace = pg_namespace.oid \
                 WHERE pg_type.typname = $1 AND pg_namespace.nspname = $2 LIMIT 1",
            )
            .bind::<Text, _>(&key.1)
            .bind::<Text, _>(schema)
            .get_result(conn)
            .await?
        }
        None => diesel::sql_query(
            "SELECT oid, typarray FROM pg_type WHERE oid = quote_ident($1)::regtype::oid LIMIT 1",
        )
        .bind::<Text, _>(&key.1)
        .get_result(conn)
        .await?,
    };
    Ok((r.oid, r.typarray))
}

impl RenderedPg {
    /// Resolve pending custom-type OIDs on `conn` and patch the binds. All or
    /// nothing: after any failure the rendering is as it was, and a retry elsewhere
    /// resolves again.
    async fn resolve(&mut self, conn: &mut AsyncPgConnection, cache: &OidCache) -> QueryResult<()> {
        let Some(unresolved) = &self.unresolved else {
            return Ok(());
        };
        let mut real = HashMap::new();
        for (key, (fake_oid, fake_array)) in &unresolved.fakes {
            let (oid, array_oid) = lookup_type(conn, key).await?;
            cache
                .0
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key.clone(), (oid, array_oid));
            real.insert(*fake_oid, oid);
            real.insert(*fake_array, array_oid);
        }
        let real_or_same = |oid: u32| real.get(&oid).copied().unwrap_or(oid);
        let metadata: Vec<PgTypeMetadata> = self
            .binds
            .metadata
            .iter()
            .map(|m| {
                PgTypeMetadata::new(
                    real_or_same(m.oid().unwrap_or_default()),
                    real_or_same(m.array_oid().unwrap_or_default()),
                )
            })
            .collect();
        let mut binds = self.binds.binds.clone();
        for &(i, off) in &unresolved.embedded {
            let chunk = binds
                .get_mut(i)
                .and_then(|b| b.as_mut())
                .and_then(|b| b.get_mut(off..off + 4));
            let Some(chunk) = chunk else {
                return Err(Error::SerializationError(
                    "rwsplit: bad embedded OID location".into(),
                ));
            };
            let fake = u32::from_be_bytes((&*chunk).try_into().unwrap_or([0; 4]));
            let Some(oid) = real.get(&fake) else {
                return Err(Error::SerializationError(
                    "rwsplit: unknown embedded OID".into(),
                ));
            };
            chunk.copy_from_slice(&oid.to_be_bytes());
        }
        self.binds.metadata = metadata;
        self.binds.binds = binds;
        self.unresolved = None;
        Ok(())
    }
}

/// Run a rendered statement on `conn` with `run` (its load or execute), resolving
/// pending custom-type OIDs there first.
fn run_resolved<'c, T: 'c>(
    conn: &'c mut AsyncPgConnection,
    rendered: &'c mut RenderedPg,
    cache: &'c OidCache,
    run: for<'x, 'r> fn(&'x mut AsyncPgConnection, &'r RenderedPg) -> BoxFuture<'x, QueryResult<T>>,
) -> BoxFuture<'c, QueryResult<T>> {
    if rendered.unresolved.is_none() {
        return run(conn, rendered);
    }
    Box::pin(async move {
        rendered.resolve(conn, cache).await?;
        run(conn, rendered).await
    })
}

/// Run a rendered statement on `conn`, yielding rows that do not borrow it.
pub(crate) fn load<'c>(
    conn: &'c mut AsyncPgConnection,
    rendered: &'c mut RenderedPg,
    cache: &'c OidCache,
) -> BoxFuture<'c, QueryResult<RowStream<'static, PgRow>>> {
    let run = rendered.load;
    run_resolved(conn, rendered, cache, run)
}

/// Run a rendered statement on `conn`, yielding the affected row count.
pub(crate) fn execute<'c>(
    conn: &'c mut AsyncPgConnection,
    rendered: &'c mut RenderedPg,
    cache: &'c OidCache,
) -> BoxFuture<'c, QueryResult<usize>> {
    let run = rendered.execute;
    run_resolved(conn, rendered, cache, run)
}

/// The SQL text of a rendering (placeholders, never bind values).
pub(super) fn sql_of(rendered: &RenderedPg) -> &str {
    &rendered.sql
}
