-- The append function, as in 0010, with two fixes found in review.
--
-- An id repeated in three requests of one group, the first refused (say, a wrong expected
-- revision) and the second accepted, let the third be accepted too: 0010 looked for the
-- accepted event at the first occurrence of the id only, found nothing, and the insert then
-- failed on events.id's unique index, failing the whole group (INTERNAL, then every request
-- written alone). Now each id's slot (its first occurrence) records which event of the group
-- took it, and a later occurrence is compared with that event.
--
-- The lookup of the group's ids in events.id must be index probes, one per event: for a
-- session's first calls plpgsql plans with the actual arrays, and with enable_seqscan off the
-- planner chose a merge join over a full scan of the id index, which grows with the log. The
-- lookup is now a LATERAL subquery with LIMIT 1, which the planner cannot flatten into a join:
-- it runs once per event of the group, as an index scan.

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
    -- same event; the first event of the group with the same id (the id's slot).
    stored_streams text[];
    stored_revs    bigint[];
    stored_pos     bigint[];
    stored_same    boolean[];
    first_of_id    bigint[];
    any_stored     boolean;
    repeats        boolean;
    -- By an id's slot (its first occurrence in the group), when ids repeat within the group:
    -- the event of the group that took the id, and where it went.
    taken_idx      integer[];
    taken_streams  text[];
    taken_revs     bigint[];
    taken_pos      bigint[];
    t              integer;
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
           coalesce(bool_or(e.id IS NOT NULL), false),
           coalesce(bool_or(g.first_ord < g.ord), false)
      INTO stored_streams, stored_revs, stored_pos, stored_same, first_of_id,
           any_stored, repeats
      FROM (SELECT u.*,
                   first_value(u.ord) OVER w AS first_ord
              FROM unnest(ev_ids, ev_types, ev_data, ev_content_types, ev_metadata)
                   WITH ORDINALITY AS u(id, type, data, content_type, metadata, ord)
            WINDOW w AS (PARTITION BY u.id ORDER BY u.ord)) g
      LEFT JOIN LATERAL (SELECT s.id, s.stream, s.revision, s.position, s.type, s.data,
                                s.content_type, s.metadata
                           FROM events s WHERE s.id = g.id LIMIT 1) e ON true;

    IF repeats THEN
        taken_idx := array_fill(NULL::integer, ARRAY[total]);
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
                    t := taken_idx[f];
                    IF t IS NOT NULL THEN
                        hit_stream := taken_streams[f];
                        hit_rev := taken_revs[f];
                        hit_pos := taken_pos[f];
                        hit_same := ev_types[j] = ev_types[t] AND ev_data[j] = ev_data[t]
                                    AND ev_content_types[j] = ev_content_types[t]
                                    AND ev_metadata[j] IS NOT DISTINCT FROM ev_metadata[t];
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
                        f := first_of_id[j];
                        taken_idx[f] := j;
                        taken_streams[f] := req_stream;
                        taken_revs[f] := r_first_revision + j - first_event;
                        taken_pos[f] := head + 1 + j - first_event;
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
