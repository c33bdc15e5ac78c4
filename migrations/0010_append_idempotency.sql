-- The append function, as in 0007, with the idempotency check as one set operation.
--
-- Before, every event of the group looked its id up in an array of the ids already stored
-- (array_position: quadratic), so resending a large append held log_head for seconds while
-- every appender of every server waited. Now one join, by the unique index on events.id,
-- gives each event of the group the stored event with its id (arrays aligned with ev_*), and a
-- window over the group gives each event the first event of the group with the same id; the
-- per-request loop reads those by index. Time under log_head is linear in the group's events
-- (which the server bounds: docs/ARCHITECTURE.md, "Bounds").
--
-- A replay is recognised only when the stored events are the same events: same stream, same
-- order, and the same type, data, content type and metadata. An id stored with a different
-- payload is outcome 3 (id used by a different event, ALREADY_EXISTS), as the API documents;
-- before, the new payload was dropped and the original answer returned.
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
    total         integer := coalesce(array_length(ev_ids, 1), 0);
    -- Stream heads of the group's streams, kept current as requests are accepted.
    head_streams  text[];
    head_revs     bigint[];
    -- Per stream: the last soft-deleted revision (-1: none), and whether it is hard-deleted.
    head_floors   bigint[];
    head_dead     boolean[];
    -- Aligned with ev_*: the stored event with the same id (NULL: none) and whether it is the
    -- same event; the first event of the group with the same id, and whether this one has the
    -- same payload as that one.
    stored_streams text[];
    stored_revs    bigint[];
    stored_pos     bigint[];
    stored_same    boolean[];
    first_of_id    bigint[];
    same_as_first  boolean[];
    any_stored     boolean;
    repeats        boolean;
    -- Aligned with ev_*, when ids repeat within the group: where each accepted event went.
    taken_streams  text[];
    taken_revs     bigint[];
    taken_pos      bigint[];
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
    f             integer;
    hits          integer;
    same_events   boolean;
    in_order      boolean;
    offset_rev    bigint;
    -- The first event of a request whose id is taken, and the first taken by a different
    -- event (another stream or another payload): the id a conflict names.
    first_hit     uuid;
    conflict      uuid;
    hit_stream    text;
    hit_rev       bigint;
    hit_pos       bigint;
    hit_same      boolean;
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

    SELECT coalesce(array_agg(e.stream ORDER BY g.ord), '{}'),
           coalesce(array_agg(e.revision ORDER BY g.ord), '{}'),
           coalesce(array_agg(e.position ORDER BY g.ord), '{}'),
           coalesce(array_agg((e.type = g.type AND e.data = g.data
                               AND e.content_type = g.content_type
                               AND e.metadata IS NOT DISTINCT FROM g.metadata) ORDER BY g.ord), '{}'),
           coalesce(array_agg(g.first_ord ORDER BY g.ord), '{}'),
           coalesce(array_agg(g.same_as_first ORDER BY g.ord), '{}'),
           coalesce(bool_or(e.id IS NOT NULL), false),
           coalesce(bool_or(g.first_ord < g.ord), false)
      INTO stored_streams, stored_revs, stored_pos, stored_same, first_of_id, same_as_first,
           any_stored, repeats
      FROM (SELECT u.*,
                   first_value(u.ord) OVER w AS first_ord,
                   (u.type = first_value(u.type) OVER w
                    AND u.data = first_value(u.data) OVER w
                    AND u.content_type = first_value(u.content_type) OVER w
                    AND u.metadata IS NOT DISTINCT FROM first_value(u.metadata) OVER w) AS same_as_first
              FROM unnest(ev_ids, ev_types, ev_data, ev_content_types, ev_metadata)
                   WITH ORDINALITY AS u(id, type, data, content_type, metadata, ord)
            WINDOW w AS (PARTITION BY u.id ORDER BY u.ord)) g
      LEFT JOIN events e ON e.id = g.id;

    IF repeats THEN
        taken_streams := array_fill(NULL::text, ARRAY[total]);
        taken_revs := array_fill(NULL::bigint, ARRAY[total]);
        taken_pos := array_fill(NULL::bigint, ARRAY[total]);
    END IF;

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
        hits := 0; same_events := true; in_order := true; conflict := NULL;
        IF any_stored OR repeats THEN
            FOR j IN first_event .. last_event LOOP
                hit_rev := NULL;
                IF stored_revs[j] IS NOT NULL THEN
                    hit_stream := stored_streams[j];
                    hit_rev := stored_revs[j];
                    hit_pos := stored_pos[j];
                    hit_same := stored_same[j];
                ELSIF repeats AND first_of_id[j] < j THEN
                    f := first_of_id[j];
                    IF taken_pos[f] IS NOT NULL THEN
                        hit_stream := taken_streams[f];
                        hit_rev := taken_revs[f];
                        hit_pos := taken_pos[f];
                        hit_same := same_as_first[j];
                    END IF;
                END IF;
                CONTINUE WHEN hit_rev IS NULL;
                hits := hits + 1;
                IF hit_stream <> req_stream OR NOT hit_same THEN
                    same_events := false;
                    conflict := coalesce(conflict, ev_ids[j]);
                END IF;
                IF hits = 1 THEN
                    first_hit := ev_ids[j];
                    offset_rev := hit_rev - (j - first_event);
                    r_first_revision := hit_rev;
                    r_first_position := hit_pos;
                ELSIF hit_rev <> offset_rev + (j - first_event) THEN
                    in_order := false;
                END IF;
                r_last_revision := hit_rev;
                r_last_position := hit_pos;
            END LOOP;
        END IF;

        IF hits > 0 THEN
            IF hits = n AND same_events AND in_order THEN
                r_outcome := 1;
            ELSE
                r_outcome := 3;
                r_conflicting_id := coalesce(conflict, first_hit);
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
                        taken_streams[j] := req_stream;
                        taken_revs[j] := r_first_revision + j - first_event;
                        taken_pos[j] := head + 1 + j - first_event;
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
