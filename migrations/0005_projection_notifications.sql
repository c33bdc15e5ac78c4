-- Changes to the projection catalog are announced on a channel, so that each server's supervisor
-- waits for them instead of polling the tables while nothing happens. Heartbeats and applied
-- positions are not announced: they change constantly and nobody waits for them.
CREATE FUNCTION highwater_projections_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- Delivered at commit; repeats within one transaction are folded into one.
    PERFORM pg_notify('highwater_projections', '');
    RETURN NULL;
END;
$fn$;

CREATE TRIGGER projections_changed
    AFTER INSERT OR DELETE OR UPDATE OF mode, active_version ON projections
    FOR EACH STATEMENT EXECUTE FUNCTION highwater_projections_changed();

CREATE TRIGGER projection_versions_changed
    AFTER INSERT OR DELETE OR UPDATE OF status ON projection_versions
    FOR EACH STATEMENT EXECUTE FUNCTION highwater_projections_changed();
