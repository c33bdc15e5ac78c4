-- Server-side projections (ARCHITECTURE section 4): definitions, versions, skips and dead letters.

-- Read models live here: one table per version (cart_summary_v2) and a view with the plain name
-- (cart_summary) on the active version.
CREATE SCHEMA IF NOT EXISTS projections;

-- Bumped (under the log_head lock) whenever what inline projections apply changes; the writer
-- passes the catalog version it knows, and the append function refuses a stale one.
ALTER TABLE log_head ADD COLUMN catalog_version bigint NOT NULL DEFAULT 0;

CREATE TABLE projections (
    name           text        PRIMARY KEY,
    mode           text        NOT NULL CHECK (mode IN ('inline', 'async')),
    active_version integer,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE projection_versions (
    name              text        NOT NULL REFERENCES projections (name) ON DELETE CASCADE,
    version           integer     NOT NULL CHECK (version > 0),
    -- The definition as registered: setup, handlers, on_error, source.
    definition        jsonb       NOT NULL,
    status            text        NOT NULL
                      CHECK (status IN ('registered', 'building', 'active', 'rebuilding', 'failed', 'retired')),
    applied_position  bigint      NOT NULL DEFAULT 0,
    rebuild_strategy  text,
    rebuild_owner     text,
    rebuild_head      bigint,
    heartbeat_at      timestamptz,
    events_per_second double precision,
    last_error        text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);

-- Skipped events (an inline projection under rebuild) and dead letters (a handler that failed),
-- written in the transaction that skipped them; archived once replayed or retried.
CREATE TABLE system_messages (
    id          bigserial   PRIMARY KEY,
    projection  text        NOT NULL,
    version     integer     NOT NULL,
    position    bigint      NOT NULL,
    kind        text        NOT NULL CHECK (kind IN ('skip', 'dead_letter')),
    reason      text        NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    archived_at timestamptz
);
CREATE INDEX system_messages_pending ON system_messages (projection, kind, position)
    WHERE archived_at IS NULL;

-- The append function, replacing 0001's: it refuses a stale projection catalog (SQLSTATE HW001),
-- so that no append commits without the inline projections active at its commit, returns the
-- commit time of new events, and is set-based: a group costs a fixed handful of statements
-- however many requests it holds (stream heads and stored ids are read once, the events inserted
-- with one statement, the stream heads upserted with one).
DROP FUNCTION highwater_append(text[], smallint[], bigint[], integer[], uuid[], text[], bytea[], text[], jsonb[]);

CREATE FUNCTION highwater_append(
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
-- Plans made while the tables were small (or before any ANALYZE) must not stick: a generic plan
-- cached then would scan the whole events table for the id check on every call.
SET plan_cache_mode = force_custom_plan
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

    SELECT coalesce(array_agg(s.stream), '{}'), coalesce(array_agg(s.revision), '{}')
      INTO head_streams, head_revs
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
            kind := req_expected_kinds[i];
            IF (kind = 1 AND current_rev IS NOT NULL)
               OR (kind = 2 AND current_rev IS NULL)
               OR (kind = 3 AND current_rev IS DISTINCT FROM req_expected_revisions[i]) THEN
                r_outcome := 2;
                r_actual_revision := current_rev;
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
