-- Opening and closing an incident in one round trip each, under a per-key advisory lock,
-- so that a replica never opens a second incident in the instant another closes the first.
-- Inside a function every statement takes a fresh snapshot (READ COMMITTED), so the check
-- after the lock sees a close that committed while we waited for the lock.

CREATE FUNCTION aetherius_open_incident(
    p_id text, p_strategy text, p_key text, p_severity text, p_workflow text, p_namespace text,
    p_workload text, p_node text, p_reason text, p_events integer, p_inhibited jsonb, p_context jsonb,
    p_first timestamptz, p_last timestamptz, p_execution text, p_late integer, p_event_ids text[])
RETURNS TABLE (outcome text, other_id text) AS $$
DECLARE
    hit record;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('incident:' || p_strategy || ':' || p_key));
    SELECT i.id, i.status INTO hit FROM incidents i
    WHERE i.strategy_id = p_strategy AND i.key = p_key
      AND (i.status = 'open' OR (i.status = 'closed' AND i.cooldown_until > now()))
    ORDER BY i.status DESC, i.cooldown_until DESC LIMIT 1;
    IF FOUND THEN
        RETURN QUERY SELECT CASE WHEN hit.status = 'open' THEN 'open' ELSE 'cooling' END, hit.id;
        RETURN;
    END IF;
    INSERT INTO incidents (id, strategy_id, key, status, severity, workflow_id, namespace, workload, node,
                           reason, events, inhibited, context, first_seen, last_seen, execution_id, late)
    VALUES (p_id, p_strategy, p_key, 'open', p_severity, p_workflow, p_namespace, p_workload, p_node,
            p_reason, p_events, p_inhibited, p_context, p_first, p_last, p_execution, p_late);
    IF array_length(p_event_ids, 1) > 0 THEN
        UPDATE events SET state = 'attached', incident_id = p_id WHERE id = ANY(p_event_ids);
    END IF;
    RETURN QUERY SELECT 'opened'::text, NULL::text;
END $$ LANGUAGE plpgsql;

CREATE FUNCTION aetherius_close_incident(p_id text, p_last timestamptz, p_cooldown float8)
RETURNS TABLE (strategy_id text, key text) AS $$
DECLARE
    target record;
BEGIN
    SELECT i.strategy_id, i.key INTO target FROM incidents i WHERE i.id = p_id;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('incident:' || target.strategy_id || ':' || target.key));
    RETURN QUERY
    UPDATE incidents i SET status = 'closed', closed_at = now(),
           last_seen = greatest(i.last_seen, coalesce(p_last, i.last_seen)),
           cooldown_until = now() + make_interval(secs => p_cooldown)
    WHERE i.id = p_id AND i.status = 'open'
    RETURNING i.strategy_id, i.key;
END $$ LANGUAGE plpgsql;
