-- Projection SQL (setup and handlers) runs as highwater_projection: it may read the log and
-- write the projections schema, nothing else (not events, streams, log_head, subscriptions or
-- the projection metadata). The server switches to it with SET LOCAL ROLE around that SQL.
--
-- Roles belong to the whole PostgreSQL cluster: the first database to migrate creates it, and
-- creating it needs CREATEROLE (or a superuser). Where the server's user lacks that, an operator
-- can create the role beforehand and grant it to that user; this migration then only grants.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'highwater_projection') THEN
        BEGIN
            CREATE ROLE highwater_projection NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- another database's migration created it at the same moment
        END;
    END IF;
    IF NOT pg_has_role(current_user, 'highwater_projection', 'MEMBER') THEN
        EXECUTE format('GRANT highwater_projection TO %I', current_user);
    END IF;
END;
$$;

GRANT USAGE, CREATE ON SCHEMA projections TO highwater_projection;
GRANT SELECT ON events TO highwater_projection;

-- Tables made by setup SQL before this migration now belong to the role, like new ones.
DO $$
DECLARE
    t record;
BEGIN
    FOR t IN SELECT tablename FROM pg_tables WHERE schemaname = 'projections' LOOP
        EXECUTE format('ALTER TABLE projections.%I OWNER TO highwater_projection', t.tablename);
    END LOOP;
END;
$$;
