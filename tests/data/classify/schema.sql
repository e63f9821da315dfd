-- Objects referenced by the replica-labelled statements of postgres.tsv, for the standby
-- check (tests/classify_standby.rs). Idempotent; plain SQL runnable as one simple query.
-- Everything lives in the schema rwsplit_corpus; the test puts it first on search_path.
CREATE SCHEMA IF NOT EXISTS rwsplit_corpus;
SET search_path = rwsplit_corpus, public;

CREATE TABLE IF NOT EXISTS users (
    id bigserial PRIMARY KEY,
    name text NOT NULL DEFAULT '',
    email text,
    created_at timestamptz NOT NULL DEFAULT now(),
    active boolean NOT NULL DEFAULT true,
    settings jsonb NOT NULL DEFAULT '{}',
    tags text[] NOT NULL DEFAULT '{}',
    age int
);
CREATE TABLE IF NOT EXISTS posts (
    id bigserial PRIMARY KEY,
    user_id bigint,
    title text,
    body text,
    published boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    views int NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS comments (
    id bigserial PRIMARY KEY,
    post_id bigint,
    user_id bigint,
    body text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS jobs (
    id bigserial PRIMARY KEY,
    queue text,
    payload jsonb,
    status text,
    run_at timestamptz NOT NULL DEFAULT now(),
    attempts int NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS orders (
    id bigserial PRIMARY KEY,
    user_id bigint,
    total numeric(12, 2),
    status text,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS deleted_items (id bigserial PRIMARY KEY, item_id bigint, deleted_at timestamptz);
CREATE TABLE IF NOT EXISTS update_log (id bigserial PRIMARY KEY, note text, insert_count int);
CREATE TABLE IF NOT EXISTS "update" ("update" text, "delete" text, "select" text, "for" text);
CREATE TABLE IF NOT EXISTS events (id bigserial PRIMARY KEY, kind text, data jsonb, at timestamptz DEFAULT now());
CREATE TABLE IF NOT EXISTS accounts (id bigserial PRIMARY KEY, owner text, balance numeric);
CREATE TABLE IF NOT EXISTS "MixedCase" ("Id" int);
CREATE SEQUENCE IF NOT EXISTS order_seq;

CREATE OR REPLACE VIEW active_users AS SELECT id, name FROM users WHERE active;
CREATE MATERIALIZED VIEW IF NOT EXISTS post_counts AS
    SELECT user_id, count(*) AS n FROM posts GROUP BY user_id;

CREATE OR REPLACE FUNCTION my_func(int) RETURNS int
    LANGUAGE sql IMMUTABLE AS $$ SELECT $1 + 1 $$;
CREATE OR REPLACE FUNCTION user_display_name(bigint) RETURNS text
    LANGUAGE sql STABLE AS $$ SELECT name FROM rwsplit_corpus.users WHERE id = $1 $$;
-- A quoted, upper-case name: not the built-in nextval.
CREATE OR REPLACE FUNCTION "NEXTVAL"(text) RETURNS text
    LANGUAGE sql IMMUTABLE AS $$ SELECT $1 $$;
-- Declared read-only in the corpus (`#! read_only_function`) though it looks like an advisory lock.
CREATE OR REPLACE FUNCTION pg_try_advisory_lock_shared_ro(int) RETURNS boolean
    LANGUAGE sql IMMUTABLE AS $$ SELECT true $$;

INSERT INTO users (id, name, email) VALUES (1, 'alice', 'alice@example.com'), (2, 'bob', NULL)
    ON CONFLICT (id) DO NOTHING;
INSERT INTO posts (id, user_id, title, published) VALUES (1, 1, 'hello', true)
    ON CONFLICT (id) DO NOTHING;
REFRESH MATERIALIZED VIEW post_counts;
