-- The projection sandbox (docs/ARCHITECTURE.md, "The projection sandbox").
--
-- 0006's `SET LOCAL ROLE highwater_projection` was not a boundary: the session user stayed the
-- server's, so projection SQL could `RESET ROLE` and take the server's rights back. From here on
-- each projection has a role of its own (hwp_<database oid>_<name>, NOLOGIN) and a schema of its
-- own (projection_<name>, owned by the server), and its SQL only ever runs inside SECURITY
-- DEFINER functions owned by that role, where PostgreSQL refuses SET ROLE, RESET ROLE,
-- SET SESSION AUTHORIZATION and set_config('role' | 'session_authorization').
--
-- Version tables move from projections.<name>_v<N> to projection_<name>.v<N>, so that no two
-- projections can collide (a projection `a_v1` against version 1 of `a`) and no projection can
-- create tables where another one will look for its own. The views keep their names in
-- `projections`; a view follows its table across the move.

REVOKE ALL ON SCHEMA projections FROM highwater_projection;
REVOKE ALL ON events FROM highwater_projection;

-- The role a projection's SQL runs as, unique to this database: roles belong to the cluster.
CREATE FUNCTION highwater_sandbox_role(projection text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'hwp_' || d.oid::text || '_' || projection FROM pg_database d
     WHERE d.datname = current_database()
$$;

-- Creates the projection's role and schema if missing and grants the role what its SQL may use:
-- SELECT on events, USAGE and CREATE on its own schema, nothing else. Tables in the schema owned
-- by anyone else (tables moved here from 0006) become the role's. Needs CREATEROLE (or to be a
-- superuser) when the role does not exist yet.
CREATE FUNCTION highwater_sandbox_ensure(projection text) RETURNS void
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
    EXECUTE format('GRANT SELECT ON public.events TO %I', role_name);
    FOR t IN SELECT c.oid::regclass AS rel FROM pg_class c
              WHERE c.relnamespace = schema_name::regnamespace AND c.relkind IN ('r', 'p')
                AND c.relowner <> role_name::regrole LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO %I', t.rel, role_name);
    END LOOP;
END;
$fn$;

-- What a projection's role has made that could later run code with somebody else's rights, or
-- reach beyond its own tables: anything it owns but tables and sequences in its own schema and
-- its apply functions (as the server made them: SECURITY DEFINER, fixed search_path); triggers,
-- rules and policies on its tables (they would run when the server or a reader touches them);
-- row-level security; grants on its tables to anyone; default privileges. One line each; none
-- means the sandbox holds.
CREATE FUNCTION highwater_sandbox_audit(projection text) RETURNS SETOF text
LANGUAGE sql STABLE AS $fn$
    WITH r AS (
        SELECT highwater_sandbox_role(projection)::regrole AS role,
               ('projection_' || projection)::regnamespace AS ns,
               (SELECT oid FROM pg_database WHERE datname = current_database()) AS db
    ), owned AS (
        SELECT d.classid, d.objid FROM pg_shdepend d, r
         WHERE d.refclassid = 'pg_authid'::regclass AND d.refobjid = r.role AND d.deptype = 'o'
           AND d.dbid = r.db
    )
    SELECT pg_describe_object(o.classid, o.objid, 0) FROM owned o, r
     WHERE NOT (
            (o.classid = 'pg_class'::regclass AND EXISTS (
                SELECT FROM pg_class c WHERE c.oid = o.objid AND c.relnamespace = r.ns
                   AND c.relkind IN ('r', 'p', 'S')))
         OR (o.classid = 'pg_proc'::regclass AND EXISTS (
                SELECT FROM pg_proc p WHERE p.oid = o.objid AND p.pronamespace = r.ns
                   AND p.proname ~ '^highwater_apply_v[0-9]+$' AND p.prosecdef
                   AND p.proconfig = ARRAY['search_path=pg_catalog, pg_temp'])))
    UNION ALL
    SELECT format('row-level security on %s', c.oid::regclass) FROM pg_class c, r
     WHERE c.relowner = r.role AND (c.relrowsecurity OR c.relforcerowsecurity)
    UNION ALL
    SELECT pg_describe_object('pg_trigger'::regclass, t.oid, 0)
      FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid, r
     WHERE c.relowner = r.role AND NOT t.tgisinternal
    UNION ALL
    SELECT pg_describe_object('pg_rewrite'::regclass, w.oid, 0)
      FROM pg_rewrite w JOIN pg_class c ON c.oid = w.ev_class, r
     WHERE c.relowner = r.role
    UNION ALL
    SELECT pg_describe_object('pg_policy'::regclass, p.oid, 0)
      FROM pg_policy p JOIN pg_class c ON c.oid = p.polrelid, r
     WHERE c.relowner = r.role
    UNION ALL
    SELECT format('a grant on %s to %s', c.oid::regclass,
                  CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE a.grantee::regrole::text END)
      FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a, r
     WHERE c.relowner = r.role AND a.grantee <> r.role
    UNION ALL
    SELECT 'default privileges of ' || r.role::text FROM pg_default_acl da, r
     WHERE da.defaclrole = r.role
$fn$;

-- Hands a generated function to the projection's role (so it runs as that role) and takes it
-- away from everyone else.
CREATE FUNCTION highwater_sandbox_own(projection text, fn regprocedure) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', fn, highwater_sandbox_role(projection));
    EXECUTE format('REVOKE ALL ON FUNCTION %s FROM PUBLIC', fn);
END;
$fn$;

-- Move every version table into its projection's schema; the old apply functions (run with
-- SET ROLE) go: the server installs sandboxed ones at start.
DO $$
DECLARE
    v record;
    f record;
BEGIN
    FOR v IN SELECT name, version FROM projection_versions LOOP
        IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'projection_' || v.name) THEN
            EXECUTE format('CREATE SCHEMA %I', 'projection_' || v.name);
            EXECUTE format('REVOKE ALL ON SCHEMA %I FROM PUBLIC', 'projection_' || v.name);
        END IF;
        IF to_regclass(format('projections.%I', v.name || '_v' || v.version)) IS NOT NULL THEN
            EXECUTE format('ALTER TABLE projections.%I SET SCHEMA %I',
                           v.name || '_v' || v.version, 'projection_' || v.name);
            EXECUTE format('ALTER TABLE %I.%I RENAME TO %I', 'projection_' || v.name,
                           v.name || '_v' || v.version, 'v' || v.version);
        END IF;
    END LOOP;
    FOR f IN SELECT p.oid::regprocedure AS fn FROM pg_proc p
              WHERE p.pronamespace = 'projections'::regnamespace
                AND p.proname LIKE 'highwater\_apply\_%' LOOP
        EXECUTE format('DROP FUNCTION %s', f.fn);
    END LOOP;
END;
$$;
