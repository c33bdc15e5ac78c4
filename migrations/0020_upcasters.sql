-- Upcasters (docs/ARCHITECTURE.md, "Upcasting"): an event of a type (and, optionally, of a schema
-- version, the `schema_version` key of its metadata) is read as a new type or version, through a
-- SQL expression over its data and metadata (jsonb). The stored events never change: reads,
-- subscriptions and projections pass events through `highwater_upcasters.upcast`, which the
-- server generates from this table after every change, in the change's transaction.

CREATE TABLE upcasters (
    name text PRIMARY KEY,
    event_type text NOT NULL,
    -- NULL: events of the type whatever their version.
    from_version text,
    to_type text NOT NULL,
    -- NULL: the version stays as it was.
    to_version text,
    -- SQL expressions over $data and $metadata.
    data_sql text NOT NULL,
    -- NULL: the metadata stays as it was.
    metadata_sql text,
    -- Where the definition came from: `api` or the file's path.
    origin text NOT NULL,
    registered_at timestamptz NOT NULL DEFAULT now(),
    -- One upcaster per source, so that a chain has one way to go.
    CONSTRAINT upcasters_one_per_source UNIQUE NULLS NOT DISTINCT (event_type, from_version)
);

REVOKE ALL ON upcasters FROM PUBLIC;

-- Changes are announced like the projection catalog's, so that every server reloads the event
-- types it upcasts.
CREATE TRIGGER upcasters_changed
    AFTER INSERT OR DELETE OR UPDATE ON upcasters
    FOR EACH STATEMENT EXECUTE FUNCTION highwater_projections_changed();

-- The role upcaster SQL runs as: no login, no rights (not even on `events`). One for all
-- upcasters of the database: an upcaster is an expression with nothing of its own to protect.
CREATE FUNCTION highwater_upcaster_role() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT 'hwu_' || d.oid::text FROM pg_database d WHERE d.datname = current_database()
$$;

-- The schema of the generated functions, owned by the server; everyone may call them (the
-- projection roles do), nobody else may create anything in it.
CREATE SCHEMA highwater_upcasters;
REVOKE ALL ON SCHEMA highwater_upcasters FROM PUBLIC;
GRANT USAGE ON SCHEMA highwater_upcasters TO PUBLIC;

-- Creates the role if missing (needs CREATEROLE, as the projection roles do).
CREATE FUNCTION highwater_upcaster_ensure() RETURNS void
LANGUAGE plpgsql AS $fn$
DECLARE
    role_name text := highwater_upcaster_role();
BEGIN
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
END;
$fn$;

-- Hands a generated expression function to the upcaster role, so that it runs as that role.
CREATE FUNCTION highwater_upcaster_own(fn regprocedure) RETURNS void
LANGUAGE plpgsql AS $fn$
BEGIN
    EXECUTE format('ALTER FUNCTION %s OWNER TO %I', fn, highwater_upcaster_role());
END;
$fn$;

-- With no upcaster: the event as stored, and no type to look for. The server replaces both.
CREATE FUNCTION highwater_upcasters.upcast(
    p_position bigint, p_stream text, p_revision bigint, p_type text, p_data bytea,
    p_content_type text, p_metadata jsonb,
    OUT type text, OUT data bytea, OUT metadata jsonb)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT p_type, p_data, p_metadata
$fn$;

CREATE FUNCTION highwater_upcasters.sources() RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT '{}'::text[]
$fn$;
