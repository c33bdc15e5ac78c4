-- Found by review of 0019 and 0020:
--
-- 1. Handing an upcaster's expression function to the upcaster role (ALTER FUNCTION ... OWNER
--    TO) needs that role to have CREATE on the function's schema, which it does not have: as a
--    user that is no superuser (the private PostgreSQL, and the README's layout), every upcaster
--    registration failed. The role gets CREATE for the moment of the change only. (It could not
--    use it anyway: its SQL is one SELECT in STABLE functions, where PostgreSQL refuses DDL.)
--
-- 2. Besides the advisory locks, PUBLIC may call functions whose effects outlive a rolled-back
--    read or reach other sessions: large objects (`lo_*`, `loread`, `lowrite`), which a
--    projection's commit keeps; `pg_logical_emit_message`, which writes WAL even in a read-only
--    transaction that is rolled back (46 MB from one call, measured by the review); and
--    `pg_notify`, with which a handler could flood the server's channels. They are taken from
--    PUBLIC with the advisory locks, by `highwater_restrict_sandbox_functions`, under the same
--    rules as 0019 (done here when the migrating user is a superuser; otherwise once by one,
--    README, Security). 0019's two functions stay, and now cover the whole list.

CREATE OR REPLACE FUNCTION highwater_upcaster_own(fn regprocedure) RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    role_name text := highwater_upcaster_role();
BEGIN
    EXECUTE format('GRANT CREATE ON SCHEMA highwater_upcasters TO %I', role_name);
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', fn, role_name);
    EXECUTE format('REVOKE CREATE ON SCHEMA highwater_upcasters FROM %I', role_name);
END;
$fn$;

-- The functions of PostgreSQL's own that sandboxed SQL (projections, upcasters) must not call.
CREATE FUNCTION highwater_sandbox_restricted_functions() RETURNS SETOF regprocedure
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT p.oid::regprocedure FROM pg_proc p
     WHERE p.pronamespace = 'pg_catalog'::regnamespace
       AND (p.proname LIKE 'pg\_%advisory\_%'
            OR p.proname LIKE 'lo\_%' OR p.proname IN ('loread', 'lowrite')
            OR p.proname IN ('pg_logical_emit_message', 'pg_notify'))
$fn$;

CREATE FUNCTION highwater_restrict_sandbox_functions(grantee name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    restricted regprocedure;
BEGIN
    FOR restricted IN SELECT public.highwater_sandbox_restricted_functions() LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', restricted);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', restricted, grantee);
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION highwater_restrict_sandbox_functions(name) FROM PUBLIC;

CREATE FUNCTION highwater_sandbox_functions_open_to(role name) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT f::text FROM public.highwater_sandbox_restricted_functions() f
     WHERE has_function_privilege(role, f, 'EXECUTE')
     ORDER BY 1;
$fn$;

-- 0019's names, as a superuser may already have been told to call them.
CREATE OR REPLACE FUNCTION highwater_restrict_advisory_locks(grantee name) RETURNS void
LANGUAGE sql SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT public.highwater_restrict_sandbox_functions(grantee);
$fn$;

CREATE OR REPLACE FUNCTION highwater_advisory_locks_open_to(role name) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT public.highwater_sandbox_functions_open_to(role);
$fn$;

DO $do$
DECLARE
    owner name := (SELECT pg_get_userbyid(datdba) FROM pg_database
                    WHERE datname = current_database());
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        PERFORM highwater_restrict_sandbox_functions(current_user);
        PERFORM highwater_restrict_sandbox_functions(owner);
    END IF;
END
$do$;
