-- Stream deletion (README "Deleting streams").
--
-- Soft delete records the stream's last revision in deleted_through: reads of the stream start
-- after it, so the stream reads as not found until it is appended to again (its revisions
-- continue). Its events stay in the log and in $all. Hard delete marks the stream tombstoned (it
-- can never be written again) and the server erases its events.
ALTER TABLE streams
    ADD COLUMN deleted_through bigint,
    ADD COLUMN tombstoned boolean NOT NULL DEFAULT false;

-- The append function, as in 0003, plus deletion: expectations are checked against the stream's
-- visible revision (none after a soft delete), and a request to a tombstoned stream gets outcome
-- 4 (stream hard-deleted) and writes nothing.
CREATE OR REPLACE FUNCTION highwater_append(
    req_streams            text[],
    req_expected_kinds     smallint[],
    req_expected_revisions bigint[],
    req_counts             integer[],
    ev_ids                 uuid[],
    ev_types               text[],
    ev_data                bytea[],
    ev_content_types       text[],
    ev_metadata            jsonb[],
    expected_catalog       bigint
) RETURNS TABLE (
    r_request         integer,
    r_outcome         smallint,
    r_first_revision  bigint,
    r_last_revision   bigint,
    r_first_position  bigint,
    r_last_position   bigint,
    r_actual_revision bigint,
    r_conflicting_id  uuid,
    r_recorded_us     bigint
) LANGUAGE plpgsql
-- Every lookup is by key: cached plans are kept, and may only be index scans (see 0004).
SET enable_seqscan = off
AS $fn$
DECLARE
    head          bigint;
    start_head    bigint;
    catalog       bigint;
    recorded      timestamptz;
    recorded_us   bigint;
    -- Stream heads of the group's streams, kept current as requests are accepted.
    head_streams  text[];
    head_revs     bigint[];
    -- Per stream: the last soft-deleted revision (-1: none), and whether it is hard-deleted.
    head_floors   bigint[];
    head_dead     boolean[];
    -- Events already stored with one of the group's ids (and, when ids repeat within the group,
    -- the ones accepted so far), for idempotent replays.
    known_ids     uuid[];
    known_streams text[];
    known_revs    bigint[];
    known_pos     bigint[];
    repeats       boolean;
    -- Accepted events: index into ev_*, position, revision, stream.
    acc_index     integer[] := '{}';
    acc_pos       bigint[] := '{}';
    acc_rev       bigint[] := '{}';
    acc_stream    text[] := '{}';
    first_event   integer := 1;
    last_event    integer;
    req_stream    text;
    n             integer;
    k             integer;
    hits          integer;
    same_stream   boolean;
    in_order      boolean;
    offset_rev    bigint;
    conflict      uuid;
    kind          smallint;
    current_rev   bigint;
    visible_rev   bigint;
BEGIN
    -- Serialise with every other appender until commit. Each later statement takes a fresh
    -- snapshot, so it sees everything committed before the lock was granted.
    SELECT l.position, l.catalog_version INTO head, catalog FROM log_head l WHERE l.singleton FOR UPDATE;
    IF catalog <> expected_catalog THEN
        RAISE EXCEPTION 'projection catalog changed: expected %, now %', expected_catalog, catalog
            USING ERRCODE = 'HW001';
    END IF;
    start_head := head;
    recorded := clock_timestamp();
    recorded_us := (extract(epoch FROM recorded) * 1000000)::bigint;

    SELECT coalesce(array_agg(s.stream), '{}'), coalesce(array_agg(s.revision), '{}'),
           coalesce(array_agg(coalesce(s.deleted_through, -1)), '{}'),
           coalesce(array_agg(s.tombstoned), '{}')
      INTO head_streams, head_revs, head_floors, head_dead
      FROM streams s WHERE s.stream = ANY (req_streams);
    SELECT coalesce(array_agg(e.id), '{}'), coalesce(array_agg(e.stream), '{}'),
           coalesce(array_agg(e.revision), '{}'), coalesce(array_agg(e.position), '{}')
      INTO known_ids, known_streams, known_revs, known_pos
      FROM events e WHERE e.id = ANY (ev_ids);
    SELECT count(DISTINCT u.id) <> count(*) INTO repeats FROM unnest(ev_ids) AS u(id);

    FOR i IN 1 .. coalesce(array_length(req_streams, 1), 0) LOOP
        req_stream := req_streams[i];
        n := req_counts[i];
        last_event := first_event + n - 1;
        r_request := i;
        r_outcome := NULL;
        r_first_revision := NULL; r_last_revision := NULL;
        r_first_position := NULL; r_last_position := NULL;
        r_actual_revision := NULL; r_conflicting_id := NULL; r_recorded_us := NULL;

        -- Idempotency: are any of these ids stored (or accepted earlier in this group)?
        hits := 0; same_stream := true; in_order := true; conflict := NULL;
        IF cardinality(known_ids) > 0 THEN
            FOR j IN first_event .. last_event LOOP
                k := array_position(known_ids, ev_ids[j]);
                IF k IS NOT NULL THEN
                    hits := hits + 1;
                    conflict := coalesce(conflict, ev_ids[j]);
                    same_stream := same_stream AND known_streams[k] = req_stream;
                    IF hits = 1 THEN
                        offset_rev := known_revs[k] - (j - first_event);
                        r_first_revision := known_revs[k];
                        r_first_position := known_pos[k];
                    ELSIF known_revs[k] <> offset_rev + (j - first_event) THEN
                        in_order := false;
                    END IF;
                    r_last_revision := known_revs[k];
                    r_last_position := known_pos[k];
                END IF;
            END LOOP;
        END IF;

        IF hits > 0 THEN
            IF hits = n AND same_stream AND in_order THEN
                r_outcome := 1;
            ELSE
                r_outcome := 3;
                r_conflicting_id := conflict;
                r_first_revision := NULL; r_last_revision := NULL;
                r_first_position := NULL; r_last_position := NULL;
            END IF;
        ELSE
            k := array_position(head_streams, req_stream);
            current_rev := CASE WHEN k IS NULL THEN NULL ELSE head_revs[k] END;
            -- A soft-deleted stream with nothing appended since reads as no stream; its
            -- revisions still continue from the deleted ones.
            visible_rev := CASE WHEN current_rev > head_floors[k] THEN current_rev END;
            kind := req_expected_kinds[i];
            IF k IS NOT NULL AND head_dead[k] THEN
                r_outcome := 4;
            ELSIF (kind = 1 AND visible_rev IS NOT NULL)
               OR (kind = 2 AND visible_rev IS NULL)
               OR (kind = 3 AND visible_rev IS DISTINCT FROM req_expected_revisions[i]) THEN
                r_outcome := 2;
                r_actual_revision := visible_rev;
            ELSE
                r_outcome := 0;
                r_recorded_us := recorded_us;
                r_first_revision := coalesce(current_rev, -1) + 1;
                r_last_revision := coalesce(current_rev, -1) + n;
                r_first_position := head + 1;
                r_last_position := head + n;
                FOR j IN first_event .. last_event LOOP
                    acc_index := acc_index || j;
                    acc_pos := acc_pos || (head + 1 + j - first_event);
                    acc_rev := acc_rev || (r_first_revision + j - first_event);
                    acc_stream := acc_stream || req_stream;
                    IF repeats THEN
                        known_ids := known_ids || ev_ids[j];
                        known_streams := known_streams || req_stream;
                        known_revs := known_revs || (r_first_revision + j - first_event);
                        known_pos := known_pos || (head + 1 + j - first_event);
                    END IF;
                END LOOP;
                head := head + n;
                IF k IS NULL THEN
                    head_streams := head_streams || req_stream;
                    head_revs := head_revs || r_last_revision;
                    head_floors := head_floors || -1::bigint;
                    head_dead := head_dead || false;
                ELSE
                    head_revs[k] := r_last_revision;
                END IF;
            END IF;
        END IF;

        RETURN NEXT;
        first_event := last_event + 1;
    END LOOP;

    IF head > start_head THEN
        INSERT INTO events (position, stream, revision, id, type, data, content_type, metadata,
                            recorded_at)
        SELECT a.pos, a.stream, a.rev, u.id, u.type, u.data, u.content_type, u.metadata, recorded
          FROM unnest(acc_index, acc_pos, acc_rev, acc_stream) AS a(idx, pos, rev, stream)
          JOIN unnest(ev_ids, ev_types, ev_data, ev_content_types, ev_metadata)
               WITH ORDINALITY AS u(id, type, data, content_type, metadata, ord)
            ON u.ord = a.idx
         ORDER BY a.pos;

        INSERT INTO streams AS s (stream, revision, position)
        SELECT DISTINCT ON (a.stream) a.stream, a.rev, a.pos
          FROM unnest(acc_stream, acc_rev, acc_pos) AS a(stream, rev, pos)
         ORDER BY a.stream, a.pos DESC
        ON CONFLICT (stream) DO UPDATE
           SET revision = EXCLUDED.revision, position = EXCLUDED.position, updated_at = now();

        UPDATE log_head SET position = head WHERE singleton;
        -- Delivered at commit, in commit order: subscribers wake up and read past their position.
        PERFORM pg_notify('highwater_appended', head::text);
    END IF;
END;
$fn$;


CREATE INDEX streams_tombstoned ON streams (stream) WHERE tombstoned;

-- Deletes a stream, serialised with every append through the log_head lock, so an expectation
-- is checked against exactly the state the delete replaces. Expected kinds as for appends.
--
-- A hard delete only tombstones the stream here: the server then erases its events in short
-- transactions of their own, so appends never wait for a long stream's erase, and a server
-- starting on the database finishes an erase a stopped one left halfway (found through
-- streams_tombstoned).
--
-- Outcomes: 0 deleted (r_revision: the stream's last revision; r_erased is 0: the server
-- erases afterwards), 2 wrong expected revision (r_revision: the visible revision, NULL if
-- none), 4 the stream is hard-deleted already, 5 no such stream (or, for a soft delete, already
-- deleted).
CREATE FUNCTION highwater_delete_stream(
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
