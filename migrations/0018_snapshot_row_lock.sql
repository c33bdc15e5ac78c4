-- The snapshot lock of a stream (docs/ARCHITECTURE.md, "Lock order", level 5) becomes a row lock
-- on a table only the server may write, instead of 0017's transaction-level advisory lock:
-- advisory locks are open to every role, so a projection's SQL could take a stream's snapshot
-- lock and hold it for its whole statement timeout, and a delete of that stream would then wait
-- for it with log_head held (found by review). Saves and deletes call the same function, so
-- 0017's save function and trigger are unchanged.

-- One row per stream that has had a snapshot saved or has been deleted: the row its saves and
-- deletes lock. It holds no data; it is never deleted, and a stream's row is written only by its
-- saves and deletes.
CREATE TABLE snapshot_locks (
    stream text PRIMARY KEY
);

REVOKE ALL ON snapshot_locks FROM PUBLIC;

-- Takes the stream's snapshot lock until the end of the transaction: the upsert locks the row if
-- it exists, and waits for a concurrent first insert of it if it does not.
CREATE OR REPLACE FUNCTION highwater_snapshot_lock(target text) RETURNS void
LANGUAGE sql AS $fn$
    INSERT INTO snapshot_locks AS l (stream) VALUES (target)
    ON CONFLICT (stream) DO UPDATE SET stream = EXCLUDED.stream;
$fn$;
