-- One writer at a time for the catalog row every projection shares (docs/ARCHITECTURE.md,
-- "Lock order").
--
-- 0008's highwater_sandbox_ensure granted SELECT on events to the projection's role on every
-- call. A GRANT rewrites the table's pg_class row even when the grant is already there, and
-- PostgreSQL answers a second transaction writing a catalog row that a first one wrote and has
-- not committed with "tuple concurrently updated" (an internal error) instead of waiting: two
-- projections registered at once failed. The row locks of the projections do not help, the row
-- being one for all of them.
--
-- Now the grant is made only when the role lacks it, under a transaction-level advisory lock
-- (the two-key form, a key space of its own beside the server's one-key locks), and looked for
-- again once the lock is held: the second of two callers waits for the first to commit, then
-- finds the grant (each statement of a PL/pgSQL function sees what committed before it began)
-- or makes its own on the committed row. The rest is 0008's function unchanged; what concerns one
-- projection only (its role, schema and tables) is serialised by its projections row lock,
-- which every caller holds.

-- Whether the role holds SELECT on events by a grant of its own (not through PUBLIC or another
-- role, which could be revoked without it noticing).
CREATE FUNCTION highwater_sandbox_reads_events(role_name text) RETURNS boolean
LANGUAGE sql STABLE AS $fn$
    SELECT EXISTS (
        SELECT FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
         WHERE c.oid = 'public.events'::regclass
           AND a.grantee = (SELECT oid FROM pg_roles WHERE rolname = role_name)
           AND a.privilege_type = 'SELECT')
$fn$;

CREATE OR REPLACE FUNCTION highwater_sandbox_ensure(projection text) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    role_name   text := highwater_sandbox_role(projection);
    schema_name text := 'projection_' || projection;
    t           record;
BEGIN
    IF projection !~ '^[a-z][a-z0-9_]{0,39}$' THEN
        RAISE EXCEPTION 'invalid projection name %', projection USING ERRCODE = '22023';
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role_name) THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role_name);
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL; -- another server created it at the same moment
        END;
    END IF;
    IF NOT pg_has_role(current_user, role_name, 'MEMBER') THEN
        EXECUTE format('GRANT %I TO %I', role_name, current_user);
    END IF;
    IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = schema_name) THEN
        BEGIN
            EXECUTE format('CREATE SCHEMA %I', schema_name);
        EXCEPTION WHEN duplicate_schema OR unique_violation THEN
            NULL;
        END;
    END IF;
    EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', schema_name);
    EXECUTE format('GRANT USAGE, CREATE ON SCHEMA %I TO %I', schema_name, role_name);
    IF NOT highwater_sandbox_reads_events(role_name) THEN
        PERFORM pg_advisory_xact_lock(hashtext('highwater'), hashtext('sandbox grant on events'));
        IF NOT highwater_sandbox_reads_events(role_name) THEN
            EXECUTE format('GRANT SELECT ON public.events TO %I', role_name);
        END IF;
    END IF;
    FOR t IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = schema_name::regnamespace AND c.relkind IN ('r', 'p')
                AND c.relowner <> role_name::regrole LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', t.rel, role_name);
    END LOOP;
END;
$fn$;
