//! The classifier allocates nothing for a plain read or a typical write, and
//! `fingerprint_hash` allocates nothing at all: a counting global allocator proves it.

#[path = "data/classify/corpus.rs"]
mod corpus;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use diesel_rwsplit::classify::{Classifier, Dialect, Verdict};

struct Counting;

thread_local! {
    // Counted per thread, so the harness's other threads do not disturb the count.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: thread-locals may be gone while a thread shuts down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: delegates every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by `f` on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|on| on.set(true));
    f();
    COUNTING.with(|on| on.set(false));
    ALLOCATIONS.with(Cell::get)
}

const TYPICAL_READS: &[&str] = &[
    r#"SELECT "users"."id", "users"."name" FROM "users" WHERE ("users"."id" = $1) LIMIT $2"#,
    r#"SELECT COUNT(*) FROM "users" WHERE ("users"."active" = $1)"#,
    r#"SELECT "users"."id", "posts"."title" FROM ("users" INNER JOIN "posts" ON ("posts"."user_id" = "users"."id")) WHERE ("posts"."published" = $1) ORDER BY "users"."id" LIMIT $2 OFFSET $3"#,
    r#"SELECT "users"."id" FROM "users" WHERE ("users"."id" = ANY($1))"#,
    "SELECT * FROM users WHERE name = 'bob' AND created_at > now() - interval '1 day'",
    "WITH recent AS (SELECT * FROM posts) SELECT count(*) FROM recent",
    "/* route=/users */ SELECT id FROM users WHERE email ILIKE $1",
    "SELECT $$ DELETE $$, E'x\\'y', \"update\" FROM t -- FOR UPDATE",
];

const TYPICAL_WRITES: &[&str] = &[
    r#"INSERT INTO "users" ("name") VALUES ($1) RETURNING "users"."id", "users"."name""#,
    r#"UPDATE "users" SET "name" = $1 WHERE ("users"."id" = $2)"#,
    r#"DELETE FROM "users" WHERE ("users"."id" = $1)"#,
    r#"INSERT INTO "users" ("id", "name") VALUES ($1, $2) ON CONFLICT ("id") DO UPDATE SET "name" = excluded."name""#,
    "SELECT * FROM jobs FOR UPDATE SKIP LOCKED",
    "SELECT nextval('s')",
    "BEGIN",
];

const MYSQL_READS: &[&str] = &[
    "SELECT `users`.`id`, `users`.`name` FROM `users` WHERE (`users`.`id` = ?) LIMIT ?",
    "SELECT COUNT(*) FROM `users`",
];

#[test]
fn classify_allocates_nothing_for_plain_reads_and_typical_writes() {
    let pg = Classifier::new(Dialect::Postgres);
    let my = Classifier::new(Dialect::Mysql);
    let run = || {
        for sql in TYPICAL_READS {
            assert_eq!(pg.classify(sql), Verdict::Replica, "{sql}");
        }
        for sql in TYPICAL_WRITES {
            assert_ne!(pg.classify(sql), Verdict::Replica, "{sql}");
        }
        for sql in MYSQL_READS {
            assert_eq!(my.classify(sql), Verdict::Replica, "{sql}");
        }
    };
    run(); // warm-up
    assert_eq!(allocations(run), 0);
}

#[test]
fn classify_allocates_nothing_over_the_whole_corpus_without_rules() {
    // The corpus classifiers carry routing rules (regex); judge with plain ones.
    let corpora = [
        corpus::load(Dialect::Postgres),
        corpus::load(Dialect::Mysql),
    ];
    for corpus in &corpora {
        let plain = Classifier::new(corpus.dialect);
        let run = || {
            for entry in &corpus.entries {
                std::hint::black_box(plain.classify(&entry.sql));
            }
        };
        run();
        assert_eq!(allocations(run), 0, "{}", corpus.path);
    }
}

#[test]
fn fingerprint_hash_allocates_nothing() {
    let pg = Classifier::new(Dialect::Postgres);
    let run = || {
        for sql in TYPICAL_READS.iter().chain(TYPICAL_WRITES) {
            std::hint::black_box(pg.fingerprint_hash(sql));
        }
    };
    run();
    assert_eq!(allocations(run), 0);
}

#[test]
fn user_function_lists_allocate_nothing() {
    let c = Classifier::builder(Dialect::Postgres)
        .write_function("app.touch")
        .read_only_function("currval")
        .build()
        .expect("valid");
    let run = || {
        for sql in TYPICAL_READS
            .iter()
            .chain(["SELECT touch(1)", "SELECT currval('s')"].iter())
        {
            std::hint::black_box(c.classify(sql));
        }
    };
    run();
    assert_eq!(allocations(run), 0);
}

#[test]
fn the_counter_counts() {
    let pg = Classifier::new(Dialect::Postgres);
    assert!(allocations(|| drop(std::hint::black_box(pg.fingerprint("SELECT 1")))) > 0);
}
