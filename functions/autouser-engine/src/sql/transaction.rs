//! A transaction's frame: `BEGIN`, `COMMIT`, the rollbacks and the drop's savepoint; the
//! user's advisory lock ([`LOCK_USER`], keyed by [`user_lock_key`]); and, on a read replica's
//! writer, the WAL position after a `COMMIT` ([`COMMIT_LSN`]).

use autouser_policy::stable_hash;

pub const BEGIN: &str = "BEGIN ISOLATION LEVEL READ COMMITTED";
pub const COMMIT: &str = "COMMIT";
pub const ROLLBACK: &str = "ROLLBACK";
pub const SAVEPOINT_DROP: &str = "SAVEPOINT autouser_drop";
pub const ROLLBACK_TO_DROP: &str = "ROLLBACK TO SAVEPOINT autouser_drop";

/// Serialises provisioning of one database user across concurrent calls on one database.
/// Advisory locks are per database; [`Step::Guard`] covers calls through other databases.
/// `$1` is [`user_lock_key`].
///
/// Any role may take an advisory lock, and the key is no secret (anyone can compute it, and
/// `pg_locks` shows it while we hold it). So the call waits only for another admin session
/// (ours: the same login role): when someone else holds the key, it goes on without it, and
/// the user's `pg_authid` row (the first write of every call, then [`Step::Guard`]) serialises
/// it, as it does calls through other databases. A user holding its own key, or another
/// user's, holds up no start or end. The answer says which: `taken`, `waited` or `skipped`.
///
/// [`Step::Guard`]: autouser_policy::plan::Step::Guard
pub const LOCK_USER: &str = "\
SELECT CASE
  WHEN pg_catalog.pg_try_advisory_xact_lock($1::bigint) THEN 'taken'::text
  WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_locks l
                 JOIN pg_catalog.pg_stat_activity a ON a.pid = l.pid
                WHERE l.locktype = 'advisory'::text AND l.granted AND l.objsubid = 1::smallint
                  AND l.classid = (($1::bigint >> 32) & 4294967295::bigint)::oid
                  AND l.objid = ($1::bigint & 4294967295::bigint)::oid
                  AND l.database = (SELECT d.oid FROM pg_catalog.pg_database d
                                     WHERE d.datname = pg_catalog.current_database())
                  AND a.usename = session_user)
    THEN (SELECT 'waited'::text FROM pg_catalog.pg_advisory_xact_lock($1::bigint) AS waited(v))
  ELSE 'skipped'::text
END AS user_lock";

/// The advisory lock key of a database user: FNV-1a over a fixed namespace and the name.
/// Stable across releases, so the CLI, the Lambda functions and the reaper agree on it.
pub fn user_lock_key(db_user: &str) -> i64 {
    stable_hash::fnv1a_64(b"pg-autouser\0".iter().chain(db_user.as_bytes()).copied()) as i64
}

/// The name of [`COMMIT_LSN`]'s column, by which its answer is found among a message's.
pub const COMMIT_LSN_COLUMN: &str = "autouser_commit_lsn";

/// Sent after a `COMMIT`, in the same message, on a read replica's writer: the WAL position
/// once the commit is written, which the replica must replay before the session's login finds
/// what the commit did. It runs in a transaction of its own, after the `COMMIT` (of the block,
/// or of the message's implicit transaction), and not at all when a statement before it failed.
///
/// The flush position: a synchronous commit (`synchronous_commit` other than `off`, the
/// default) answers once its record is flushed, and a replica receives only flushed WAL. The
/// insert position may be past a record of another process that is not flushed yet: on an
/// idle PostgreSQL 18, a 56-byte record stayed unflushed for seconds, and the replica, which
/// had replayed everything flushed, seemed behind.
///
/// With `synchronous_commit = off` the commit answers before its WAL is flushed, so the insert
/// position is taken instead (the WAL writer flushes an asynchronous commit within
/// `3 × wal_writer_delay`). Where the last record ended exactly at a page boundary, the insert
/// position is past the next page's header (24 bytes, or 40 at a segment's start), where no
/// record ends until another is written; a replica replays only to the boundary, and on an idle
/// server would never seem to catch up. So the header is taken off.
pub const COMMIT_LSN: &str = "\
SELECT (CASE WHEN pg_catalog.current_setting('synchronous_commit') <> 'off'
             THEN pg_catalog.pg_current_wal_flush_lsn()
             ELSE w.lsn - CASE WHEN (w.lsn - '0/0'::pg_catalog.pg_lsn) % w.segment = 40 THEN 40
                               WHEN (w.lsn - '0/0'::pg_catalog.pg_lsn) % w.page = 24 THEN 24
                               ELSE 0 END
        END)::pg_catalog.text AS autouser_commit_lsn
  FROM (SELECT pg_catalog.pg_current_wal_insert_lsn() AS lsn,
               pg_catalog.pg_size_bytes(pg_catalog.current_setting('wal_segment_size'))::numeric AS segment,
               pg_catalog.current_setting('wal_block_size')::numeric AS page) AS w";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_keys_are_stable_and_distinct() {
        assert_eq!(user_lock_key("alice"), 4_826_995_200_119_770_623);
        assert_ne!(user_lock_key("alice"), user_lock_key("bob"));
    }
}
