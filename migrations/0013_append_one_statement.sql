-- The append function's common case as one plain statement (docs/ARCHITECTURE.md, "The writer").
--
-- 0012's function runs about eight statements and a PL/pgSQL loop for every group, whatever
-- the group holds. Most groups are simple: every request goes to a stream of its own, no event
-- id repeats within the group, and none is stored already. For those, the checks (tombstone,
-- expected revision) are independent per request and need no loop, so one statement can check
-- them, write the events, move the stream heads and the log head, and notify.
--
-- The new highwater_append takes the log_head lock in a statement of its own (every later
-- statement then sees everything committed before the lock was granted), then runs that
-- statement. The statement writes only when the group is simple; otherwise it returns no rows,
-- writes nothing, and the group goes through 0012's function, renamed highwater_append_checked,
-- whose answers it returns unchanged. Outcomes are 0012's (crates/core/src/store/codes.rs).

ALTER FUNCTION highwater_append(text[], smallint[], bigint[], integer[], uuid[], text[], bytea[], text[], jsonb[], bigint)
    RENAME TO highwater_append_checked;

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
-- Every lookup is by key: cached plans are kept, and may only be index scans (see 0004).
SET enable_seqscan = off
AS $fn$
DECLARE
    head        bigint;
    catalog     bigint;
    recorded    timestamptz;
    recorded_us bigint;
BEGIN
    -- Serialise with every other appender until commit.
    SELECT l.position, l.catalog_version INTO head, catalog FROM log_head l WHERE l.singleton FOR UPDATE;
    IF catalog <> expected_catalog THEN
        RAISE EXCEPTION 'projection catalog changed: expected %, now %', expected_catalog, catalog
            USING ERRCODE = 'HW001';
    END IF;
    recorded := clock_timestamp();
    recorded_us := (extract(epoch FROM recorded) * 1000000)::bigint;

    RETURN QUERY
    WITH requests AS (
        SELECT r.ord::integer AS req, r.stream, r.kind, r.expected, r.n,
               -- Events of the group before this request's.
               (sum(r.n) OVER (ORDER BY r.ord) - r.n)::integer AS events_before,
               s.revision AS current_rev,
               -- A soft-deleted stream with nothing appended since reads as no stream.
               CASE WHEN s.revision > coalesce(s.deleted_through, -1) THEN s.revision END AS visible_rev,
               coalesce(s.tombstoned, false) AS dead
          FROM unnest(req_streams, req_expected_kinds, req_expected_revisions, req_counts)
               WITH ORDINALITY AS r(stream, kind, expected, n, ord)
          LEFT JOIN streams s ON s.stream = r.stream
    ), simple AS (
        SELECT (SELECT count(DISTINCT q.stream) FROM requests q) = cardinality(req_streams)
               AND (SELECT count(DISTINCT u.id) FROM unnest(ev_ids) AS u(id)) = cardinality(ev_ids)
               AND NOT EXISTS (SELECT FROM events e WHERE e.id = ANY (ev_ids)) AS yes
    ), judged AS (
        SELECT q.*,
               (CASE WHEN q.dead THEN 4
                     WHEN (q.kind = 1 AND q.visible_rev IS NOT NULL)
                       OR (q.kind = 2 AND q.visible_rev IS NULL)
                       OR (q.kind = 3 AND q.visible_rev IS DISTINCT FROM q.expected) THEN 2
                     ELSE 0 END)::smallint AS outcome
          FROM requests q
         WHERE (SELECT s.yes FROM simple s)
    ), placed AS (
        SELECT j.*,
               coalesce(j.current_rev, -1) AS rev_before,
               -- The log position before this request's first event: accepted events go
               -- after those of the accepted requests before it.
               head + sum(CASE WHEN j.outcome = 0 THEN j.n ELSE 0 END) OVER (ORDER BY j.req)
                    - CASE WHEN j.outcome = 0 THEN j.n ELSE 0 END AS pos_before,
               sum(CASE WHEN j.outcome = 0 THEN j.n ELSE 0 END) OVER () AS accepted
          FROM judged j
    ), written AS (
        INSERT INTO events (position, stream, revision, id, type, data, content_type, metadata,
                            recorded_at)
        SELECT p.pos_before + (u.ord - p.events_before), p.stream,
               p.rev_before + (u.ord - p.events_before),
               u.id, u.type, u.data, u.content_type, u.metadata, recorded
          FROM placed p
          JOIN LATERAL generate_series(p.events_before + 1, p.events_before + p.n) AS g(ord) ON true
          JOIN unnest(ev_ids, ev_types, ev_data, ev_content_types, ev_metadata)
               WITH ORDINALITY AS u(id, type, data, content_type, metadata, ord)
            ON u.ord = g.ord
         WHERE p.outcome = 0
    ), heads AS (
        INSERT INTO streams AS s (stream, revision, position)
        SELECT p.stream, p.rev_before + p.n, p.pos_before + p.n
          FROM placed p
         WHERE p.outcome = 0
        ON CONFLICT (stream) DO UPDATE
           SET revision = EXCLUDED.revision, position = EXCLUDED.position, updated_at = now()
    ), moved AS (
        UPDATE log_head l SET position = head + t.accepted
          FROM (SELECT p.accepted FROM placed p LIMIT 1) t
         WHERE l.singleton AND t.accepted > 0
        -- Delivered at commit, in commit order: subscribers wake up and read past their position.
        RETURNING pg_notify('highwater_appended', l.position::text)
    )
    SELECT p.req,
           p.outcome,
           CASE WHEN p.outcome = 0 THEN p.rev_before + 1 END,
           CASE WHEN p.outcome = 0 THEN p.rev_before + p.n END,
           CASE WHEN p.outcome = 0 THEN p.pos_before + 1 END,
           CASE WHEN p.outcome = 0 THEN p.pos_before + p.n END,
           CASE WHEN p.outcome = 2 THEN p.visible_rev END,
           NULL::uuid,
           CASE WHEN p.outcome = 0 THEN recorded_us END
      FROM placed p
     ORDER BY p.req;

    IF NOT FOUND THEN
        -- Not simple: 0012's function checks the requests one after the other.
        RETURN QUERY SELECT * FROM highwater_append_checked(
            req_streams, req_expected_kinds, req_expected_revisions, req_counts, ev_ids, ev_types,
            ev_data, ev_content_types, ev_metadata, expected_catalog);
    END IF;
END;
$fn$;
