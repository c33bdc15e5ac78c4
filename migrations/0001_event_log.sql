-- The event log: events, per-stream heads, and the one-row commit point (ARCHITECTURE section 1).

-- The commit point. Every append takes this row's lock first and holds it until commit, so
-- positions are handed out in commit order, densely, across every server process.
CREATE TABLE log_head (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    position  bigint  NOT NULL CHECK (position >= 0)
);
INSERT INTO log_head (singleton, position) VALUES (true, 0);

CREATE TABLE events (
    position     bigint      PRIMARY KEY CHECK (position > 0),
    stream       text        NOT NULL,
    revision     bigint      NOT NULL CHECK (revision >= 0),
    id           uuid        NOT NULL UNIQUE,
    type         text        NOT NULL,
    data         bytea       NOT NULL,
    content_type text        NOT NULL,
    metadata     jsonb       NOT NULL DEFAULT '{}',
    recorded_at  timestamptz NOT NULL,
    UNIQUE (stream, revision)
);

-- The head of every stream, for O(1) expected-revision checks.
CREATE TABLE streams (
    stream     text        PRIMARY KEY,
    revision   bigint      NOT NULL,
    position   bigint      NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- Appends a group of requests in one statement (one round trip, its own transaction when called
-- outside one). Each request is checked on its own: an idempotent replay or a failed check
-- writes nothing for that request and does not affect the others in the group.
--
-- Requests are given as parallel arrays (req_*); their events are concatenated in ev_*, request i
-- owning the next req_counts[i] of them. Expected kinds: 0 any, 1 no stream, 2 stream exists,
-- 3 exact revision (req_expected_revisions[i]).
--
-- Outcomes: 0 appended, 1 idempotent replay of an earlier append (its coordinates returned),
-- 2 wrong expected revision (r_actual_revision is the stream's revision, NULL if none),
-- 3 an event id already used by a different event (r_conflicting_id).
CREATE FUNCTION highwater_append(
    req_streams            text[],
    req_expected_kinds     smallint[],
    req_expected_revisions bigint[],
    req_counts             integer[],
    ev_ids                 uuid[],
    ev_types               text[],
    ev_data                bytea[],
    ev_content_types       text[],
    ev_metadata            jsonb[]
) RETURNS TABLE (
    r_request         integer,
    r_outcome         smallint,
    r_first_revision  bigint,
    r_last_revision   bigint,
    r_first_position  bigint,
    r_last_position   bigint,
    r_actual_revision bigint,
    r_conflicting_id  uuid
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
BEGIN
    -- Serialise with every other appender until commit. Each later statement of this function
    -- takes a fresh snapshot, so it sees everything committed before the lock was granted.
    SELECT l.position INTO head FROM log_head l WHERE l.singleton FOR UPDATE;
    start_head := head;
    recorded := clock_timestamp();

    FOR i IN 1 .. coalesce(array_length(req_streams, 1), 0) LOOP
        req_stream := req_streams[i];
        last_event := first_event + req_counts[i] - 1;
        r_request := i;
        r_outcome := NULL;
        r_first_revision := NULL; r_last_revision := NULL;
        r_first_position := NULL; r_last_position := NULL;
        r_actual_revision := NULL; r_conflicting_id := NULL;

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
