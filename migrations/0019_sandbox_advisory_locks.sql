-- Advisory locks are how the server coordinates (docs/ARCHITECTURE.md, "Lock order" and "The
-- projection sandbox"): an async projection's leadership, a rebuild's ownership of a projection,
-- the shared lock an inline append takes on each projection version it applies to, the
-- migrator's lock. PostgreSQL lets every role take and release them, so a projection's SQL could
-- hold another projection's leadership on a pooled connection for good, take a version's apply
-- lock so that appends record skips for another projection's events, or release the leadership
-- its own leader holds on the connection that runs the handler (found by review).
--
-- `highwater_restrict_advisory_locks(grantee)` takes the advisory lock functions from PUBLIC and
-- gives them to the server's role. Changing the rights on PostgreSQL's own functions needs a
-- superuser, so it runs here only when the migrating role is one; otherwise a superuser calls it
-- once in the server's database (README, Security; the private PostgreSQL does it by itself),
-- and until then the sandbox refuses to run projections (projection::sandbox::ensure).

CREATE OR REPLACE FUNCTION highwater_restrict_advisory_locks(grantee name) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $fn$
DECLARE
    advisory regprocedure;
BEGIN
    FOR advisory IN
        SELECT p.oid::regprocedure FROM pg_proc p
         WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE 'pg\_%advisory\_%'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', advisory);
        EXECUTE format('GRANT EXECUTE ON FUNCTION %s TO %I', advisory, grantee);
    END LOOP;
END
$fn$;

REVOKE ALL ON FUNCTION highwater_restrict_advisory_locks(name) FROM PUBLIC;

-- The migrating role, and the database's owner if that is another role (a deployment that
-- migrates as an administrator and serves as the owner), keep their advisory locks.
DO $do$
DECLARE
    owner name := (SELECT pg_get_userbyid(datdba) FROM pg_database
                    WHERE datname = current_database());
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        PERFORM highwater_restrict_advisory_locks(current_user);
        PERFORM highwater_restrict_advisory_locks(owner);
    END IF;
END
$do$;

-- Which advisory lock functions a role may still call: the sandbox refuses projections while
-- their roles may call any.
CREATE OR REPLACE FUNCTION highwater_advisory_locks_open_to(role name) RETURNS SETOF text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT p.oid::regprocedure::text FROM pg_proc p
     WHERE p.pronamespace = 'pg_catalog'::regnamespace AND p.proname LIKE 'pg\_%advisory\_%'
       AND has_function_privilege(role, p.oid, 'EXECUTE')
     ORDER BY 1;
$fn$;
