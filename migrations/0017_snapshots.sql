-- Snapshots: a stream's state at a revision, saved by clients so that an aggregate loads from
-- its latest snapshot and the events after it (README "Snapshots", docs/ARCHITECTURE.md,
-- "Snapshots"). They are not events: ReadAll and subscriptions never see them.

CREATE TABLE snapshots (
    stream       text        NOT NULL,
    -- The last revision of the stream the state reflects.
    revision     bigint      NOT NULL CHECK (revision >= 0),
    type         text        NOT NULL,
    data         bytea       NOT NULL,
    content_type text        NOT NULL,
    saved_at     timestamptz NOT NULL,
    PRIMARY KEY (stream, revision)
);

-- Saves and deletions of one stream's snapshots take this lock, in that order after anything
-- else they hold: a delete holds log_head when it takes it, a save holds nothing else, so a
-- save never waits with log_head held by anyone on its behalf and appends never wait for saves.
CREATE FUNCTION highwater_snapshot_lock(target text) RETURNS void
LANGUAGE sql AS $fn$
    SELECT pg_advisory_xact_lock(hashtext('highwater snapshots'), hashtext(target));
$fn$;

-- A stream's delete (soft or hard) deletes its snapshots in the same transaction. The trigger
-- fires only on updates that set deleted_through, which appends never do.
CREATE FUNCTION highwater_delete_snapshots() RETURNS trigger
LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM highwater_snapshot_lock(NEW.stream);
    DELETE FROM snapshots s WHERE s.stream = NEW.stream AND s.revision <= NEW.deleted_through;
    RETURN NULL;
END;
$fn$;

CREATE TRIGGER streams_delete_snapshots
    AFTER UPDATE OF deleted_through ON streams
    FOR EACH ROW
    WHEN (NEW.deleted_through IS DISTINCT FROM OLD.deleted_through)
    EXECUTE FUNCTION highwater_delete_snapshots();

-- Saves a snapshot (replacing one at the same revision: a resend), then keeps the stream's
-- `keep` latest.
--
-- Outcomes: 0 saved (r_revision: the stream's last revision), 4 the stream is hard-deleted,
-- 5 no such stream (or soft-deleted with nothing appended since), 6 the revision is beyond the
-- stream's last (r_revision) or at or below a soft delete (r_revision: the last revision, and
-- r_floor the deleted one).
CREATE FUNCTION highwater_save_snapshot(
    target       text,
    at_revision  bigint,
    snap_type    text,
    snap_data    bytea,
    snap_content text,
    keep         integer
) RETURNS TABLE (
    r_outcome  smallint,
    r_revision bigint,
    r_floor    bigint,
    r_saved_us bigint
) LANGUAGE plpgsql AS $fn$
DECLARE
    current_rev bigint;
    floor_rev   bigint;
    dead        boolean;
    saved       timestamptz;
BEGIN
    PERFORM highwater_snapshot_lock(target);
    -- Read after the lock: a delete that committed before it is seen, one after it waits.
    SELECT s.revision, s.deleted_through, s.tombstoned INTO current_rev, floor_rev, dead
      FROM streams s WHERE s.stream = target;
    r_revision := current_rev;
    r_floor := floor_rev;
    IF dead THEN
        r_outcome := 4;
    ELSIF current_rev IS NULL OR current_rev <= coalesce(floor_rev, -1) THEN
        r_outcome := 5;
    ELSIF at_revision > current_rev OR at_revision <= coalesce(floor_rev, -1) THEN
        r_outcome := 6;
    ELSE
        saved := clock_timestamp();
        INSERT INTO snapshots AS s (stream, revision, type, data, content_type, saved_at)
        VALUES (target, at_revision, snap_type, snap_data, snap_content, saved)
        ON CONFLICT (stream, revision) DO UPDATE
           SET type = EXCLUDED.type, data = EXCLUDED.data, content_type = EXCLUDED.content_type,
               saved_at = EXCLUDED.saved_at;
        DELETE FROM snapshots s
         WHERE s.stream = target
           AND s.revision < (SELECT k.revision FROM snapshots k WHERE k.stream = target
                              ORDER BY k.revision DESC OFFSET keep - 1 LIMIT 1);
        r_outcome := 0;
        r_saved_us := (extract(epoch FROM saved) * 1000000)::bigint;
    END IF;
    RETURN NEXT;
END;
$fn$;

-- Only the server (their owner) calls these; projection handlers' roles cannot.
REVOKE ALL ON FUNCTION highwater_snapshot_lock(text) FROM PUBLIC;
REVOKE ALL ON FUNCTION highwater_delete_snapshots() FROM PUBLIC;
REVOKE ALL ON FUNCTION highwater_save_snapshot(text, bigint, text, bytea, text, integer) FROM PUBLIC;
