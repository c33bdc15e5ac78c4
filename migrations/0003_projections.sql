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

-- The append function, now refusing a stale catalog (SQLSTATE HW001) so that no append commits
-- without the inline projections active at its commit.
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
) LANGUAGE plpgsql AS $fn$
DECLARE
    head        bigint;
    start_head  bigint;
    recorded    timestamptz;
    first_event integer := 1;
    last_event  integer;
    req_stream  text;
    kind        smallint;
    current_rev bigint;
    found_count bigint;
    same_stream boolean;
    offsets     bigint;
    catalog     bigint;
BEGIN
    -- Serialise with every other appender until commit. Each later statement of this function
    -- takes a fresh snapshot, so it sees everything committed before the lock was granted.
    SELECT l.position, l.catalog_version INTO head, catalog FROM log_head l WHERE l.singleton FOR UPDATE;
    IF catalog <> expected_catalog THEN
        RAISE EXCEPTION 'projection catalog changed: expected %, now %', expected_catalog, catalog
            USING ERRCODE = 'HW001';
    END IF;
    start_head := head;
    recorded := clock_timestamp();

    FOR i IN 1 .. coalesce(array_length(req_streams, 1), 0) LOOP
        req_stream := req_streams[i];
        last_event := first_event + req_counts[i] - 1;
        r_request := i;
        r_outcome := NULL;
        r_first_revision := NULL; r_last_revision := NULL;
        r_first_position := NULL; r_last_position := NULL;
        r_actual_revision := NULL; r_conflicting_id := NULL; r_recorded_us := NULL;

        -- Idempotency: are any of these ids stored already?
        SELECT count(e.id),
               bool_and(e.stream = req_stream),
               count(DISTINCT e.revision - u.ord),
               min(e.revision), max(e.revision), min(e.position), max(e.position),
               (array_agg(u.id ORDER BY u.ord) FILTER (WHERE e.id IS NOT NULL))[1]
          INTO found_count, same_stream, offsets,
               r_first_revision, r_last_revision, r_first_position, r_last_position,
               r_conflicting_id
          FROM unnest(ev_ids[first_event:last_event]) WITH ORDINALITY AS u(id, ord)
          LEFT JOIN events e ON e.id = u.id;

        IF found_count > 0 THEN
            IF found_count = req_counts[i] AND same_stream AND offsets = 1 THEN
                r_outcome := 1;
                r_conflicting_id := NULL;
            ELSE
                r_outcome := 3;
                r_first_revision := NULL; r_last_revision := NULL;
                r_first_position := NULL; r_last_position := NULL;
            END IF;
        ELSE
            r_conflicting_id := NULL;
            SELECT s.revision INTO current_rev FROM streams s WHERE s.stream = req_stream;
            kind := req_expected_kinds[i];
            IF (kind = 1 AND current_rev IS NOT NULL)
               OR (kind = 2 AND current_rev IS NULL)
               OR (kind = 3 AND current_rev IS DISTINCT FROM req_expected_revisions[i]) THEN
                r_outcome := 2;
                r_first_revision := NULL; r_last_revision := NULL;
                r_first_position := NULL; r_last_position := NULL;
                r_actual_revision := current_rev;
            ELSE
                INSERT INTO events (position, stream, revision, id, type, data, content_type,
                                    metadata, recorded_at)
                SELECT head + u.ord, req_stream, coalesce(current_rev, -1) + u.ord, u.id, u.type,
                       u.data, u.content_type, u.metadata, recorded
                  FROM unnest(ev_ids[first_event:last_event], ev_types[first_event:last_event],
                              ev_data[first_event:last_event],
                              ev_content_types[first_event:last_event],
                              ev_metadata[first_event:last_event])
                       WITH ORDINALITY AS u(id, type, data, content_type, metadata, ord);

                r_outcome := 0;
                r_recorded_us := (extract(epoch FROM recorded) * 1000000)::bigint;
                r_first_revision := coalesce(current_rev, -1) + 1;
                r_last_revision := coalesce(current_rev, -1) + req_counts[i];
                r_first_position := head + 1;
                r_last_position := head + req_counts[i];
                head := head + req_counts[i];

                INSERT INTO streams AS s (stream, revision, position)
                VALUES (req_stream, r_last_revision, r_last_position)
                ON CONFLICT (stream) DO UPDATE
                   SET revision = EXCLUDED.revision, position = EXCLUDED.position,
                       updated_at = now();
            END IF;
        END IF;

        RETURN NEXT;
        first_event := last_event + 1;
    END LOOP;

    IF head > start_head THEN
        UPDATE log_head SET position = head WHERE singleton;
        -- Delivered at commit, in commit order: subscribers wake up and read past their position.
        PERFORM pg_notify('highwater_appended', head::text);
    END IF;
END;
$fn$;
