-- The one-statement path of highwater_append (0013) probes streams per request
-- (docs/ARCHITECTURE.md, "The writer").
--
-- 0013 looked the requests' streams up with a plain LEFT JOIN. With generic plans (0015) the plan
-- is made once per connection, and when streams had last been analyzed holding a few dozen rows
-- or fewer, the planner joined it by hashing a full scan of its primary key index
-- (enable_seqscan = off rules out the table scan, not a full index scan). That plan then stayed
-- on the connection as the table grew: an adversarial review measured 152 ms for a single-event
-- append on a connection that had planned against an empty, analyzed streams table and then saw
-- 300,000 streams, against 1-3 ms on a new connection. A LATERAL subquery with LIMIT 1 is planned
-- as an index probe per request whatever the statistics, as 0012 does for events. The function is
-- otherwise 0013's, with 0015's settings.

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
-- Every lookup is by key, each a probe of its index (see 0004 and 0015).
SET enable_seqscan = off
SET plan_cache_mode = force_generic_plan
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
          -- A probe per request, whatever the statistics: a cached plan made while streams
          -- held a few rows joined it by a hash over the whole primary key index.
          LEFT JOIN LATERAL (
              SELECT s.revision, s.deleted_through, s.tombstoned
                FROM streams s WHERE s.stream = r.stream LIMIT 1
          ) s ON true
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
