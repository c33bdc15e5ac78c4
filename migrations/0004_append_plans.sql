-- The append function runs once per group commit, on the writer's long-lived connection. With
-- plan_cache_mode = force_custom_plan it planned all of its statements on every call, which cost
-- about a third of its time. Cached (generic) plans are safe when they can only be index scans:
-- every lookup in the function is by key (stream name, event id, the log_head singleton), and a
-- plan cached while the tables were small must not turn into a full scan as they grow (this
-- happens when nothing ANALYZEs them, as with autovacuum off).
ALTER FUNCTION highwater_append(text[], smallint[], bigint[], integer[], uuid[], text[], bytea[], text[], jsonb[], bigint)
    RESET plan_cache_mode;
ALTER FUNCTION highwater_append(text[], smallint[], bigint[], integer[], uuid[], text[], bytea[], text[], jsonb[], bigint)
    SET enable_seqscan = off;
