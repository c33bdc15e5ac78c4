-- The append functions keep their plans (docs/ARCHITECTURE.md, "The writer").
--
-- 0004 reset plan_cache_mode to its default, expecting cached (generic) plans after the first
-- five calls on a connection. The default chooses per statement: it keeps planning each call
-- afresh (a custom plan) while the generic plan's estimated cost is above the custom plans'
-- average, and with rows in the tables (the estimate knows the arrays' sizes only in a custom
-- plan) that is what it chose for the one-statement path of 0013 and for the checked path: every
-- call planned a statement of ten common table expressions, about two thirds of a single-event
-- call. Measured with pgbench, one client, single-event calls, `synchronous_commit` off, on a
-- database holding a few thousand events: 0.73 ms a call against 0.25 ms with generic plans
-- (the checked function: 0.63 against 0.30 ms); groups of 32, 1,000 and 200 x 50 events cost
-- the same either way. The generic plans can only be index scans (0004's enable_seqscan = off),
-- so they stay good as the tables grow.

ALTER FUNCTION highwater_append(text[], smallint[], bigint[], integer[], uuid[], text[], bytea[], text[], jsonb[], bigint)
    SET plan_cache_mode = force_generic_plan;
ALTER FUNCTION highwater_append_checked(text[], smallint[], bigint[], integer[], uuid[], text[], bytea[], text[], jsonb[], bigint)
    SET plan_cache_mode = force_generic_plan;
