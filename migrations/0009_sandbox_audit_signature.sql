-- The sandbox audit (0008) accepted any SECURITY DEFINER function named like an apply function:
-- a setup could rename its own run-any-SQL wrapper to highwater_apply_v99 and call it from a
-- handler later. An apply function must now also have the apply signature (bigint, bigint,
-- integer, boolean) and be PL/pgSQL; the server reinstalls the live versions' apply functions
-- after every setup, so a setup cannot keep a changed body either.
CREATE OR REPLACE FUNCTION highwater_sandbox_audit(projection text) RETURNS SETOF text
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
                   AND p.proargtypes = '20 20 23 16'::oidvector AND p.prolang = (SELECT l.oid FROM pg_language l WHERE l.lanname = 'plpgsql')
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
