-- With no upcaster, no source type reaches any type. The server replaces this function with
-- every registration (upcast::definition::reaching_sql); apply functions call it so that an
-- event of a source type is passed only to projections with a handler for a type its chain can
-- make (found by review: a failing upcaster failed projections that handled neither of its
-- types).
CREATE FUNCTION highwater_upcasters.sources_reaching(targets text[]) RETURNS text[]
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $fn$
    SELECT '{}'::text[]
$fn$;
