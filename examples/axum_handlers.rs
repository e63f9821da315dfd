//! Per-handler adoption with axum: each handler says by its extractor where its
//! database work goes, and the interlock catches a "read-only" handler that writes.
//!
//! ```text
//! cargo run --example axum_handlers --features axum
//! ```
//!
//! Boots a throwaway `LocalCluster` (a primary + 2 streaming replicas, about 1-2 s)
//! unless `PRIMARY_URL` and `REPLICA_URLS` (comma-separated) point at an existing
//! primary and replicas, applies the example schema, and serves on 127.0.0.1 (port
//! from `PORT`, else an ephemeral one; the address is printed):
//!
//! | route | handler | connection |
//! |-------|---------|------------|
//! | `GET /users` | the latest 100 users, one per line | [`ReplicaConn`] |
//! | `GET /users/{id}` | one user | [`ReplicaConn`] |
//! | `POST /users` | create a user from a plain-text name or a form `name=..&email=..`; `201` with the new row | [`PrimaryConn`] |
//! | `GET /users/{id}/profile` | a "read-only" handler that also records a `profile_view` event: the write is caught by the interlock (flip to the primary, counted) | [`ReplicaConn`] |
//! | `GET /metrics` | the pool's counters, Prometheus text | - |
//! | `GET /audit` | the statements that tripped the interlock | - |
//!
//! Every database response carries `x-rwsplit-target: replica|primary`: where the
//! handler's connection ended up.
//!
//! ```text
//! curl -d 'name=ada&email=ada@example.com' localhost:$PORT/users
//! curl localhost:$PORT/users/1
//! curl localhost:$PORT/users/1/profile      # flips: counted
//! curl localhost:$PORT/metrics | grep switches_total
//! curl localhost:$PORT/audit
//! ```
//!
//! Read-your-writes: a replica replays a write a fraction of a millisecond after
//! the primary commits it, so a `GET` issued right after a `POST` may not see the
//! new row yet. `POST /users` therefore answers with the created row (read on the
//! primary with `RETURNING`), which is what a client should use.
//!
//! The router is built by [`app`], which the integration test `tests/axum_example.rs`
//! includes and drives over HTTP.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::Path;
use axum::http::{header, HeaderMap, HeaderName, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error as DieselError};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use diesel_rwsplit::axum::{audit, metrics, PrimaryConn, ReplicaConn};
use diesel_rwsplit::testing::run_example_migrations;
use diesel_rwsplit::testing::schema::{events, orders, users};
use diesel_rwsplit::{interlock_refusal, InterlockMode, Route, SwitchablePool, Target};

/// Header telling where the handler's connection ended up.
pub const TARGET_HEADER: &str = "x-rwsplit-target";

/// A row of `users`.
#[derive(Debug, Queryable, Selectable)]
#[diesel(table_name = users)]
pub struct User {
    /// Primary key.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// Unique e-mail address.
    pub email: String,
}

impl User {
    /// `id<TAB>name<TAB>email`, the line format of every user response.
    pub fn line(&self) -> String {
        format!("{}\t{}\t{}\n", self.id, self.name, self.email)
    }
}

/// The application's routes over `pool`.
pub fn app(pool: SwitchablePool) -> Router {
    Router::new()
        .route("/users", get(list_users).post(create_user))
        .route("/users/{id}", get(show_user))
        .route("/users/{id}/profile", get(show_profile))
        .route("/metrics", get(metrics))
        .route("/audit", get(audit))
        .with_state(pool)
}

/// `GET /users`: the latest 100 users. Read-only: a replica.
async fn list_users(mut conn: ReplicaConn) -> Result<Response, AppError> {
    let users: Vec<User> = users::table
        .select(User::as_select())
        .order(users::id.desc())
        .limit(100)
        .load(&mut conn)
        .await?;
    let body: String = users.iter().map(User::line).collect();
    Ok(text(StatusCode::OK, conn.target(), body))
}

/// `GET /users/{id}`. Read-only: a replica.
async fn show_user(Path(id): Path<i64>, mut conn: ReplicaConn) -> Result<Response, AppError> {
    let user: User = users::table
        .find(id)
        .select(User::as_select())
        .first(&mut conn)
        .await?;
    Ok(text(StatusCode::OK, conn.target(), user.line()))
}

/// `POST /users`: a writing handler, so it asks for the primary up front.
///
/// Body: a form `name=..&email=..` (`application/x-www-form-urlencoded`), or a
/// plain-text name (an e-mail address is made up). Answers `201 Created` with the
/// new row and a `Location` header.
async fn create_user(
    mut conn: PrimaryConn,
    headers: HeaderMap,
    body: String,
) -> Result<Response, AppError> {
    let is_form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    let (name, email) = if is_form {
        let form = parse_form(&body);
        let field = |key: &str| form.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        (field("name").unwrap_or_default(), field("email"))
    } else {
        (body.trim().to_owned(), None)
    };
    if name.trim().is_empty() {
        return Err(AppError::BadRequest("a user needs a name"));
    }
    let email = email.unwrap_or_else(|| made_up_email(&name));
    let user: User = diesel::insert_into(users::table)
        .values((users::name.eq(name.trim()), users::email.eq(email.trim())))
        .returning(User::as_returning())
        .get_result(&mut conn)
        .await?;
    let mut response = text(StatusCode::CREATED, conn.target(), user.line());
    if let Ok(location) = format!("/users/{}", user.id).parse() {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// `GET /users/{id}/profile`: written as a read-only handler (a replica), but it
/// also records a `profile_view` event, which is a write.
///
/// The interlock catches it: in `Switch` mode the connection flips to the primary
/// at the `INSERT` (the reads before it ran on the replica), the flip is counted
/// under `write_statement` with the statement's fingerprint, and it shows in
/// `/metrics` and `/audit`. In `Raise` mode the `INSERT` is refused and the
/// handler answers `500`.
async fn show_profile(Path(id): Path<i64>, mut conn: ReplicaConn) -> Result<Response, AppError> {
    let user: User = users::table
        .find(id)
        .select(User::as_select())
        .first(&mut conn)
        .await?;
    let order_count: i64 = orders::table
        .filter(orders::user_id.eq(id))
        .count()
        .get_result(&mut conn)
        .await?;
    // The surprise: an analytics write hidden in a read path.
    diesel::insert_into(events::table)
        .values((
            events::kind.eq("profile_view"),
            events::payload.eq(id.to_string()),
        ))
        .execute(&mut conn)
        .await?;
    let body = format!(
        "{}\t{}\t{}\t{order_count} orders\n",
        user.id, user.name, user.email
    );
    Ok(text(StatusCode::OK, conn.target(), body))
}

fn text(status: StatusCode, target: Target, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (HeaderName::from_static(TARGET_HEADER), target.as_str()),
        ],
        body,
    )
        .into_response()
}

/// A handler's failure as a response: no SQL, bind value or node in the body.
#[derive(Debug)]
pub enum AppError {
    /// `400`, with a reason.
    BadRequest(&'static str),
    /// A database error.
    Database(DieselError),
}

impl From<DieselError> for AppError {
    fn from(error: DieselError) -> Self {
        AppError::Database(error)
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            AppError::BadRequest(reason) => (StatusCode::BAD_REQUEST, *reason),
            AppError::Database(DieselError::NotFound) => (StatusCode::NOT_FOUND, "not found"),
            AppError::Database(DieselError::DatabaseError(
                DatabaseErrorKind::UniqueViolation,
                _,
            )) => (StatusCode::CONFLICT, "already exists"),
            AppError::Database(e) if interlock_refusal(e).is_some() => {
                eprintln!("interlock refused a write in a read-only handler: {e}");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "a read-only handler tried to write",
                )
            }
            AppError::Database(e) => {
                eprintln!("database error: {e}");
                (StatusCode::INTERNAL_SERVER_ERROR, "database error")
            }
        };
        (status, format!("{message}\n")).into_response()
    }
}

/// `application/x-www-form-urlencoded` pairs (`+` is a space, `%XX` a byte).
pub fn parse_form(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(key), percent_decode(value))
        })
        .collect()
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|hex| u8::from_str_radix(hex, 16).ok())
                {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            byte => out.push(byte),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn made_up_email(name: &str) -> String {
    let slug: String = name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .map(|c| c.to_ascii_lowercase())
        .collect();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!(
        "{}-{nanos}@example.com",
        if slug.is_empty() { "user" } else { &slug }
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Keep the cluster alive for the whole run; dropping it stops the servers.
    let urls = diesel_rwsplit::testing::ClusterUrls::from_env_or_start(2).await?;
    println!("{}", urls.describe());
    let (_cluster, primary_url, replica_urls) = urls.into_parts();
    run_example_migrations(&primary_url).await?;

    let pool = SwitchablePool::<AsyncPgConnection>::builder()
        .primary(primary_url)
        .replicas(replica_urls)
        .interlock(InterlockMode::Switch)
        .default_route(Route::Replica)
        .build()
        .await?;

    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port number"))?,
        Err(_) => 0,
    };
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr} (Ctrl-C stops the server and the cluster)");
    println!("  curl -d 'name=ada&email=ada@example.com' http://{addr}/users");
    println!("  curl http://{addr}/users/1/profile; curl http://{addr}/audit");
    axum::serve(listener, app(pool))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
