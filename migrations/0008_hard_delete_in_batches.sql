-- Hard deletes erase in batches, outside the log_head lock (README "Deleting streams").
--
-- 0007's hard delete erased the stream's events in the transaction that holds the log_head lock,
-- so every append waited while a long stream was erased. Now that transaction only tombstones the
-- stream (no append can reach it afterwards, and stream reads already skip it); the server then
-- erases the events in short transactions of their own, and at start finishes any erase that a
-- stopped server left halfway (found through this index).
CREATE INDEX streams_tombstoned ON streams (stream) WHERE tombstoned;

-- Deletes a stream, serialised with every append through the log_head lock, so an expectation
-- is checked against exactly the state the delete replaces. Expected kinds as for appends.
--
-- Outcomes: 0 deleted (r_revision: the stream's last revision; r_erased is always 0 now: the
-- server erases afterwards), 2 wrong expected revision (r_revision: the visible revision, NULL if
-- none), 4 the stream is hard-deleted already, 5 no such stream (or, for a soft delete, already
-- deleted).
CREATE OR REPLACE FUNCTION highwater_delete_stream(
    target            text,
    expected_kind     smallint,
    expected_revision bigint,
    hard              boolean
) RETURNS TABLE (
    r_outcome  smallint,
    r_revision bigint,
    r_erased   bigint
) LANGUAGE plpgsql AS $fn$
DECLARE
    current_rev bigint;
    floor_rev   bigint;
    dead        boolean;
    visible_rev bigint;
BEGIN
    PERFORM FROM log_head l WHERE l.singleton FOR UPDATE;
    SELECT s.revision, coalesce(s.deleted_through, -1), s.tombstoned
      INTO current_rev, floor_rev, dead
      FROM streams s WHERE s.stream = target;
    r_erased := 0;
    visible_rev := CASE WHEN current_rev > floor_rev THEN current_rev END;
    IF dead THEN
        r_outcome := 4;
    ELSIF (expected_kind = 1 AND visible_rev IS NOT NULL)
       OR (expected_kind = 2 AND visible_rev IS NULL)
       OR (expected_kind = 3 AND visible_rev IS DISTINCT FROM expected_revision) THEN
        r_outcome := 2;
        r_revision := visible_rev;
    ELSIF current_rev IS NULL OR (visible_rev IS NULL AND NOT hard) THEN
        r_outcome := 5;
    ELSE
        UPDATE streams s
           SET deleted_through = s.revision, tombstoned = hard, updated_at = now()
         WHERE s.stream = target;
        r_outcome := 0;
        r_revision := current_rev;
    END IF;
    RETURN NEXT;
END;
$fn$;
